#include "server/store/filter_index.h"

#include <algorithm>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "server/base/clip.h"
#include "server/store/internal/little_endian.h"

namespace engram::store {

namespace {

constexpr size_t kMaxFilterLabels = 1000;
constexpr size_t kMaxFilterConditions = 64;

std::vector<uint32_t> Union(const std::vector<uint32_t>& a,
                            const std::vector<uint32_t>& b) {
  std::vector<uint32_t> out;
  out.reserve(a.size() + b.size());
  std::set_union(a.begin(), a.end(), b.begin(), b.end(),
                 std::back_inserter(out));
  return out;
}

std::vector<uint32_t> Intersection(const std::vector<uint32_t>& a,
                                   const std::vector<uint32_t>& b) {
  std::vector<uint32_t> out;
  out.reserve(std::min(a.size(), b.size()));
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(),
                        std::back_inserter(out));
  return out;
}

}  // namespace

absl::Status ValidateFilter(const Filter& filter, const Limits& limits) {
  if (filter.labels.size() > kMaxFilterLabels) {
    return absl::InvalidArgumentError(
        absl::StrCat("filter.labels holds ", filter.labels.size(),
                     " labels; at most ", kMaxFilterLabels));
  }
  if (filter.conditions.size() > kMaxFilterConditions) {
    return absl::InvalidArgumentError(
        absl::StrCat("filter.metadata holds ", filter.conditions.size(),
                     " conditions; at most ", kMaxFilterConditions));
  }
  for (size_t i = 0; i < filter.labels.size(); ++i) {
    if (filter.labels[i].size() > limits.max_label_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("filter.labels[", i, "] is ", filter.labels[i].size(),
                       " bytes; labels are at most ", limits.max_label_bytes));
    }
  }
  for (size_t i = 0; i < filter.conditions.size(); ++i) {
    const auto& [key, value] = filter.conditions[i];
    if (key.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("filter.metadata[", i, "].key must not be empty"));
    }
    if (key.size() > limits.max_metadata_bytes ||
        value.size() > limits.max_metadata_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("filter.metadata[", i, "] ('", Clip(key),
                       "'): keys and values are at most ",
                       limits.max_metadata_bytes, " bytes"));
    }
  }
  return absl::OkStatus();
}

std::string FilterIndex::LabelTerm(const std::string& label) {
  return absl::StrCat("l", label);
}

std::string FilterIndex::EntryTerm(const std::string& key,
                                   const std::string& value) {
  std::string term = "m";
  internal::PutFixed32(term, static_cast<uint32_t>(key.size()));
  return absl::StrCat(term, key, value);
}

absl::Status FilterIndex::Extend(size_t rows, Labels label, Entries metadata,
                                 const std::function<absl::Status()>& check) {
  // Rows between two checks: a few milliseconds of work at most.
  constexpr size_t kBlock = size_t{1} << 14;
  while (rows_ < rows) {
    if (check) {
      if (absl::Status status = check(); !status.ok()) return status;
    }
    const size_t end = std::min(rows, rows_ + kBlock);
    for (size_t g = rows_; g < end; ++g) {
      const auto row = static_cast<uint32_t>(g);
      terms_[LabelTerm(label(g))].push_back(row);
      for (const auto& [key, value] : metadata(g)) {
        terms_[EntryTerm(key, value)].push_back(row);
      }
    }
    rows_ = end;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint32_t>> FilterIndex::Match(
    const Filter& filter, size_t rows, Labels label, Entries metadata,
    const std::function<absl::Status()>& check) {
  {
    ReaderMutexLock lock(&mu_);
    if (rows_ >= rows) return MatchIndexed(filter, rows);
  }
  MutexLock lock(&mu_);
  if (absl::Status status = Extend(rows, label, metadata, check);
      !status.ok()) {
    return status;
  }
  return MatchIndexed(filter, rows);
}

FilterIndex::Postings FilterIndex::Read(const std::string& term,
                                        size_t rows) const {
  auto found = terms_.find(term);
  if (found == terms_.end()) return {};
  const Postings& all = found->second;
  // Rows appended after the reader's view are past its count.
  auto end = std::lower_bound(all.begin(), all.end(), rows);
  return Postings(all.begin(), end);
}

std::vector<uint32_t> FilterIndex::MatchIndexed(const Filter& filter,
                                                size_t rows) const {
  // Merged pairwise, O(matches x log labels), or through a bitmap when
  // they are many and dense; a label named twice is read once.
  std::vector<std::string> labels = filter.labels;
  std::sort(labels.begin(), labels.end());
  labels.erase(std::unique(labels.begin(), labels.end()), labels.end());
  std::vector<Postings> lists;
  for (const std::string& label : labels) {
    lists.push_back(Read(LabelTerm(label), rows));
  }
  // Many lists covering much of the view: one bitmap of the rows instead of
  // merges (each merge pass reads and writes every match again).
  size_t total = 0;
  for (const Postings& list : lists) total += list.size();
  if (lists.size() > 2 && total * 8 >= rows) {
    std::vector<uint64_t> bits((rows + 63) / 64);
    for (const Postings& list : lists) {
      for (uint32_t r : list) bits[r >> 6] |= uint64_t{1} << (r & 63);
    }
    Postings all;
    all.reserve(std::min(total, rows));
    for (size_t w = 0; w < bits.size(); ++w) {
      for (uint64_t word = bits[w]; word != 0; word &= word - 1) {
        all.push_back(static_cast<uint32_t>(w * 64 + __builtin_ctzll(word)));
      }
    }
    lists.assign(1, std::move(all));
  }
  while (lists.size() > 1) {
    std::vector<Postings> merged;
    for (size_t i = 0; i + 1 < lists.size(); i += 2) {
      merged.push_back(Union(lists[i], lists[i + 1]));
    }
    if (lists.size() % 2 == 1) merged.push_back(std::move(lists.back()));
    lists = std::move(merged);
  }
  std::vector<uint32_t> by_label =
      lists.empty() ? std::vector<uint32_t>() : std::move(lists[0]);
  if (filter.conditions.empty()) return by_label;
  std::vector<uint32_t> by_metadata;
  for (size_t i = 0; i < filter.conditions.size(); ++i) {
    const auto& [key, value] = filter.conditions[i];
    Postings rows_of = Read(EntryTerm(key, value), rows);
    if (i == 0) {
      by_metadata = std::move(rows_of);
    } else if (filter.any) {
      by_metadata = Union(by_metadata, rows_of);
    } else {
      by_metadata = Intersection(by_metadata, rows_of);
    }
  }
  if (filter.labels.empty()) return by_metadata;
  return Intersection(by_label, by_metadata);
}

}  // namespace engram::store
