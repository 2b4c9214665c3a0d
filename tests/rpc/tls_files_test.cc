#include "server/rpc/tls_files.h"

#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "openssl/evp.h"
#include "openssl/pem.h"
#include "openssl/x509.h"
#include "server/base/file_text.h"
#include "server/rpc/credentials.h"

namespace engram::rpc {
namespace {

// A key and a certificate for it named /CN=`name`, valid for `days`.
struct Identity {
  std::string key, cert;
  int64_t expiry = 0;
};

std::string Pem(int (*write)(BIO*, void*), void* what) {
  BIO* out = BIO_new(BIO_s_mem());
  write(out, what);
  char* data = nullptr;
  const long size = BIO_get_mem_data(out, &data);
  std::string text(data, static_cast<size_t>(size));
  BIO_free(out);
  return text;
}

Identity MakeIdentity(const std::string& name, int days) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), -60);
  time_t now = std::time(nullptr);
  const time_t until = now + int64_t{days} * 86400;
  X509_time_adj_ex(X509_getm_notAfter(cert), days, 0, &now);
  X509_NAME* subject = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(
      subject, "CN", MBSTRING_ASC,
      reinterpret_cast<const unsigned char*>(name.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert, subject);
  X509_set_pubkey(cert, key);
  X509_sign(cert, key, EVP_sha256());
  Identity out;
  out.key = Pem(
      [](BIO* bio, void* k) {
        return PEM_write_bio_PrivateKey(bio, static_cast<EVP_PKEY*>(k), nullptr,
                                        nullptr, 0, nullptr, nullptr);
      },
      key);
  out.cert = Pem(
      [](BIO* bio, void* c) {
        return PEM_write_bio_X509(bio, static_cast<X509*>(c));
      },
      cert);
  out.expiry = static_cast<int64_t>(until);
  X509_free(cert);
  EVP_PKEY_free(key);
  return out;
}

class TlsFilesTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (const char* name : {"cert.pem", "key.pem", "ca.pem"}) {
      std::remove(Path(name).c_str());
    }
  }
  std::string Path(const std::string& name) const {
    return absl::StrCat(::testing::TempDir(), "tls_files_test_", getpid(), "_",
                        name);
  }
  // As a rotation writes it: aside, then renamed over the file.
  void Put(const std::string& name, const std::string& text) const {
    const std::string aside = Path(name) + ".new";
    std::ofstream(aside, std::ios::binary | std::ios::trunc) << text;
    ASSERT_EQ(std::rename(aside.c_str(), Path(name).c_str()), 0);
  }
  TlsPaths Server() const {
    TlsPaths paths;
    paths.cert = Path("cert.pem");
    paths.key = Path("key.pem");
    return paths;
  }
  std::string Served(const TlsFiles& files) const {
    return ReadFileText(files.identity_path()).value();
  }

  Identity first_ = MakeIdentity("first", 30);
  Identity second_ = MakeIdentity("second", 90);
};

TEST_F(TlsFilesTest, ServesTheCheckedKeyAndCertificateInMemory) {
  Put("cert.pem", first_.cert);
  Put("key.pem", first_.key);
  absl::StatusOr<std::unique_ptr<TlsFiles>> files = TlsFiles::Open(Server());
  ASSERT_TRUE(files.ok()) << files.status();
  const TlsFiles& tls = **files;
  EXPECT_TRUE(absl::StartsWith(tls.identity_path(), "/proc/self/fd/"));
  EXPECT_EQ(Served(tls), first_.key + "\n" + first_.cert);
  EXPECT_TRUE(tls.ca_path().empty());
  EXPECT_TRUE(absl::StartsWith(tls.describe(), "/CN=first, valid until "))
      << tls.describe();
  EXPECT_NEAR(static_cast<double>(tls.expiry()),
              static_cast<double>(first_.expiry), 2);
  EXPECT_NE(tls.Provider(), nullptr);
}

TEST_F(TlsFilesTest, FilesThatDoNotCheckAreRefusedNamingTheirFlag) {
  Put("cert.pem", first_.cert);
  Put("key.pem", second_.key);
  EXPECT_EQ(TlsFiles::Open(Server()).status().message(),
            absl::StrCat("--tls_key=", Path("key.pem"),
                         " does not match the certificate of --tls_cert=",
                         Path("cert.pem")));
  Put("key.pem", first_.key);
  Put("cert.pem", "");
  EXPECT_EQ(
      TlsFiles::Open(Server()).status().message(),
      absl::StrCat("--tls_cert=", Path("cert.pem"), ": not a PEM certificate"));
  Put("cert.pem", first_.cert);
  Put("key.pem", "not a key");
  EXPECT_TRUE(absl::StrContains(TlsFiles::Open(Server()).status().message(),
                                "not a PEM private key"));
  TlsPaths missing = Server();
  missing.cert = Path("no-such-cert.pem");
  EXPECT_EQ(TlsFiles::Open(missing).status().message(),
            absl::StrCat("--tls_cert: cannot read '", missing.cert,
                         "': No such file or directory"));
  TlsPaths alone = Server();
  alone.key.clear();
  EXPECT_EQ(TlsFiles::Open(alone).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(TlsFilesTest, ARotationIsServedAndAHalfRotationIsNot) {
  Put("cert.pem", first_.cert);
  Put("key.pem", first_.key);
  std::unique_ptr<TlsFiles> tls = *TlsFiles::Open(Server());
  const std::string path = tls->identity_path();
  EXPECT_EQ(tls->Reload().value(), false);

  // The key first: it does not fit the certificate served.
  Put("key.pem", second_.key);
  absl::StatusOr<bool> reloaded = tls->Reload();
  EXPECT_TRUE(absl::StrContains(reloaded.status().message(),
                                "does not match the certificate"))
      << reloaded.status();
  EXPECT_EQ(tls->Reload().value(), false);  // Reported once.
  EXPECT_EQ(Served(*tls), first_.key + "\n" + first_.cert);
  EXPECT_TRUE(absl::StartsWith(tls->describe(), "/CN=first"));

  Put("cert.pem", second_.cert);  // The rotation completed.
  EXPECT_EQ(tls->Reload().value(), true);
  EXPECT_EQ(tls->identity_path(), path);  // gRPC's watcher reads the same.
  EXPECT_EQ(Served(*tls), second_.key + "\n" + second_.cert);
  EXPECT_TRUE(absl::StartsWith(tls->describe(), "/CN=second"));
  EXPECT_NEAR(static_cast<double>(tls->expiry()),
              static_cast<double>(second_.expiry), 2);

  Put("cert.pem", "");  // gRPC 1.51 aborts on an empty certificate.
  EXPECT_FALSE(tls->Reload().ok());
  EXPECT_EQ(Served(*tls), second_.key + "\n" + second_.cert);
}

TEST_F(TlsFilesTest, AClientMayHaveACaBundleAlone) {
  Put("ca.pem", first_.cert + second_.cert);
  TlsPaths client;
  client.ca = Path("ca.pem");
  client.ca_flag = "--shard_tls_ca";
  absl::StatusOr<std::unique_ptr<TlsFiles>> files = TlsFiles::Open(client);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_TRUE((*files)->identity_path().empty());
  EXPECT_EQ(ReadFileText((*files)->ca_path()).value(),
            first_.cert + second_.cert);
  EXPECT_EQ((*files)->describe(), "");
  Put("ca.pem", "garbage");
  EXPECT_EQ((*files)->Reload().status().message(),
            absl::StrCat("--shard_tls_ca=", Path("ca.pem"),
                         ": holds no PEM certificate"));
  Put("ca.pem", second_.cert);
  EXPECT_EQ((*files)->Reload().value(), true);
  EXPECT_EQ(ReadFileText((*files)->ca_path()).value(), second_.cert);
}

TEST(ReportTest, LogsEachOutcomeAndKeepsTheGaugeTrue) {
  std::atomic<bool> failed{false};
  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(Report(false, "--token_file=/t", "2 tokens", failed));
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");

  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(Report(absl::InvalidArgumentError("line 3: expected"),
                      "--token_file=/t", "2 tokens", failed));
  std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(absl::StrContains(
      log,
      " ERROR --token_file=/t changed into a version that does not load "
      "(line 3: expected); still in force: 2 tokens\n"))
      << log;
  EXPECT_TRUE(failed);

  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(Report(false, "--token_file=/t", "2 tokens", failed));
  EXPECT_TRUE(failed);  // Still the version on disk that does not load.
  EXPECT_TRUE(Report(true, "--token_file=/t", "1 tokens", failed));
  log = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(absl::StrContains(
      log, " INFO --token_file=/t changed; now in force: 1 tokens\n"))
      << log;
  EXPECT_FALSE(failed);
}

}  // namespace
}  // namespace engram::rpc
