// The matching rows of a store view as one memory set, in row order, for a
// retrieval among some patterns only (a filter's, or those that have not
// expired): the exact update over it is the update over a store that held
// only those rows.
//
// Thread-compatible: one retrieval owns a Gathered; its scratch buffers come
// from a small shared pool (thread-safe).
#ifndef ENGRAM_SERVER_STORE_GATHERED_H_
#define ENGRAM_SERVER_STORE_GATHERED_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "server/core/retrieval.h"
#include "server/store/store.h"

namespace engram::store {

// Runs of at least kRun consecutive rows of one chunk stay in place; the
// others are copied (with their norms and, for kernel similarities, their
// features) into a scratch buffer, keeping the store's precision, so the
// kernels run over the same bytes as on a store of only these rows.
class Gathered {
 public:
  static constexpr size_t kRun = 32;

  // `rows`: ascending rows of `view`, which must outlive this; the copies
  // are shared by up to `threads` threads (core::ParallelFor).
  Gathered(const StoreView& view, absl::Span<const uint32_t> rows, int threads);
  ~Gathered();
  Gathered(const Gathered&) = delete;
  Gathered& operator=(const Gathered&) = delete;

  // Memory i of the set is rows[i].
  const core::MemorySet& set() const { return set_; }

 private:
  std::vector<float> scratch_;
  core::MemorySet set_;
};

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_GATHERED_H_
