// The one way engram opens a gRPC channel to an engramd, for the client
// library and for a router's connections to its shards alike: message-size
// limits, an 8 MiB stream window from the start (large answers, as the
// server sets), plaintext or (mutual) TLS, and keepalive when asked.
//
//   ChannelOptions options;
//   options.address = "127.0.0.1:50051";
//   options.tls_ca = ca_pem;  // Empty: plaintext.
//   absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
//       NewChannel(options);
//
// Thread-safe: a function of its arguments.
#ifndef ENGRAM_CLIENT_CHANNEL_H_
#define ENGRAM_CLIENT_CHANNEL_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/security/tls_certificate_provider.h"

namespace engram::client {

struct ChannelOptions {
  std::string address;
  // The largest message sent or received.
  size_t max_message_bytes = size_t{256} << 20;
  // TLS: the CA that signed the server's certificate (PEM text); empty
  // means plaintext. With mutual TLS also this side's certificate and key.
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  // Expected server name when it differs from the address's host.
  std::string tls_server_name;
  // Instead of tls_ca, tls_cert and tls_key: certificates a provider keeps
  // current while the channel lives (rotated files); this side presents
  // its identity's (mutual TLS) if `tls_provider_identity`.
  std::shared_ptr<grpc::experimental::CertificateProviderInterface>
      tls_provider;
  bool tls_provider_identity = false;
  // Keepalive: a ping every `keepalive` (zero: none, gRPC's default), and
  // the connection closed, its calls failing UNAVAILABLE, when one goes
  // unanswered for `keepalive_timeout` (also the longest sent data may stay
  // unacknowledged). How a silent peer — a partition, a host gone without
  // a reset — is found in seconds instead of when TCP gives up, minutes
  // later. The server must take pings this often (engramd takes one every
  // 500 ms).
  absl::Duration keepalive = absl::ZeroDuration();
  absl::Duration keepalive_timeout = absl::Seconds(20);
  // The longest wait between attempts to connect again (zero: gRPC's two
  // minutes), so that a peer back from a long absence is reached soon.
  absl::Duration max_reconnect_backoff = absl::ZeroDuration();
};

absl::StatusOr<std::shared_ptr<grpc::Channel>> NewChannel(
    const ChannelOptions& options);

}  // namespace engram::client

#endif  // ENGRAM_CLIENT_CHANNEL_H_
