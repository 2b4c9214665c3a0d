#include "server/rpc/credentials.h"

#include "server/base/log.h"

namespace engram::rpc {

bool Report(const absl::StatusOr<bool>& reloaded, absl::string_view files,
            absl::string_view in_force, std::atomic<bool>& failed) {
  if (!reloaded.ok()) {
    failed = true;
    Log(LogLevel::kError,
        "%s changed into a version that does not load (%s); still in force: %s",
        files, reloaded.status().message(), in_force);
    return false;
  }
  if (!*reloaded) return false;
  failed = false;
  Log(LogLevel::kInfo, "%s changed; now in force: %s", files, in_force);
  return true;
}

}  // namespace engram::rpc
