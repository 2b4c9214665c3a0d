// Which rows of a store carry each label and each metadata entry, so that a
// filtered retrieval finds its rows in time proportional to the postings it
// reads, not to the store.
//
// The index is append-only: rows added to the store are appended (their
// positions only grow), and a view reads it up to its own row count, so
// every view of a store between two deletes shares one index and an add
// costs O(rows added). A delete moves rows (swap-remove), so the store then
// builds a new index for the views that follow; older views keep the old
// one. Derived from the rows, it is rebuilt at load and never stored.
//
// Thread-safe: Append (one writer at a time: the store's) and Match may run
// concurrently.
#ifndef ENGRAM_SERVER_STORE_FILTER_INDEX_H_
#define ENGRAM_SERVER_STORE_FILTER_INDEX_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
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
  // Adds rows [first, first + n): row first + i has label(i) and
  // metadata(i). `first` must be the number of rows indexed so far.
  void Append(size_t first, size_t n,
              absl::FunctionRef<const std::string&(size_t)> label,
              absl::FunctionRef<const Metadata&(size_t)> metadata);

  // The rows below `rows` that match `filter`, ascending.
  std::vector<uint32_t> Match(const Filter& filter, size_t rows) const;

  // Distinct labels and metadata entries indexed.
  size_t terms() const;

 private:
  using Postings = std::vector<uint32_t>;  // Ascending row positions.
  static std::string LabelTerm(const std::string& label);
  static std::string EntryTerm(const std::string& key,
                               const std::string& value);
  // The postings of `term` below `rows` (empty if none).
  Postings Read(const std::string& term, size_t rows) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  mutable Mutex mu_;
  absl::flat_hash_map<std::string, Postings> terms_ ABSL_GUARDED_BY(mu_);
  size_t rows_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_FILTER_INDEX_H_
