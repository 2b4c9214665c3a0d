// Reads RocksDB write-ahead log files without RocksDB, to say exactly what a
// damaged log loses.
//
// A log is the LevelDB log format: 32 KiB blocks of physical records, each a
// 7-byte header (CRC32C of type and payload, masked; 16-bit payload length;
// type) and its payload. A logical record (one WriteBatch: 8-byte sequence,
// 4-byte count, then its operations) is one FULL record or a FIRST, MIDDLE...,
// LAST chain. When RocksDB meets a physical record whose checksum or length
// is wrong it drops the rest of that block, since the length itself may be the
// damage; a chain that loses a fragment is dropped whole.
//
// ScanWal follows the same rules and reports each dropped stretch with the
// write batches it held: where their headers and first operations could
// still be read (the damage is usually in the values), their sequence
// numbers and column families; otherwise the stretch is unattributed.
//
// Thread-compatible: plain functions over a file.
#ifndef ENGRAM_SERVER_STORE_INTERNAL_WAL_SCAN_H_
#define ENGRAM_SERVER_STORE_INTERNAL_WAL_SCAN_H_

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace engram::store::internal {

// One stretch of a log that recovery cannot read.
struct WalDamage {
  uint64_t offset = 0;  // Byte offset of the first damaged record.
  uint64_t bytes = 0;   // Bytes dropped from there.
  std::string reason;   // "checksum mismatch", "bad record length", ...
  // Write batches that lose data in the stretch (whole, as recovery drops
  // them): their first sequence numbers and the column families they wrote,
  // as far as they could be read.
  std::vector<uint64_t> sequences;
  std::set<uint32_t> column_families;
  // False if some lost batch could not be read far enough to know what it
  // wrote: then any column family may be affected.
  bool attributed = true;
};

struct WalScan {
  uint64_t bytes = 0;
  uint64_t batches = 0;  // Intact write batches.
  std::vector<WalDamage> damage;
  // The file ends inside a record: a write cut short by a crash, never
  // acknowledged; recovery ignores it.
  bool torn_tail = false;
};

// Scans one log file's bytes.
WalScan ScanWal(absl::string_view log);

// Reads and scans the file at `path`.
absl::StatusOr<WalScan> ScanWalFile(const std::string& path);

// A log file and what ScanWal found in it.
struct WalFile {
  std::string path;
  WalScan scan;
};

// Every write-ahead log (*.log) in `dir`, oldest first, scanned; files that
// cannot be read are left out.
std::vector<WalFile> ScanWalDirectory(const std::string& dir);
bool HasDamage(const std::vector<WalFile>& logs);

// CRC-32C (Castagnoli) of `data`, continuing from `crc` (exposed for tests).
uint32_t Crc32c(uint32_t crc, absl::string_view data);

}  // namespace engram::store::internal

#endif  // ENGRAM_SERVER_STORE_INTERNAL_WAL_SCAN_H_
