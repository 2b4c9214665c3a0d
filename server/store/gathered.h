// The matching rows of a store view as one memory set, in row order, for a
// retrieval among some patterns only (a filter's, or those that have not
// expired): the exact update over it is the update over a store that held
// only those rows.
//
// Thread-compatible: one retrieval owns a Gathered.
#ifndef ENGRAM_SERVER_STORE_GATHERED_H_
#define ENGRAM_SERVER_STORE_GATHERED_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "server/core/retrieval.h"
#include "server/store/store.h"

namespace engram::store {

// The rows are cut into blocks of the store's chunk capacity, as a store
// holding only them would keep them, so the retrieval runs the same tiles
// over the same bytes. A block whose rows lie one after another in one chunk
// is read in place; any other is a listed block (core::MemoryBlock): a
// pointer and a norm per row, nothing of the values copied here (the
// retrieval copies a tile at a time as it scores it). So a gathered set
// costs 12 bytes per row (24 with U-Hop features), whatever the dimension.
class Gathered {
 public:
  // `rows`: ascending rows of `view`, which must outlive this.
  Gathered(const StoreView& view, absl::Span<const uint32_t> rows);
  Gathered(const Gathered&) = delete;
  Gathered& operator=(const Gathered&) = delete;

  // Memory i of the set is rows[i].
  const core::MemorySet& set() const { return set_; }

 private:
  std::vector<const void*> row_list_, key_list_;
  std::vector<float> sq_norms_, key_sq_norms_;
  core::MemorySet set_;
};

}  // namespace engram::store

#endif  // ENGRAM_SERVER_STORE_GATHERED_H_
