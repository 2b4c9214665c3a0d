// Conversions between engram.v1 messages and the store layer's types, and
// between absl::Status and grpc::Status. Unknown enum values and malformed
// page tokens become INVALID_ARGUMENT naming the field.
//
// Thread-safe: pure functions.
#ifndef ENGRAM_SERVER_RPC_CONVERT_H_
#define ENGRAM_SERVER_RPC_CONVERT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engram/v1/engram.pb.h"
#include "grpcpp/support/status.h"
#include "server/jobs/fit_scheduler.h"
#include "server/store/retrieve.h"
#include "server/store/settings.h"
#include "server/store/store.h"

namespace engram::rpc {

grpc::Status ToGrpc(const absl::Status& status);

// A new store's settings from `store`, with the documented defaults for
// unset (zero) fields.
absl::StatusOr<store::StoreSettings> SettingsFromProto(const v1::Store& store);

// Copies the fields named by `paths` from `source` into `settings`.
absl::Status ApplyUpdateMask(const v1::Store& source,
                             const google::protobuf::FieldMask& mask,
                             store::StoreSettings& settings);

void ToProto(const store::StoreView& view, v1::Store& out);
void ToProto(const store::Pattern& pattern, v1::Pattern& out);
store::Pattern FromProto(const v1::Pattern& pattern);
void ToProto(const std::string& store, const jobs::FitStatus& status,
             v1::FitStatus& out);

void ToProto(const std::string& store, const jobs::CalibrationStatus& status,
             v1::CalibrationStatus& out);

absl::StatusOr<store::PathChoice> PathFromProto(v1::RetrievalPath path);
v1::RetrievalPath PathToProto(store::PathChoice path);

// 0 -> 100, above 1000 -> 1000 (AIP-158 coercion).
size_t PageSize(uint32_t requested);

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_CONVERT_H_
