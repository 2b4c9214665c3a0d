#include "server/cluster/shard_pool.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace engram::cluster {

ShardPool::ShardPool(const ShardPoolOptions& options) : options_(options) {}

absl::StatusOr<std::unique_ptr<ShardPool>> ShardPool::Create(
    const Topology& topology, const ShardPoolOptions& options) {
  std::unique_ptr<ShardPool> pool(new ShardPool(options));
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      grpc::InsecureChannelCredentials();
  if (!options.tls_ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_ca;
    ssl.pem_cert_chain = options.tls_cert;
    ssl.pem_private_key = options.tls_key;
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8 << 20);
  pool->next_ = std::vector<std::atomic<uint32_t>>(topology.groups.size());
  {
    absl::MutexLock lock(&pool->mu_);
    for (size_t g = 0; g < topology.groups.size(); ++g) {
      pool->groups_.emplace_back();
      pool->status_.emplace_back();
      for (size_t r = 0; r < topology.groups[g].size(); ++r) {
        auto replica = std::make_unique<Replica>();
        replica->group = static_cast<uint32_t>(g);
        replica->index = static_cast<uint32_t>(r);
        replica->address = topology.groups[g][r];
        std::shared_ptr<grpc::Channel> channel =
            grpc::CreateCustomChannel(replica->address, credentials, args);
        replica->engram = engram::v1::Engram::NewStub(channel);
        replica->shard = v1::Shard::NewStub(channel);
        ReplicaStatus status;
        status.group = replica->group;
        status.address = replica->address;
        status.detail = "not probed yet";
        pool->status_.back().push_back(std::move(status));
        pool->groups_.back().push_back(std::move(replica));
      }
    }
  }
  if (absl::Status status = pool->Probe(); !status.ok()) return status;
  pool->prober_ = std::thread([p = pool.get()] { p->ProbeLoop(); });
  return pool;
}

ShardPool::~ShardPool() {
  {
    absl::MutexLock lock(&stop_mu_);
    stopping_ = true;
  }
  if (prober_.joinable()) prober_.join();
}

void ShardPool::Prepare(grpc::ClientContext& context,
                        absl::Time deadline) const {
  if (deadline != absl::InfiniteFuture()) {
    context.set_deadline(absl::ToChronoTime(deadline));
  }
  if (!options_.token.empty()) {
    context.AddMetadata("authorization", "Bearer " + options_.token);
  }
}

absl::Status ShardPool::Probe() {
  // Every replica at once: a slow one costs one timeout, not one each.
  struct Probed {
    grpc::ClientContext context;
    v1::DescribeRequest request;
    v1::ShardDescription response;
    grpc::Status status;
  };
  std::vector<std::unique_ptr<Probed>> probes;
  absl::Mutex done_mu;
  size_t left = 0;
  for (const auto& group : groups_) {
    for (const auto& replica : group) {
      auto p = std::make_unique<Probed>();
      Prepare(p->context, absl::Now() + options_.probe_timeout);
      ++left;
      replica->shard->async()->Describe(&p->context, &p->request, &p->response,
                                        [&, probe = p.get()](grpc::Status s) {
                                          absl::MutexLock lock(&done_mu);
                                          probe->status = std::move(s);
                                          --left;
                                        });
      probes.push_back(std::move(p));
    }
  }
  {
    absl::MutexLock lock(&done_mu);
    done_mu.Await(absl::Condition(
        +[](size_t* n) { return *n == 0; }, &left));
  }
  absl::Status wrong;
  size_t k = 0;
  absl::MutexLock lock(&mu_);
  for (const auto& group : groups_) {
    for (const auto& replica : group) {
      Probed& p = *probes[k++];
      ReplicaStatus& s = status_[replica->group][replica->index];
      s.ready = false;
      s.description = p.response;
      if (!p.status.ok()) {
        s.detail = absl::StrCat("unreachable: ", p.status.error_message());
        continue;
      }
      const v1::ShardDescription& d = p.response;
      if (d.cluster() != options_.cluster) {
        s.detail = absl::StrCat("answers for cluster '", d.cluster(),
                                "', not '", options_.cluster, "'");
      } else if (d.group() != replica->group || d.groups() != groups_.size()) {
        s.detail = absl::StrCat("is shard group ", d.group(), " of ",
                                d.groups(), "; the topology makes it group ",
                                replica->group, " of ", groups_.size());
      } else {
        s.ready = true;
        s.detail = absl::StrCat(d.stores_size(), " stores");
        continue;
      }
      if (wrong.ok()) {
        wrong = absl::FailedPreconditionError(
            absl::StrCat("shard ", replica->address, " ", s.detail,
                         " (--shards / --topology_file, --cluster)"));
      }
    }
  }
  return wrong;
}

void ShardPool::ProbeLoop() {
  absl::MutexLock lock(&stop_mu_);
  while (!stopping_) {
    stop_mu_.AwaitWithTimeout(absl::Condition(&stopping_),
                              options_.probe_interval);
    if (stopping_) return;
    stop_mu_.Unlock();
    Probe().IgnoreError();  // Readiness says what is wrong.
    stop_mu_.Lock();
  }
}

absl::Status ShardPool::Unavailable(uint32_t group) const {
  std::vector<std::string> why;
  for (const ReplicaStatus& s : status_[group]) {
    why.push_back(absl::StrCat(s.address, " ", s.detail));
  }
  return absl::UnavailableError(absl::StrCat("shard group ", group,
                                             " has no ready replica (",
                                             absl::StrJoin(why, "; "), ")"));
}

absl::StatusOr<const Replica*> ShardPool::Pick(uint32_t group) {
  const size_t n = groups_[group].size();
  const uint32_t start = next_[group].fetch_add(1, std::memory_order_relaxed);
  absl::ReaderMutexLock lock(&mu_);
  for (size_t k = 0; k < n; ++k) {
    const size_t r = (start + k) % n;
    if (status_[group][r].ready) return groups_[group][r].get();
  }
  return Unavailable(group);
}

absl::StatusOr<std::vector<const Replica*>> ShardPool::ReadyReplicas(
    uint32_t group) {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<const Replica*> ready;
  for (size_t r = 0; r < groups_[group].size(); ++r) {
    if (status_[group][r].ready) ready.push_back(groups_[group][r].get());
  }
  if (ready.empty()) return Unavailable(group);
  return ready;
}

absl::Status ShardPool::Ready() const {
  absl::ReaderMutexLock lock(&mu_);
  for (uint32_t g = 0; g < groups_.size(); ++g) {
    bool any = false;
    for (const ReplicaStatus& s : status_[g]) any = any || s.ready;
    if (!any) return Unavailable(g);
  }
  return absl::OkStatus();
}

std::vector<ReplicaStatus> ShardPool::Status() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<ReplicaStatus> all;
  for (const auto& group : status_) {
    all.insert(all.end(), group.begin(), group.end());
  }
  return all;
}

}  // namespace engram::cluster
