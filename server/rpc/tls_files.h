// The TLS files engramd serves with, checked before gRPC sees them, and
// read again when they change (a rotated certificate).
//
// gRPC can watch certificate files itself, but it takes whatever they hold
// at the moment it looks: a key that does not fit the certificate stops
// every new handshake, and an empty certificate file aborts the process
// (gRPC 1.51, measured). So engramd reads the files, checks them (a PEM
// certificate chain, a PEM private key that fits it, a CA bundle with a
// certificate) and only then hands them to gRPC, through in-memory files
// (memfd) whose /proc/self/fd paths gRPC's watcher reads; a new version
// replaces the old one atomically (dup3), key and certificate in one file,
// so gRPC never reads one without the other. The files are one FileBacked
// value: a version that does not check (or that changed while read) is
// reported and the one before stays in use. The key is never written to
// disk.
//
//   absl::StatusOr<std::unique_ptr<TlsFiles>> files =
//       TlsFiles::Open({cert, key, client_ca});
//   FileWatcherCertificateProvider((*files)->identity_path(),
//                                  (*files)->identity_path(), ...);
//   ... every so often: (*files)->Reload();
//
// Thread-compatible: Reload from one thread at a time.
#ifndef ENGRAM_SERVER_RPC_TLS_FILES_H_
#define ENGRAM_SERVER_RPC_TLS_FILES_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "server/base/file_backed.h"

namespace engram::rpc {

// The files, and the flags that name them in messages.
struct TlsPaths {
  std::string cert;  // A PEM certificate chain, this side's; with `key`.
  std::string key;   // Its PEM private key.
  std::string ca;    // A PEM CA bundle: the peer's certificate's signer.
  const char* cert_flag = "--tls_cert";
  const char* key_flag = "--tls_key";
  const char* ca_flag = "--tls_client_ca";
};

class TlsFiles {
 public:
  // A server's files: cert and key, ca optional (mutual TLS); a client's:
  // ca, cert and key optional (mutual TLS). INVALID_ARGUMENT naming the
  // flag whose file does not check, or the one missing.
  static absl::StatusOr<std::unique_ptr<TlsFiles>> Open(TlsPaths paths);
  ~TlsFiles();  // Leaves the in-memory files open (tls_files.cc).
  TlsFiles(const TlsFiles&) = delete;
  TlsFiles& operator=(const TlsFiles&) = delete;

  // A gRPC certificate provider of the checked files (the identity if
  // given, the CA if given), reading them every second: what this object
  // puts in their place is served within a second.
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> Provider()
      const;

  // Key and certificate chain, checked, in one file; the CA bundle (each
  // empty if not given).
  const std::string& identity_path() const { return identity_path_; }
  const std::string& ca_path() const { return ca_path_; }

  // If a file changed since it was last read: reads them all, checks them
  // and, if they pass, puts them in place of the ones before (true). False
  // if none changed (or one changed while read: the next Reload reads them
  // again); an error, the files before kept, if they do not check
  // (reported once per version).
  absl::StatusOr<bool> Reload();

  // "/CN=engram, valid until Dec  4 12:00:00 2027 GMT" of this side's
  // certificate in use (flagged if it has expired); empty without one.
  const std::string& describe() const { return describe_; }
  // When it expires, unix seconds (0 without one).
  int64_t expiry() const { return expiry_; }

 private:
  // The files' texts, checked.
  struct Checked {
    std::string identity;  // Key and certificate chain (empty: none).
    std::string ca;        // CA bundle (empty: none).
    std::string describe;  // Of the certificate; empty without one.
    int64_t expiry = 0;
    bool operator==(const Checked& o) const {
      return identity == o.identity && ca == o.ca;  // The rest follows.
    }
  };
  static absl::StatusOr<Checked> Read(const TlsPaths& paths);

  TlsFiles() = default;
  // Puts `checked` in place of the in-memory files.
  absl::Status Install(const Checked& checked);

  std::optional<FileBacked<Checked>> files_;
  int identity_fd_ = -1, ca_fd_ = -1;
  std::string identity_path_, ca_path_;
  // Of the version installed.
  std::string describe_;
  int64_t expiry_ = 0;
  bool install_again_ = false;  // The last Install failed.
};

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_TLS_FILES_H_
