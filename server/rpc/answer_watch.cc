#include "server/rpc/answer_watch.h"

#include <algorithm>
#include <utility>

namespace engram::rpc {

void AnswerWatch::Begin(const void* call, absl::string_view peer,
                        absl::Time now) {
  MutexLock lock(&mu_);
  answers_[call] = {std::string(peer), now};
}

void AnswerWatch::End(const void* call) {
  MutexLock lock(&mu_);
  answers_.erase(call);
}

size_t AnswerWatch::sending() const {
  MutexLock lock(&mu_);
  return answers_.size();
}

std::vector<AnswerWatch::Stalled> AnswerWatch::Look(
    absl::Time now, const Listener::BytesByPeer& bytes) {
  // Answers that have waited `settle`, by connection.
  absl::flat_hash_map<std::string, int> waiting;
  int total = 0;
  {
    MutexLock lock(&mu_);
    for (const auto& [call, answer] : answers_) {
      if (now - answer.since < options_.settle) continue;
      ++waiting[answer.peer];
      ++total;
    }
  }
  const bool hurried =
      total >= options_.pressure ||
      (options_.threads > 0 && options_.held &&
       options_.threads - options_.held() - total < options_.min_free);
  // Under pressure a connection with one answer waiting counts too: many
  // connections with one each hold the threads as well as one with many.
  const int min_waiting = hurried ? 1 : options_.min_waiting;
  std::vector<Stalled> stalled;
  for (auto it = watched_.begin(); it != watched_.end();) {
    auto found = waiting.find(it->first);
    if (found == waiting.end() || found->second < min_waiting) {
      watched_.erase(it++);
    } else {
      ++it;
    }
  }
  if (options_.patience <= absl::ZeroDuration()) return stalled;
  for (const auto& [peer, count] : waiting) {
    if (count < min_waiting) continue;
    Stalled s;
    if (!ParsePeer(peer, &s.ip, &s.port)) continue;  // Not TCP.
    s.ip = Unmapped(s.ip);
    auto at = bytes.find({s.ip, s.port});
    if (at == bytes.end()) continue;
    const int64_t taken = at->second.taken;
    auto [w, added] = watched_.try_emplace(peer, Watched{now, taken});
    if (added) continue;
    if (taken - w->second.taken >= options_.min_taken) {
      w->second = {now, taken};  // It reads: watched afresh.
      continue;
    }
    s.waiting = count;
    s.taken = taken - w->second.taken;
    s.for_ = now - w->second.since;
    s.hurried = hurried && s.for_ < options_.patience;
    if (s.for_ >= (hurried ? std::min(options_.hurry, options_.patience)
                           : options_.patience)) {
      watched_.erase(w);
      stalled.push_back(std::move(s));
    }
  }
  return stalled;
}

}  // namespace engram::rpc
