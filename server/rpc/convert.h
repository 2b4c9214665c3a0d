// Conversions between engram.v1 messages and the store and job layers'
// types, and between absl::Status and grpc::Status (settings convert in
// server/store/settings.h, the one place for them). Unknown enum values
// become INVALID_ARGUMENT naming the field.
//
// Thread-safe: pure functions.
#ifndef ENGRAM_SERVER_RPC_CONVERT_H_
#define ENGRAM_SERVER_RPC_CONVERT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engram/v1/engram.pb.h"
#include "grpcpp/support/status.h"
#include "server/store/retrieve.h"
#include "server/store/settings.h"
#include "server/store/store.h"

namespace engram::rpc {

grpc::Status ToGrpc(const absl::Status& status);

void ToProto(const store::StoreView& view, v1::Store& out);
void ToProto(const store::Pattern& pattern, v1::Pattern& out);
// A pattern of an add (patterns[index]); its ttl, if any, counted from `now`.
absl::StatusOr<store::Pattern> FromProto(const v1::Pattern& pattern,
                                         absl::Time now, size_t index);
// Every pattern of an add, with one `now`.
absl::Status FromProto(
    const google::protobuf::RepeatedPtrField<v1::Pattern>& patterns,
    std::vector<store::Pattern>& out);
// A router's add: each valid ttl becomes the expire_time it means now, so
// every replica stores the same expiry.
void FixTtls(google::protobuf::RepeatedPtrField<v1::Pattern>& patterns,
             absl::Time now);
// A Retrieve request for a store of dimension `dim`; its queries are copied
// into `queries` (which the result points into). INVALID_ARGUMENT names a
// query of the wrong dimension or an unknown path.
absl::StatusOr<store::RetrieveRequest> FromProto(
    const v1::RetrieveRequest& request, size_t dim,
    std::vector<float>& queries);
// A filter as the store reads it (INVALID_ARGUMENT for an unknown combine;
// store::ValidateFilter checks its limits).
absl::StatusOr<store::Filter> FromProto(const v1::Filter& filter);
// A Retrieve answer (vectors left out with `omit_vectors`).
void ToProto(const store::RetrieveResult& result, size_t dim, bool omit_vectors,
             v1::RetrieveResponse& out);
absl::StatusOr<store::PathChoice> PathFromProto(v1::RetrievalPath path);
v1::RetrievalPath PathToProto(store::PathChoice path);

// 0 -> 100, above 1000 -> 1000 (AIP-158 coercion).
size_t PageSize(uint32_t requested);

// One page of `store`'s patterns with ids above `after` (ListPatterns, and
// a shard's ListPatternsAfter for a router): PageSize(page_size) at most,
// and no more than fit in a message of `max_message_bytes` with the longest
// label the store ever held and the largest metadata `limits` allow.
store::Store::Page ListPage(const store::Store& store, uint64_t after,
                            uint32_t page_size, bool with_values,
                            const store::Limits& limits,
                            size_t max_message_bytes);
// About the bytes of the answer ListPage's page will make: its patterns at
// most (no more than the store holds), without their metadata.
size_t ListPageBytes(const store::Store& store, uint32_t page_size,
                     bool with_values, const store::Limits& limits,
                     size_t max_message_bytes);

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_CONVERT_H_
