#include "server/rpc/tls_files.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "openssl/asn1.h"
#include "openssl/bio.h"
#include "openssl/err.h"
#include "openssl/pem.h"
#include "openssl/x509.h"
#include "server/base/file_text.h"

namespace engram::rpc {

namespace {

// PEM files are kilobytes; a CA bundle of every public CA is ~200 KiB.
constexpr size_t kMaxPemBytes = size_t{4} << 20;

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* flag) {
  absl::StatusOr<std::string> text = ReadFileText(path, kMaxPemBytes);
  if (!text.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": ", text.status().message()));
  }
  return text;
}

struct Bio {
  explicit Bio(const std::string& text)
      : bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size()))) {}
  ~Bio() { BIO_free(bio); }
  BIO* bio;
};

// The certificates of a PEM text, in order (none if it holds none).
std::vector<X509*> Certificates(const std::string& pem) {
  std::vector<X509*> out;
  Bio in(pem);
  while (X509* cert = PEM_read_bio_X509(in.bio, nullptr, nullptr, nullptr)) {
    out.push_back(cert);
  }
  ERR_clear_error();
  return out;
}

void Free(std::vector<X509*>& certs) {
  for (X509* cert : certs) X509_free(cert);
  certs.clear();
}

// "/CN=server, valid until Dec  6 01:23:07 2026 GMT".
std::string Describe(X509* cert) {
  std::string out;
  char name[256];
  if (X509_NAME_oneline(X509_get_subject_name(cert), name, sizeof(name))) {
    out = name;
  }
  BIO* text = BIO_new(BIO_s_mem());
  if (ASN1_TIME_print(text, X509_get0_notAfter(cert)) == 1) {
    char* data = nullptr;
    const long size = BIO_get_mem_data(text, &data);
    absl::StrAppend(&out, ", valid until ", std::string(data, size));
    if (X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0) {
      absl::StrAppend(&out, " (EXPIRED: clients will refuse it)");
    }
  }
  BIO_free(text);
  return out;
}

// The certificate chain and key of `paths` (if given) and its CA bundle
// (if given) checked; this side's certificate described.
absl::Status Check(const TlsPaths& paths, const std::string& cert_pem,
                   const std::string& key_pem, const std::string& ca_pem,
                   std::string* describe, int64_t* expiry) {
  absl::Status status;
  if (!paths.cert.empty()) {
    std::vector<X509*> chain = Certificates(cert_pem);
    if (chain.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          paths.cert_flag, "=", paths.cert, ": not a PEM certificate"));
    }
    Bio key_in(key_pem);
    EVP_PKEY* key =
        PEM_read_bio_PrivateKey(key_in.bio, nullptr, nullptr, nullptr);
    if (key == nullptr) {
      status = absl::InvalidArgumentError(
          absl::StrCat(paths.key_flag, "=", paths.key,
                       ": not a PEM private key (or one with a passphrase)"));
    } else if (X509_check_private_key(chain[0], key) != 1) {
      status = absl::InvalidArgumentError(absl::StrCat(
          paths.key_flag, "=", paths.key, " does not match the certificate of ",
          paths.cert_flag, "=", paths.cert));
    }
    if (status.ok()) {
      *describe = Describe(chain[0]);
      tm when;
      *expiry = ASN1_TIME_to_tm(X509_get0_notAfter(chain[0]), &when) == 1
                    ? static_cast<int64_t>(timegm(&when))
                    : 0;
    }
    EVP_PKEY_free(key);
    Free(chain);
  }
  if (status.ok() && !paths.ca.empty()) {
    std::vector<X509*> cas = Certificates(ca_pem);
    if (cas.empty()) {
      status = absl::InvalidArgumentError(absl::StrCat(
          paths.ca_flag, "=", paths.ca, ": holds no PEM certificate"));
    }
    Free(cas);
  }
  ERR_clear_error();
  return status;
}

// An in-memory file holding `text`, or -1.
int MemoryFile(const char* name, const std::string& text) {
  const int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) return -1;
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      return -1;
    }
    done += static_cast<size_t>(n);
  }
  return fd;
}

// Puts a new in-memory file holding `text` at `*fd` (the same number, so
// that its /proc/self/fd path now reads the new text); a first one if
// `*fd` < 0.
absl::Status Replace(const char* name, const std::string& text, int* fd) {
  const int next = MemoryFile(name, text);
  if (next < 0) {
    return absl::InternalError(absl::StrCat(
        "TLS: cannot make an in-memory file: ", std::strerror(errno)));
  }
  if (*fd < 0) {
    *fd = next;
    return absl::OkStatus();
  }
  if (dup3(next, *fd, O_CLOEXEC) < 0) {
    const int error = errno;
    close(next);
    return absl::InternalError(absl::StrCat(
        "TLS: cannot replace an in-memory file: ", std::strerror(error)));
  }
  close(next);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TlsFiles>> TlsFiles::Open(TlsPaths paths) {
  if (paths.cert.empty() != paths.key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(paths.cert_flag, " and ", paths.key_flag,
                     " go together: give both or neither"));
  }
  if (paths.cert.empty() && paths.ca.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS needs ", paths.cert_flag, " or ", paths.ca_flag));
  }
  std::vector<std::string> files = {paths.cert, paths.key, paths.ca};
  absl::StatusOr<FileBacked<Checked>> checked = FileBacked<Checked>::Load(
      std::move(files), [paths = std::move(paths)] { return Read(paths); });
  if (!checked.ok()) return checked.status();
  std::unique_ptr<TlsFiles> out(new TlsFiles());
  out->files_.emplace(*std::move(checked));
  if (absl::Status status = out->Install(*out->files_->get()); !status.ok()) {
    return status;
  }
  if (out->identity_fd_ >= 0) {
    out->identity_path_ = absl::StrCat("/proc/self/fd/", out->identity_fd_);
  }
  if (out->ca_fd_ >= 0) {
    out->ca_path_ = absl::StrCat("/proc/self/fd/", out->ca_fd_);
  }
  return out;
}

// The in-memory files stay open: a gRPC certificate watcher may outlive
// this object by a moment (credentials are released asynchronously), and a
// closed number reused by another file would have it read that file — an
// empty one aborts the process (gRPC 1.51). One or two descriptors a
// process, made at start.
TlsFiles::~TlsFiles() = default;

// The certificate chain and key of `paths` (if given) and its CA bundle
// (if given), read and checked; this side's certificate described.
absl::StatusOr<TlsFiles::Checked> TlsFiles::Read(const TlsPaths& paths) {
  const auto read = [](const std::string& path,
                       const char* flag) -> absl::StatusOr<std::string> {
    return path.empty() ? std::string() : ReadPem(path, flag);
  };
  absl::StatusOr<std::string> cert = read(paths.cert, paths.cert_flag);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = read(paths.key, paths.key_flag);
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> ca = read(paths.ca, paths.ca_flag);
  if (!ca.ok()) return ca.status();
  Checked out;
  if (absl::Status status =
          Check(paths, *cert, *key, *ca, &out.describe, &out.expiry);
      !status.ok()) {
    return status;
  }
  // Key first: gRPC reads the key and the chain from the same file.
  if (!paths.cert.empty()) out.identity = absl::StrCat(*key, "\n", *cert);
  out.ca = *std::move(ca);
  return out;
}

absl::Status TlsFiles::Install(const Checked& checked) {
  if (!checked.identity.empty()) {
    if (absl::Status status =
            Replace("engram-tls-identity", checked.identity, &identity_fd_);
        !status.ok()) {
      return status;
    }
  }
  if (!checked.ca.empty()) {
    if (absl::Status status = Replace("engram-tls-ca", checked.ca, &ca_fd_);
        !status.ok()) {
      return status;
    }
  }
  describe_ = checked.describe;
  expiry_ = checked.expiry;
  return absl::OkStatus();
}

std::shared_ptr<grpc::experimental::CertificateProviderInterface>
TlsFiles::Provider() const {
  using Watcher = grpc::experimental::FileWatcherCertificateProvider;
  constexpr unsigned kRefreshSeconds = 1;  // In-memory reads: cheap.
  if (identity_path_.empty()) {
    return std::make_shared<Watcher>(ca_path_, kRefreshSeconds);
  }
  return std::make_shared<Watcher>(identity_path_, identity_path_, ca_path_,
                                   kRefreshSeconds);
}

absl::StatusOr<bool> TlsFiles::Reload() {
  absl::StatusOr<bool> changed = files_->Reload();
  if (!changed.ok() || !(*changed || install_again_)) return changed;
  absl::Status installed = Install(*files_->get());
  install_again_ = !installed.ok();
  if (!installed.ok()) return installed;
  return true;
}

}  // namespace engram::rpc
