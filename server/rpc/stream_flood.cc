#include "server/rpc/stream_flood.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpc/grpc.h"
#include "grpc/support/alloc.h"
#include "server/rpc/listener.h"

namespace engram::rpc {

namespace {

// What gRPC has read of a connection since its last progress; -1 if not
// known.
int64_t ReadSinceProgress(int64_t bytes_read, int64_t bytes_at_progress) {
  return bytes_read < 0 ? -1 : bytes_read - bytes_at_progress;
}

// The text of channelz's JSON (gRPC's own, compact and in a fixed form):
// the value after `"key":` at or after `from`, unquoted; empty if absent.
absl::string_view ValueOf(absl::string_view json, absl::string_view key,
                          size_t from = 0) {
  const std::string quoted = absl::StrCat("\"", key, "\":");
  const size_t at = json.find(quoted, from);
  if (at == absl::string_view::npos) return {};
  absl::string_view rest = json.substr(at + quoted.size());
  if (!rest.empty() && rest.front() == '"') {
    rest.remove_prefix(1);
    return rest.substr(0, rest.find('"'));
  }
  return rest.substr(0, rest.find_first_of(",}"));
}

int64_t NumberOf(absl::string_view json, absl::string_view key,
                 size_t from = 0) {
  int64_t value = 0;
  const absl::string_view text = ValueOf(json, key, from);
  if (text.empty() || !absl::SimpleAtoi(text, &value)) return 0;
  return value;
}

// Every "key":"N" in `json`, in order.
std::vector<int64_t> IdsOf(absl::string_view json, absl::string_view key) {
  std::vector<int64_t> ids;
  const std::string quoted = absl::StrCat("\"", key, "\":");
  for (size_t at = json.find(quoted); at != absl::string_view::npos;
       at = json.find(quoted, at + 1)) {
    ids.push_back(NumberOf(json, key, at));
  }
  return ids;
}

// Takes a string channelz allocated.
std::string Owned(char* text) {
  if (text == nullptr) return "";
  std::string out(text);
  gpr_free(text);
  return out;
}

}  // namespace

bool ParseChannelzSocket(absl::string_view json, SocketStreams* out) {
  if (json.find("\"socket\":") == absl::string_view::npos) return false;
  *out = SocketStreams();
  out->socket_id = NumberOf(json, "socketId");
  out->started = NumberOf(json, "streamsStarted");
  out->succeeded = NumberOf(json, "streamsSucceeded");
  out->failed = NumberOf(json, "streamsFailed");
  out->messages_received = NumberOf(json, "messagesReceived");
  const size_t remote = json.find("\"remote\":");
  if (remote != absl::string_view::npos &&
      json.find("\"tcpip_address\":", remote) != absl::string_view::npos) {
    std::string bytes;
    if (absl::Base64Unescape(ValueOf(json, "ip_address", remote), &bytes)) {
      out->remote_ip = std::move(bytes);
    }
    out->remote_port = static_cast<int>(NumberOf(json, "port", remote));
  }
  return out->socket_id > 0;
}

std::vector<SocketRef> ParseChannelzSocketRefs(absl::string_view json) {
  std::vector<SocketRef> refs;
  const absl::string_view key = "\"socketId\":";
  for (size_t at = json.find(key); at != absl::string_view::npos;
       at = json.find(key, at + 1)) {
    SocketRef ref;
    ref.socket_id = NumberOf(json, "socketId", at);
    // The name is in the same object, before or after the id.
    const size_t open = json.rfind('{', at);
    const size_t close = json.find('}', at);
    if (open == absl::string_view::npos || close == absl::string_view::npos) {
      continue;
    }
    const absl::string_view name =
        ValueOf(json.substr(open, close - open), "name");
    if (!ParsePeer(name, &ref.remote_ip, &ref.remote_port)) {
      ref.remote_ip.clear();
      ref.remote_port = 0;
    }
    if (ref.socket_id > 0) refs.push_back(std::move(ref));
  }
  return refs;
}

std::vector<SocketRef> ReadChannelzSocketRefs() {
  std::vector<SocketRef> out;
  for (int64_t server :
       IdsOf(Owned(grpc_channelz_get_servers(0)), "serverId")) {
    int64_t start = 0;
    while (true) {
      const std::string page =
          Owned(grpc_channelz_get_server_sockets(server, start, 1000));
      std::vector<SocketRef> refs = ParseChannelzSocketRefs(page);
      if (refs.empty()) break;
      start = refs.back().socket_id + 1;
      for (SocketRef& ref : refs) out.push_back(std::move(ref));
      if (page.find("\"end\":true") != std::string::npos) break;
    }
  }
  return out;
}

bool ReadChannelzSocket(int64_t socket_id, SocketStreams* out) {
  return ParseChannelzSocket(Owned(grpc_channelz_get_socket(socket_id)), out);
}

bool StreamFloodGuard::Floods(absl::Time now, const SocketStreams& s,
                              const Seen* seen) const {
  const int64_t open = s.started - s.succeeded - s.failed;
  if (limits_.max_open > 0 && open > 2 * limits_.max_open) return true;
  if (limits_.failed_per_second <= 0) return false;
  // New since the last look (a fraction of a second ago): more than a
  // second's worth of failures already is too many.
  if (seen == nullptr) return s.failed > limits_.failed_per_second;
  const absl::Duration elapsed = now - seen->since;
  return elapsed >= limits_.window &&
         static_cast<double>(s.failed - seen->failed) /
                 absl::ToDoubleSeconds(elapsed) >
             static_cast<double>(limits_.failed_per_second);
}

bool StreamFloodGuard::NeedsLook(absl::Time now, int64_t socket_id,
                                 int64_t bytes_read) const {
  if (limits_.failed_per_second > 0) return true;
  auto seen = seen_.find(socket_id);
  return seen == seen_.end() || bytes_read < 0 || !seen->second.quiet ||
         bytes_read != seen->second.bytes_read ||
         now - seen->second.looked >= limits_.recheck;
}

std::vector<SocketStreams> StreamFloodGuard::Observe(
    absl::Time now, const std::vector<SocketStreams>& read,
    const std::vector<int64_t>& unread) {
  std::vector<SocketStreams> cut;
  std::map<int64_t, Seen> seen;
  for (const SocketStreams& s : read) {
    auto was = seen_.find(s.socket_id);
    const Seen* before = was == seen_.end() ? nullptr : &was->second;
    if (Floods(now, s, before)) {
      cut.push_back(s);
      continue;
    }
    Seen& next = seen[s.socket_id];
    if (before != nullptr && now - before->since < limits_.window) {
      next = *before;  // Too soon for a rate: keep the start.
    } else {
      next.since = now;
      next.failed = s.failed;
    }
    next.quiet = before != nullptr && s.bytes_read >= 0 &&
                 s.bytes_read == before->bytes_read;
    next.looked = now;
    next.bytes_read = s.bytes_read;
    next.progress = s.messages_received + s.succeeded + s.failed;
    if (before != nullptr && before->progress == next.progress) {
      next.bytes_at_progress = before->bytes_at_progress;
    } else if (before != nullptr || next.progress > 0) {
      next.bytes_at_progress = std::max<int64_t>(s.bytes_read, 0);
    } else {
      next.bytes_at_progress = 0;  // None yet: all it sent came to nothing.
    }
    next.remote_ip = s.remote_ip;
    next.remote_port = s.remote_port;
  }
  for (int64_t id : unread) {
    auto was = seen_.find(id);
    if (was != seen_.end()) seen.insert(*was);
  }
  seen_ = std::move(seen);  // Sockets gone are forgotten.
  return cut;
}

std::vector<StreamFloodGuard::Heavy> StreamFloodGuard::Heaviest(
    int64_t min_bytes) const {
  std::vector<Heavy> heavy;
  for (const auto& [id, s] : seen_) {
    const int64_t bytes = ReadSinceProgress(s.bytes_read, s.bytes_at_progress);
    if (bytes < 0 || bytes < min_bytes) continue;
    heavy.push_back({SocketRef{id, s.remote_ip, s.remote_port}, bytes});
  }
  std::sort(heavy.begin(), heavy.end(),
            [](const Heavy& a, const Heavy& b) { return a.bytes > b.bytes; });
  return heavy;
}

bool StreamFloodGuard::AnyHeavier(int64_t min_bytes) const {
  for (const auto& [id, s] : seen_) {
    const int64_t bytes = ReadSinceProgress(s.bytes_read, s.bytes_at_progress);
    if (bytes >= 0 && bytes >= min_bytes) return true;
  }
  return false;
}

}  // namespace engram::rpc
