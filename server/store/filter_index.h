// Which rows of a store carry each label and each metadata entry, so that a
// filtered retrieval finds its rows in time proportional to the postings it
// reads, not to the store.
//
// Readers build it, writers never pay for it: a filtered read first indexes
// the rows of its view the index has not seen yet (all of them the first
// time, then only rows added since), then reads the postings up to its own
// row count. Rows only grow between two deletes, so every view of a store
// between two deletes shares one index; a delete moves rows (swap-remove),
// so the store starts a new, empty index for the views that follow and
// older views keep theirs. A store that is never filtered never builds one,
// and neither an add nor a delete costs O(rows in the store) for it.
// Derived from the rows, it is never stored.
//
// Thread-safe: Match may run from many readers at once.
#ifndef ENGRAM_SERVER_STORE_FILTER_INDEX_H_
#define ENGRAM_SERVER_STORE_FILTER_INDEX_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/base/mutex.h"
#include "server/store/pattern.h"
#include "server/store/settings.h"

namespace engram::store {

// Which patterns a retrieval runs over (engram.v1.Filter).
struct Filter {
  std::vector<std::string> labels;  // Any of them; empty: any label.
  Metadata conditions;              // key = value conditions.
  bool any = false;                 // Conditions: at least one, else all.

  bool empty() const { return labels.empty() && conditions.empty(); }
};

// OK if the filter is within its limits (the messages name the field).
absl::Status ValidateFilter(const Filter& filter, const Limits& limits);

class FilterIndex {
 public:
  // Row g's label and metadata, for g below the reader's row count.
  using Labels = absl::FunctionRef<const std::string&(size_t)>;
  using Entries = absl::FunctionRef<const Metadata&(size_t)>;

  // The rows below `rows` that match `filter`, ascending. Rows below `rows`
  // not indexed yet are indexed first, read through `label` and `metadata`
  // (those of the reader's view: the same rows for every view sharing the
  // index). Indexing asks `check` (if set) between blocks of rows; when it
  // fails (a deadline, a cancelled call), Match returns its status and the
  // rows indexed so far stay indexed: the next reader goes on from there.
  absl::StatusOr<std::vector<uint32_t>> Match(
      const Filter& filter, size_t rows, Labels label, Entries metadata,
      const std::function<absl::Status()>& check = {});

 private:
  using Postings = std::vector<uint32_t>;  // Ascending row positions.
  static std::string LabelTerm(const std::string& label);
  static std::string EntryTerm(const std::string& key,
                               const std::string& value);
  // Indexes rows [rows_, rows), or some of them until `check` fails.
  absl::Status Extend(size_t rows, Labels label, Entries metadata,
                      const std::function<absl::Status()>& check)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The rows below `rows` that match `filter`; rows_ >= rows.
  std::vector<uint32_t> MatchIndexed(const Filter& filter, size_t rows) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The postings of `term` below `rows` (empty if none).
  Postings Read(const std::string& term, size_t rows) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  mutable Mutex mu_;
  absl::flat_hash_map<std::string, Postings> terms_ ABSL_GUARDED_BY(mu_);
  size_t rows_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_FILTER_INDEX_H_
