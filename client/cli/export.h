// `engram export`: a store as files people use — values.npy (float32,
// one row per pattern, in id order) and patterns.jsonl (one JSON object per
// row: id, label, metadata) — which `engram add NAME values.npy
// --patterns=patterns.jsonl` reads back.
#ifndef ENGRAM_CLIENT_CLI_EXPORT_H_
#define ENGRAM_CLIENT_CLI_EXPORT_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"

namespace engram::client {

inline constexpr char kValuesFile[] = "values.npy";
inline constexpr char kPatternsFile[] = "patterns.jsonl";

// Writes every pattern of `store` into `dir` (which must not exist or be
// empty), paging through ListPatterns: not a snapshot if writes go on (a
// backup is). The number of patterns written.
absl::StatusOr<size_t> ExportStore(Client& client, const std::string& store,
                                   const std::string& dir);

// Lines [offset, offset + count) of a patterns.jsonl file as patterns
// without values; errors name the file and the line.
absl::StatusOr<std::vector<v1::Pattern>> ReadPatternDetails(
    const std::string& path, size_t offset, size_t count);

}  // namespace engram::client

#endif  // ENGRAM_CLIENT_CLI_EXPORT_H_
