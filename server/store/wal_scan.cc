#include "server/store/internal/wal_scan.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rocksdb/write_batch.h"
#include "server/base/file_text.h"
#include "server/store/internal/little_endian.h"

namespace engram::store::internal {

namespace {

constexpr size_t kBlock = 32768;
constexpr size_t kHeader = 7;
// Physical record types of a log without recycling or compression.
enum : uint8_t { kZero = 0, kFull = 1, kFirst = 2, kMiddle = 3, kLast = 4 };
constexpr uint32_t kMaskDelta = 0xa282ead8u;

std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    table[i] = c;
  }
  return table;
}

// Collects the column families a write batch touches.
class FamilyCollector : public rocksdb::WriteBatch::Handler {
 public:
  explicit FamilyCollector(std::set<uint32_t>& families)
      : families_(families) {}
  rocksdb::Status PutCF(uint32_t cf, const rocksdb::Slice&,
                        const rocksdb::Slice&) override {
    return Note(cf);
  }
  rocksdb::Status DeleteCF(uint32_t cf, const rocksdb::Slice&) override {
    return Note(cf);
  }
  rocksdb::Status SingleDeleteCF(uint32_t cf, const rocksdb::Slice&) override {
    return Note(cf);
  }
  rocksdb::Status DeleteRangeCF(uint32_t cf, const rocksdb::Slice&,
                                const rocksdb::Slice&) override {
    return Note(cf);
  }
  rocksdb::Status MergeCF(uint32_t cf, const rocksdb::Slice&,
                          const rocksdb::Slice&) override {
    return Note(cf);
  }
  void LogData(const rocksdb::Slice&) override {}

 private:
  rocksdb::Status Note(uint32_t cf) {
    families_.insert(cf);
    return rocksdb::Status::OK();
  }
  std::set<uint32_t>& families_;
};

// The column family of a batch's first operation, from its first bytes
// alone (a first fragment may end inside that operation's value): the tag,
// then, for tags of a named family, its id as a varint32. Engram writes one
// store per batch, so this is the store the batch belongs to.
bool FirstFamily(absl::string_view payload, uint32_t& family) {
  constexpr size_t kBatchHeader = 12;  // Sequence and count.
  if (payload.size() <= kBatchHeader) return false;
  const uint8_t tag = static_cast<uint8_t>(payload[kBatchHeader]);
  switch (tag) {
    case 0x0:
    case 0x1:
    case 0x2:
    case 0x7:
    case 0xF:  // Default family.
    case 0x11:
    case 0x14:
    case 0x16:
      family = 0;
      return true;
    case 0x4:
    case 0x5:
    case 0x6:
    case 0x8:
    case 0xE:
    case 0x10:
    case 0x17:
      break;
    default:
      return false;
  }
  family = 0;
  for (size_t i = kBatchHeader + 1, shift = 0;
       i < payload.size() && shift <= 28; ++i, shift += 7) {
    const uint8_t byte = static_cast<uint8_t>(payload[i]);
    family |= uint32_t{byte & 0x7fu} << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;
}

// Records in `damage` what the write batch starting with `payload` (a whole
// batch, or only its first fragment) held, as far as it can be read.
void Attribute(absl::string_view payload, WalDamage& damage) {
  uint32_t first = 0;
  if (!FirstFamily(payload, first)) {
    damage.attributed = false;
    return;
  }
  damage.sequences.push_back(LoadFixed64(payload.data()));
  damage.column_families.insert(first);
  // The rest of the batch, as far as it parses (a fragment or a damaged
  // batch ends in a parse error; what was read before it counts).
  rocksdb::WriteBatch batch{std::string(payload)};
  FamilyCollector collector(damage.column_families);
  batch.Iterate(&collector).PermitUncheckedError();
}

// Walks one log, following RocksDB's reader.
class Scanner {
 public:
  explicit Scanner(absl::string_view log) : log_(log) {
    scan_.bytes = log.size();
  }

  WalScan Run() {
    for (size_t block = 0; block < log_.size() && !stop_; block += kBlock) {
      ScanBlock(block, std::min(block + kBlock, log_.size()));
    }
    return std::move(scan_);
  }

 private:
  struct Chain {
    bool active = false;
    bool lost = false;    // A fragment was dropped: the batch is lost.
    size_t damage = 0;    // Its entry in scan_.damage, if lost.
    std::string payload;  // Fragments so far.
  };

  void ScanBlock(size_t pos, size_t end) {
    while (pos + kHeader <= end) {
      const char* h = log_.data() + pos;
      const uint32_t stored = LoadFixed32(h);
      const size_t length = static_cast<unsigned char>(h[4]) |
                            (static_cast<unsigned char>(h[5]) << 8);
      const uint8_t type = static_cast<uint8_t>(h[6]);
      if (type == kZero && length == 0) {
        // Preallocated space: the rest of the block is empty.
        if (chain_.active)
          LoseChain(pos, end - pos, "error in middle of record");
        return;
      }
      if (pos + kHeader + length > end) {
        if (end == log_.size()) {  // A write cut short: never acknowledged.
          scan_.torn_tail = true;
          chain_ = Chain();
          stop_ = true;
          return;
        }
        Drop(pos, end, "bad record length", /*trust_length=*/false);
        return;
      }
      const absl::string_view payload(h + kHeader, length);
      const uint32_t expected =
          Crc32c(Crc32c(0, absl::string_view(h + 6, 1)), payload);
      const uint32_t rot = stored - kMaskDelta;
      if (((rot >> 17) | (rot << 15)) != expected || type > kLast) {
        Drop(pos, end,
             type > kLast ? "unknown record type" : "checksum mismatch",
             /*trust_length=*/true);
        return;
      }
      Accept(pos, type, payload);
      pos += kHeader + length;
    }
  }

  // An intact physical record.
  void Accept(size_t pos, uint8_t type, absl::string_view payload) {
    switch (type) {
      case kFull:
      case kFirst:
        if (chain_.active && !chain_.lost) {
          LoseChain(pos, 0, "partial record without end");
        }
        chain_ = Chain();
        if (type == kFull) {
          ++scan_.batches;
        } else {
          chain_.active = true;
          chain_.payload.assign(payload.data(), payload.size());
        }
        return;
      case kMiddle:
      case kLast:
        if (!chain_.active) {
          WalDamage& d = NewDamage(pos, kHeader + payload.size(),
                                   "missing start of fragmented record");
          d.attributed = false;
        } else if (chain_.lost) {
          scan_.damage[chain_.damage].bytes += kHeader + payload.size();
        } else {
          chain_.payload.append(payload.data(), payload.size());
        }
        if (type == kLast) {
          if (chain_.active && !chain_.lost) ++scan_.batches;
          chain_ = Chain();
        }
        return;
    }
  }

  // Drops [pos, end) as RocksDB does after a bad record, and finds out what
  // the dropped batches held: the bad record's payload is read if its length
  // fits; records after it are read while their checksums hold.
  void Drop(size_t pos, size_t end, const char* reason, bool trust_length) {
    WalDamage& d = NewDamage(pos, end - pos, reason);
    const size_t index = scan_.damage.size() - 1;
    const bool had_chain = chain_.active;
    if (chain_.active) {
      // The chain this record continues (or interrupts) is lost with it.
      if (!chain_.lost) Attribute(chain_.payload, d);
      chain_.lost = true;
      chain_.damage = index;
    }
    const char* h = log_.data() + pos;
    const uint8_t type = static_cast<uint8_t>(h[6]);
    if (!trust_length) {
      // Only a batch header at the start of the payload can still be read.
      if (type == kFull || type == kFirst) {
        Attribute(log_.substr(pos + kHeader, end - pos - kHeader), d);
        chain_ = Chain{type == kFirst, true, index, {}};
      } else if (!chain_.active) {
        d.attributed = false;
      }
      return;
    }
    const size_t length = static_cast<unsigned char>(h[4]) |
                          (static_cast<unsigned char>(h[5]) << 8);
    if (type == kFull || type == kFirst) {
      Attribute(log_.substr(pos + kHeader, length), d);
      chain_ = Chain{type == kFirst, true, index, {}};
    } else if (type == kLast) {
      chain_ = Chain();
    }
    if (!had_chain && type != kFull && type != kFirst) d.attributed = false;
    // The rest of the block, as far as its records still check out.
    size_t next = pos + kHeader + length;
    while (next + kHeader <= end) {
      const char* r = log_.data() + next;
      const size_t n = static_cast<unsigned char>(r[4]) |
                       (static_cast<unsigned char>(r[5]) << 8);
      const uint8_t t = static_cast<uint8_t>(r[6]);
      if (t == kZero && n == 0) return;
      if (next + kHeader + n > end) break;
      const absl::string_view payload(r + kHeader, n);
      const uint32_t rot = LoadFixed32(r) - kMaskDelta;
      if (((rot >> 17) | (rot << 15)) !=
          Crc32c(Crc32c(0, absl::string_view(r + 6, 1)), payload)) {
        break;
      }
      if (t == kFull || t == kFirst) {
        Attribute(payload, d);
        chain_ = Chain{t == kFirst, true, index, {}};
      } else if (t == kLast) {
        chain_ = Chain();
      } else if (t != kMiddle) {
        break;
      }
      next += kHeader + n;
    }
    if (end - next >= kHeader) d.attributed = false;  // Unreadable remainder.
  }

  void LoseChain(size_t pos, size_t bytes, const char* reason) {
    WalDamage& d = NewDamage(pos, bytes, reason);
    Attribute(chain_.payload, d);
    chain_ = Chain();
  }

  WalDamage& NewDamage(size_t pos, size_t bytes, const char* reason) {
    WalDamage d;
    d.offset = pos;
    d.bytes = bytes;
    d.reason = reason;
    scan_.damage.push_back(std::move(d));
    return scan_.damage.back();
  }

  const absl::string_view log_;
  WalScan scan_;
  Chain chain_;
  bool stop_ = false;
};

}  // namespace

uint32_t Crc32c(uint32_t crc, absl::string_view data) {
  static const std::array<uint32_t, 256> table = MakeCrcTable();
  crc = ~crc;
  for (unsigned char c : data) crc = table[(crc ^ c) & 0xff] ^ (crc >> 8);
  return ~crc;
}

WalScan ScanWal(absl::string_view log) { return Scanner(log).Run(); }

absl::StatusOr<WalScan> ScanWalFile(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileText(path);
  if (!bytes.ok()) return bytes.status();
  return ScanWal(*bytes);
}

std::vector<WalFile> ScanWalDirectory(const std::string& dir) {
  std::vector<WalFile> logs;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    if (entry.path().extension() != ".log") continue;
    absl::StatusOr<WalScan> scan = ScanWalFile(entry.path().string());
    if (scan.ok()) logs.push_back({entry.path().string(), std::move(*scan)});
  }
  // RocksDB numbers its files in order, with fixed-width names.
  std::sort(logs.begin(), logs.end(),
            [](const WalFile& a, const WalFile& b) { return a.path < b.path; });
  return logs;
}

bool HasDamage(const std::vector<WalFile>& logs) {
  for (const WalFile& log : logs) {
    if (!log.scan.damage.empty()) return true;
  }
  return false;
}

}  // namespace engram::store::internal
