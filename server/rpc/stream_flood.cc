#include "server/rpc/stream_flood.h"

#include <cstdlib>
#include <string>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpc/grpc.h"
#include "grpc/support/alloc.h"

namespace engram::rpc {

namespace {

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

std::vector<SocketStreams> ReadChannelzSockets() {
  std::vector<SocketStreams> out;
  for (int64_t server :
       IdsOf(Owned(grpc_channelz_get_servers(0)), "serverId")) {
    int64_t start = 0;
    while (true) {
      const std::string page =
          Owned(grpc_channelz_get_server_sockets(server, start, 1000));
      const std::vector<int64_t> ids = IdsOf(page, "socketId");
      for (int64_t id : ids) {
        SocketStreams s;
        if (ParseChannelzSocket(Owned(grpc_channelz_get_socket(id)), &s)) {
          out.push_back(std::move(s));
        }
      }
      if (ids.empty() || page.find("\"end\":true") != std::string::npos) {
        break;
      }
      start = ids.back() + 1;
    }
  }
  return out;
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

std::vector<SocketStreams> StreamFloodGuard::Observe(
    absl::Time now, const std::vector<SocketStreams>& sockets) {
  std::vector<SocketStreams> cut;
  std::map<int64_t, Seen> seen;
  for (const SocketStreams& s : sockets) {
    auto was = seen_.find(s.socket_id);
    const Seen* before = was == seen_.end() ? nullptr : &was->second;
    if (Floods(now, s, before)) {
      cut.push_back(s);
    } else if (before != nullptr && now - before->since < limits_.window) {
      seen[s.socket_id] = *before;  // Too soon for a rate: keep the start.
    } else {
      seen[s.socket_id] = {now, s.failed};
    }
  }
  seen_ = std::move(seen);  // Sockets gone are forgotten.
  return cut;
}

}  // namespace engram::rpc
