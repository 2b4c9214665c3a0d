// What a process's credential files are, for its gauges, and the one way a
// look at changed credential files is reported. engramd's own token file
// and TLS files, and a router's towards its shards, are read again every
// --credentials_refresh_s; each look goes through Report.
//
//   absl::StatusOr<bool> reloaded = tls.Reload();
//   if (Report(reloaded, "TLS files", tls.describe(),
//              state->tls_files_failed)) {
//     state->certificate_expiry = tls.expiry();
//   }
#ifndef ENGRAM_SERVER_RPC_CREDENTIALS_H_
#define ENGRAM_SERVER_RPC_CREDENTIALS_H_

#include <atomic>
#include <memory>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace engram::rpc {

// What one side's credentials are: a server's, or a router's towards its
// shards. Read by the gauges at every scrape, written by the reloads.
struct CredentialState {
  // When the certificate of this side expires (unix seconds); 0 without.
  std::atomic<double> certificate_expiry{0};
  // Whether the file changed into a version that does not load (the one
  // before stays in force), until a version that loads.
  std::atomic<bool> token_file_failed{false};
  std::atomic<bool> tls_files_failed{false};
};

// `state`, or a new one where none is given (a process whose gauges no one
// reads: tests, tools).
inline std::shared_ptr<CredentialState> StateOrNew(
    std::shared_ptr<CredentialState> state) {
  return state != nullptr ? std::move(state)
                          : std::make_shared<CredentialState>();
}

// Reports what a reload of credential `files` ("--token_file=/etc/t")
// found: a version that does not load as an ERROR ("... changed into a
// version that does not load (why); still in force: " `in_force`), a new
// one as INFO ("... changed; now in force: " `in_force`); `failed` says
// whether the files on disk are a version not in force. True
// if a new version is in force.
bool Report(const absl::StatusOr<bool>& reloaded, absl::string_view files,
            absl::string_view in_force, std::atomic<bool>& failed);

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_CREDENTIALS_H_
