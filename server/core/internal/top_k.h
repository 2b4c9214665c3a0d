// The best k of a stream of scored memories, with one order for every
// retrieval path: the higher score first, and of equal scores the lower
// memory index. So equal scores come out in the same order whichever path
// (exact, low-rank, one thread or several) found them.
//
//   TopK top(5);
//   for (size_t j = 0; j < n; ++j) {
//     if (scores[j] >= top.threshold()) top.Push(scores[j], first + j);
//   }
//   std::vector<TopK::Entry> best = top.Sorted();
//
// Internal to server/core. Thread-compatible.
#ifndef ENGRAM_SERVER_CORE_INTERNAL_TOP_K_H_
#define ENGRAM_SERVER_CORE_INTERNAL_TOP_K_H_

#include <algorithm>
#include <cstddef>
#include <limits>
#include <vector>

namespace engram::core::internal {

class TopK {
 public:
  struct Entry {
    float score = 0;
    size_t index = 0;
  };

  explicit TopK(size_t k = 0) : k_(k) {}

  // Scores below this cannot enter (-inf until k are held, +inf for k = 0);
  // a score equal to it may, if its index is lower.
  float threshold() const {
    if (k_ == 0) return std::numeric_limits<float>::infinity();
    return heap_.size() < k_ ? -std::numeric_limits<float>::infinity()
                             : heap_.front().score;
  }

  void Push(float score, size_t index) {
    const Entry entry{score, index};
    if (heap_.size() < k_) {
      heap_.push_back(entry);
      std::push_heap(heap_.begin(), heap_.end(), Better);
    } else if (k_ > 0 && Better(entry, heap_.front())) {
      std::pop_heap(heap_.begin(), heap_.end(), Better);
      heap_.back() = entry;
      std::push_heap(heap_.begin(), heap_.end(), Better);
    }
  }

  // Folds in another stream's best (of the same k).
  void Merge(const TopK& other) {
    for (const Entry& entry : other.heap_) Push(entry.score, entry.index);
  }

  // Best first.
  std::vector<Entry> Sorted() const {
    std::vector<Entry> sorted = heap_;
    std::sort(sorted.begin(), sorted.end(), Better);
    return sorted;
  }

  // The one order of matches: higher score first, then the lower index.
  static bool Better(const Entry& a, const Entry& b) {
    return a.score > b.score || (a.score == b.score && a.index < b.index);
  }

 private:
  // The heap keeps the worst of the best at its front.

  size_t k_;
  std::vector<Entry> heap_;
};

}  // namespace engram::core::internal

#endif  // ENGRAM_SERVER_CORE_INTERNAL_TOP_K_H_
