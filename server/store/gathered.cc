#include "server/store/gathered.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <utility>

#include "server/core/parallel.h"
#include "server/core/precision.h"

namespace engram::store {

namespace {

// Buffers for gathered rows, kept between retrievals: fresh pages cost more
// than the copy (a fault per 4 KiB). At most two are kept, the largest.
class ScratchPool {
 public:
  static std::vector<float> Take(size_t floats) {
    std::vector<float> buffer;
    {
      std::lock_guard<std::mutex> lock(mu());
      auto& free = buffers();
      auto fit = std::find_if(free.begin(), free.end(), [&](const auto& b) {
        return b.size() >= floats;
      });
      if (fit == free.end() && !free.empty()) fit = free.begin();
      if (fit != free.end()) {
        buffer = std::move(*fit);
        free.erase(fit);
      }
    }
    if (buffer.size() < floats) buffer.resize(floats);
    return buffer;
  }
  static void Give(std::vector<float> buffer) {
    std::lock_guard<std::mutex> lock(mu());
    auto& free = buffers();
    free.push_back(std::move(buffer));
    std::sort(free.begin(), free.end(),
              [](const auto& a, const auto& b) { return a.size() > b.size(); });
    if (free.size() > 2) free.resize(2);
  }

 private:
  static std::mutex& mu() {
    static std::mutex* m = new std::mutex;
    return *m;
  }
  static std::vector<std::vector<float>>& buffers() {
    static auto* b = new std::vector<std::vector<float>>;
    return *b;
  }
};

}  // namespace

Gathered::Gathered(const StoreView& view, absl::Span<const uint32_t> rows,
                   int threads) {
  const core::MemorySet all = view.memories();
  const size_t d = all.dim;
  const size_t key_dim = all.blocks.empty() || all.blocks[0].keys == nullptr
                             ? 0
                             : all.map->out_dim();
  // Every block but the last is a full chunk: a row's block is a division.
  const size_t per_block =
      all.blocks.size() > 1 ? all.blocks[0].count : view.size() + 1;
  // Runs: [begin, end) of `rows`, consecutive and in one chunk.
  std::vector<std::pair<size_t, size_t>> runs;
  size_t copied = 0;
  for (size_t i = 0; i < rows.size();) {
    size_t j = i + 1;
    while (j < rows.size() && rows[j] == rows[j - 1] + 1 &&
           rows[j] / per_block == rows[i] / per_block) {
      ++j;
    }
    runs.emplace_back(i, j);
    if (j - i < kRun) copied += j - i;
    i = j;
  }
  // The copies keep the store's precision, so a filtered retrieval runs
  // the same kernels over the same bytes as a store of only the matches.
  const core::Precision precision =
      all.blocks.empty() ? core::Precision::kFloat32 : all.blocks[0].precision;
  const size_t eb = core::ElementBytes(precision);
  const size_t value_floats = (copied * d * eb + 3) / 4;
  const size_t key_floats = (copied * key_dim * eb + 3) / 4;
  scratch_ = ScratchPool::Take(copied * (1 + (key_dim ? 1 : 0)) + value_floats +
                               key_floats);
  float* norms = scratch_.data();
  float* key_norms = norms + copied;
  auto* values =
      reinterpret_cast<unsigned char*>(key_norms + (key_dim ? copied : 0));
  auto* keys = reinterpret_cast<unsigned char*>(
      reinterpret_cast<float*>(values) + value_floats);
  set_.dim = d;
  set_.map = all.map;
  // The copies to make: rows [r0, r0 + n) of a block to buffer row `at`.
  struct Copy {
    const core::MemoryBlock* block;
    size_t r0, n, at;
  };
  std::vector<Copy> copies;
  size_t at = 0;  // Rows copied so far.
  bool last_copied = false;
  for (const auto& [begin, end] : runs) {
    const core::MemoryBlock& block = all.blocks[rows[begin] / per_block];
    const size_t r0 = rows[begin] % per_block;
    const size_t n = end - begin;
    if (n >= kRun) {
      set_.blocks.push_back(
          {core::Advance(precision, block.rows, r0 * d), block.sq_norms + r0, n,
           key_dim ? core::Advance(precision, block.keys, r0 * key_dim)
                   : nullptr,
           key_dim ? block.key_sq_norms + r0 : nullptr, precision});
      last_copied = false;
      continue;
    }
    copies.push_back({&block, r0, n, at});
    // Copied runs one after another are one block of the buffer.
    if (last_copied) {
      set_.blocks.back().count += n;
    } else {
      set_.blocks.push_back({values + at * d * eb, norms + at, n,
                             key_dim ? keys + at * key_dim * eb : nullptr,
                             key_dim ? key_norms + at : nullptr, precision});
    }
    at += n;
    last_copied = true;
  }
  // Scattered rows are copied at the latency of memory, not its bandwidth:
  // the threads of the retrieval share them, each a range of buffer rows.
  if (copies.empty()) return;
  constexpr size_t kRowsPerPart = 2048;
  const size_t parts =
      std::clamp<size_t>(copied / kRowsPerPart, 1, std::max(threads, 1));
  core::ParallelFor(parts, [&](size_t p) {
    const size_t first = copied * p / parts, last = copied * (p + 1) / parts;
    auto c = std::upper_bound(
        copies.begin(), copies.end(), first,
        [](size_t row, const Copy& copy) { return row < copy.at; });
    for (--c; c != copies.end() && c->at < last; ++c) {
      const size_t from = std::max(first, c->at) - c->at;
      const size_t to = std::min(last, c->at + c->n) - c->at;
      for (size_t k = from; k < to; ++k) {
        const size_t r = c->r0 + k, row = c->at + k;
        std::memcpy(values + row * d * eb,
                    core::Advance(precision, c->block->rows, r * d), d * eb);
        norms[row] = c->block->sq_norms[r];
        if (key_dim) {
          std::memcpy(keys + row * key_dim * eb,
                      core::Advance(precision, c->block->keys, r * key_dim),
                      key_dim * eb);
          key_norms[row] = c->block->key_sq_norms[r];
        }
      }
    }
  });
}

Gathered::~Gathered() { ScratchPool::Give(std::move(scratch_)); }

}  // namespace engram::store
