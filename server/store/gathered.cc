#include "server/store/gathered.h"

#include <algorithm>

#include "server/core/precision.h"

namespace engram::store {

Gathered::Gathered(const StoreView& view, absl::Span<const uint32_t> rows) {
  const core::MemorySet all = view.memories();
  set_.dim = all.dim;
  set_.map = all.map;
  if (rows.empty() || all.blocks.empty()) return;
  const size_t d = all.dim;
  const bool keyed = all.blocks[0].keys != nullptr;
  const size_t key_dim = keyed ? all.map->out_dim() : 0;
  const core::Precision precision = all.blocks[0].precision;
  // The view's blocks are its chunks: a row's block is a division.
  const size_t capacity = view.chunk_capacity();
  // Blocks of `capacity` rows; which of them must be listed.
  const size_t blocks = (rows.size() + capacity - 1) / capacity;
  std::vector<bool> listed(blocks);
  size_t listed_rows = 0;
  for (size_t b = 0; b < blocks; ++b) {
    const size_t first = b * capacity;
    const size_t n = std::min(capacity, rows.size() - first);
    const uint32_t r0 = rows[first];
    listed[b] = rows[first + n - 1] != r0 + n - 1 ||
                r0 / capacity != (r0 + n - 1) / capacity;
    if (listed[b]) listed_rows += n;
  }
  // Reserved up front: the blocks point into these arrays.
  row_list_.reserve(listed_rows);
  sq_norms_.reserve(listed_rows);
  key_list_.reserve(keyed ? listed_rows : 0);
  key_sq_norms_.reserve(keyed ? listed_rows : 0);
  for (size_t b = 0; b < blocks; ++b) {
    const size_t first = b * capacity;
    const size_t n = std::min(capacity, rows.size() - first);
    if (!listed[b]) {
      const core::MemoryBlock& chunk = all.blocks[rows[first] / capacity];
      const size_t r0 = rows[first] % capacity;
      set_.blocks.push_back(
          {core::Advance(precision, chunk.rows, r0 * d), chunk.sq_norms + r0, n,
           keyed ? core::Advance(precision, chunk.keys, r0 * key_dim) : nullptr,
           keyed ? chunk.key_sq_norms + r0 : nullptr, precision});
      continue;
    }
    const size_t at = row_list_.size();
    for (size_t i = first; i < first + n; ++i) {
      const core::MemoryBlock& chunk = all.blocks[rows[i] / capacity];
      const size_t r = rows[i] % capacity;
      row_list_.push_back(core::Advance(precision, chunk.rows, r * d));
      sq_norms_.push_back(chunk.sq_norms[r]);
      if (keyed) {
        key_list_.push_back(core::Advance(precision, chunk.keys, r * key_dim));
        key_sq_norms_.push_back(chunk.key_sq_norms[r]);
      }
    }
    core::MemoryBlock block;
    block.count = n;
    block.precision = precision;
    block.row_list = row_list_.data() + at;
    block.sq_norms = sq_norms_.data() + at;
    if (keyed) {
      block.key_list = key_list_.data() + at;
      block.key_sq_norms = key_sq_norms_.data() + at;
    }
    set_.blocks.push_back(block);
  }
}

}  // namespace engram::store
