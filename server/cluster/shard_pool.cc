#include "server/cluster/shard_pool.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/channel.h"
#include "server/base/file_text.h"
#include "server/base/log.h"
#include "server/base/steady_clock.h"
#include "server/cluster/shard_calls.h"
#include "server/rpc/call.h"

namespace engram::cluster {

ShardPool::ShardPool(const ShardPoolOptions& options)
    : options_(options),
      credentials_(rpc::StateOrNew(options.credential_state)) {}

namespace {

// --shard_token_file: one token, 16+ characters, surrounding blanks cut.
absl::StatusOr<std::string> ReadShardToken(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileText(path, size_t{1} << 20);
  if (!text.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shard_token_file: ", text.status().message()));
  }
  const std::string token(absl::StripAsciiWhitespace(*text));
  if (token.size() < 16 || absl::StrContains(token, '\n')) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--shard_token_file=", path, ": expected one token of 16+ characters"));
  }
  return token;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShardPool>> ShardPool::Create(
    const Topology& topology, const ShardPoolOptions& options) {
  std::unique_ptr<ShardPool> pool(new ShardPool(options));
  client::ChannelOptions channel_options;
  channel_options.max_message_bytes = options.max_message_bytes;
  channel_options.keepalive = options.keepalive;
  channel_options.keepalive_timeout = options.probe_timeout;
  // Back from a partition: connected again within a probe or so.
  channel_options.max_reconnect_backoff = options.probe_timeout;
  if (!options.tls_ca_file.empty() || !options.tls_cert_file.empty()) {
    if (options.tls_ca_file.empty()) {
      return absl::InvalidArgumentError(
          "--shard_tls_cert needs --shard_tls_ca (TLS to the shards)");
    }
    rpc::TlsPaths paths;
    paths.cert = options.tls_cert_file;
    paths.key = options.tls_key_file;
    paths.ca = options.tls_ca_file;
    paths.cert_flag = "--shard_tls_cert";
    paths.key_flag = "--shard_tls_key";
    paths.ca_flag = "--shard_tls_ca";
    absl::StatusOr<std::unique_ptr<rpc::TlsFiles>> tls =
        rpc::TlsFiles::Open(std::move(paths));
    if (!tls.ok()) return tls.status();
    pool->tls_ = *std::move(tls);
    pool->credentials_->certificate_expiry =
        static_cast<double>(pool->tls_->expiry());
    channel_options.tls_provider = pool->tls_->Provider();
    channel_options.tls_provider_identity =
        !pool->tls_->identity_path().empty();
  }
  if (!options.token_file.empty()) {
    absl::StatusOr<FileBacked<std::string>> token =
        FileBacked<std::string>::Load(options.token_file, &ReadShardToken);
    if (!token.ok()) return token.status();
    pool->token_.emplace(*std::move(token));
  }
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
        channel_options.address = replica->address;
        absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
            client::NewChannel(channel_options);
        if (!channel.ok()) return channel.status();
        replica->engram = engram::v1::Engram::NewStub(*channel);
        replica->shard = v1::Shard::NewStub(*channel);
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
  // The files were just read.
  pool->next_reload_ =
      SteadyNow() + std::max(options.credentials_refresh, absl::Seconds(1));
  pool->prober_ = std::thread([p = pool.get()] { p->ProbeLoop(); });
  return pool;
}

ShardPool::~ShardPool() {
  {
    MutexLock lock(&stop_mu_);
    stopping_ = true;
    stop_cv_.SignalAll();
  }
  cutter_.Stop();
  if (prober_.joinable()) prober_.join();
}

void ShardPool::Prepare(grpc::ClientContext& context, absl::Time deadline,
                        bool stamped) const {
  if (deadline != absl::InfiniteFuture()) {
    context.set_deadline(absl::ToChronoTime(deadline));
  }
  if (token_.has_value()) {
    context.AddMetadata("authorization", "Bearer " + *token_->get());
  }
  if (!stamped) return;
  uint64_t last = last_stamp_.load();
  uint64_t stamp;
  do {
    stamp = std::max<uint64_t>(last + 1, absl::ToUnixNanos(absl::Now()));
  } while (!last_stamp_.compare_exchange_weak(last, stamp));
  context.AddMetadata(kStampHeader, absl::StrCat(stamp));
}

absl::StatusOr<std::shared_ptr<grpc::ClientContext>> ShardPool::WatchedContext(
    absl::Time deadline, bool stamped) const {
  auto context = std::make_shared<grpc::ClientContext>();
  Prepare(*context, deadline, stamped);
  if (!cutter_.Watch(context)) {
    return absl::CancelledError("the router is stopping");
  }
  return context;
}

absl::Status ShardPool::Probe() {
  // Every replica at once: a slow one costs one timeout, not one each.
  struct Probed {
    std::shared_ptr<grpc::ClientContext> context =
        std::make_shared<grpc::ClientContext>();
    v1::DescribeRequest request;
    v1::ShardDescription response;
    grpc::Status status;
  };
  std::vector<std::unique_ptr<Probed>> probes;
  Mutex done_mu;
  CondVar done_cv;
  size_t left = 0;
  for (const auto& group : groups_) {
    for (const auto& replica : group) {
      auto p = std::make_unique<Probed>();
      Prepare(*p->context, absl::Now() + options_.probe_timeout);
      ++left;
      // gRPC's deadline ends a probe that gets no answer, on a timer thread
      // a wall clock set back can hold (call_cutter.h): it held every probe
      // of a stopped shard, and a router noticed nothing for as long as the
      // step. The cutter ends it by the steady clock.
      cutter_.Watch(p->context);  // Else cancelled: the pool is stopping.
      replica->shard->async()->Describe(
          p->context.get(), &p->request, &p->response,
          [&, probe = p.get()](grpc::Status s) {
            s = cutter_.Unwatch(probe->context.get(), std::move(s));
            MutexLock lock(&done_mu);
            probe->status = std::move(s);
            --left;
            done_cv.SignalAll();
          });
      probes.push_back(std::move(p));
    }
  }
  {
    MutexLock lock(&done_mu);
    while (left > 0) done_cv.Wait(&done_mu);
  }
  absl::Status wrong;
  size_t k = 0;
  absl::MutexLock lock(&mu_);
  for (const auto& group : groups_) {
    for (const auto& replica : group) {
      Probed& p = *probes[k++];
      ReplicaStatus& s = status_[replica->group][replica->index];
      const bool first = !s.probed, was_reachable = s.reachable;
      s.probed = true;
      s.reachable = false;
      s.description = p.response;
      const v1::ShardDescription& d = p.response;
      if (!p.status.ok()) {
        s.detail = absl::StrCat("unreachable: ", p.status.error_message());
      } else if (d.cluster() != options_.cluster) {
        s.detail = absl::StrCat("answers for cluster '", d.cluster(),
                                "', not '", options_.cluster, "'");
      } else if (d.group() != replica->group || d.groups() != groups_.size()) {
        s.detail = absl::StrCat("is shard group ", d.group(), " of ",
                                d.groups(), "; the topology makes it group ",
                                replica->group, " of ", groups_.size());
      } else {
        s.reachable = true;
        // Back after being unreachable: it may have missed writes.
        if (!first && !was_reachable && groups_[replica->group].size() > 1) {
          s.stale = true;
        }
        s.detail = s.stale ? "stale: being repaired from a ready replica"
                           : absl::StrCat(d.stores_size(), " stores");
      }
      SetReady(s);
      if (p.status.ok() && !s.reachable && wrong.ok()) {
        wrong = absl::FailedPreconditionError(
            absl::StrCat("shard ", replica->address, " ", s.detail,
                         " (--shards / --topology_file, --cluster)"));
      }
    }
  }
  CheckAgreement();
  first_probe_done_ = true;
  if (options_.metrics != nullptr) {
    size_t ready = 0, total = 0;
    for (const auto& group : status_) {
      for (const ReplicaStatus& s : group) {
        ready += s.ready;
        ++total;
      }
    }
    options_.metrics->SetShardReplicas(ready, total - ready);
  }
  return wrong;
}

void ShardPool::Record(const Replica& replica, absl::string_view method,
                       const grpc::Status& status, absl::Duration took,
                       size_t bytes_sent, size_t bytes_received) const {
  if (options_.metrics == nullptr) return;
  options_.metrics->RecordShardCall(
      replica.address, method,
      rpc::CodeName(static_cast<absl::StatusCode>(status.error_code())),
      absl::ToDoubleSeconds(took), bytes_sent, bytes_received);
}

void ShardPool::SetReady(ReplicaStatus& s) {
  s.ready = s.reachable && !s.stale;
}

namespace {

// What a replica holds, store by store: its content and settings digests.
std::map<std::string, std::pair<uint64_t, uint64_t>> Holdings(
    const v1::ShardDescription& d) {
  std::map<std::string, std::pair<uint64_t, uint64_t>> out;
  for (const v1::StoreState& s : d.stores()) {
    // Content, and settings with the map (replicas converge on the newest).
    out[s.name()] = {s.digest(), s.settings_digest() * 31 + s.map_version()};
  }
  return out;
}

// The latest write stamp of any store a replica holds.
uint64_t LatestStamp(const v1::ShardDescription& d) {
  uint64_t latest = 0;
  for (const v1::StoreState& s : d.stores()) {
    latest = std::max(latest, s.stamp());
  }
  return latest;
}

// A hash of holdings: equal holdings, equal signatures.
uint64_t Signature(
    const std::map<std::string, std::pair<uint64_t, uint64_t>>& held) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const auto& [name, digests] : held) {
    for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ULL;
    h = (h ^ digests.first) * 0x100000001b3ULL;
    h = (h ^ digests.second) * 0x100000001b3ULL;
  }
  return h;
}

// The first store on which two holdings differ, for messages; "" if none.
std::string FirstDifference(
    const std::map<std::string, std::pair<uint64_t, uint64_t>>& a,
    const std::map<std::string, std::pair<uint64_t, uint64_t>>& b) {
  for (const auto& [name, digests] : a) {
    auto found = b.find(name);
    if (found == b.end()) return absl::StrCat("store '", name, "' missing");
    if (found->second != digests) {
      return absl::StrCat("store '", name, "' differs");
    }
  }
  for (const auto& [name, digests] : b) {
    if (!a.count(name)) return absl::StrCat("store '", name, "' extra");
  }
  return "";
}

// Every replica of a group answers and is stale (all were away at once, a
// blip of the router's own network, or each marked): none would ever be
// repaired. A stale replica takes no write, so the one that took the latest
// write holds every write the group acknowledged: as at the router's start,
// it serves and the others are repaired from it. Null while any replica is
// unreachable (it may hold writes the others lack).
ReplicaStatus* ServeLatest(std::vector<ReplicaStatus>& replicas) {
  ReplicaStatus* latest = nullptr;
  for (ReplicaStatus& s : replicas) {
    if (!s.reachable) return nullptr;
    if (latest == nullptr ||
        LatestStamp(s.description) > LatestStamp(latest->description)) {
      latest = &s;
    }
  }
  if (latest == nullptr) return nullptr;
  latest->stale = false;
  latest->mismatches = 0;
  latest->detail =
      absl::StrCat(latest->description.stores_size(),
                   " stores; serves again (its group's replicas were all "
                   "stale, and it took the latest write)");
  Log(LogLevel::kWarning,
      "every replica of shard group %u was stale: %s, which took the latest "
      "write, serves again and the others are repaired from it",
      latest->group, latest->address);
  return latest;
}

}  // namespace

void ShardPool::CheckAgreement() {
  for (size_t g = 0; g < groups_.size(); ++g) {
    std::vector<ReplicaStatus>& replicas = status_[g];
    // The source: the first replica that serves; at the router's start,
    // the one that took the latest write (the largest stamp), the first of
    // those on a tie.
    ReplicaStatus* source = nullptr;
    for (ReplicaStatus& s : replicas) {
      if (!s.reachable || s.stale) continue;
      if (source == nullptr ||
          (!first_probe_done_ &&
           LatestStamp(s.description) > LatestStamp(source->description))) {
        source = &s;
      }
    }
    if (source == nullptr) source = ServeLatest(replicas);
    if (source == nullptr) continue;
    const auto held = Holdings(source->description);
    for (ReplicaStatus& s : replicas) {
      if (&s == source || !s.reachable || s.stale) continue;
      const std::string difference =
          FirstDifference(held, Holdings(s.description));
      if (difference.empty()) {
        s.mismatches = 0;
      } else if (!first_probe_done_) {
        // At start the replica with the latest write is the source: the
        // others missed writes (down while their peers took them) or took
        // one fewer (a router stopped during a write, never acknowledged).
        // An empty replica (new, or wiped) is always the one repaired.
        ReplicaStatus& behind =
            source->description.stores_size() == 0 ? *source : s;
        behind.stale = true;
        behind.detail = absl::StrCat("stale (", difference,
                                     " at router start): being repaired");
      } else {
        // Writes in flight make replicas differ for a moment, and change
        // the holdings; differing the same way three probes running, with
        // no write between, the one that is not the source is behind.
        const uint64_t signature =
            Signature(held) * 31 + Signature(Holdings(s.description));
        s.mismatches = signature == s.mismatch_signature ? s.mismatches + 1 : 1;
        s.mismatch_signature = signature;
        if (s.mismatches >= 3) {
          s.stale = true;
          s.mismatches = 0;
          s.detail = absl::StrCat("stale (", difference, " from ",
                                  source->address, "): being repaired");
        }
      }
    }
    for (ReplicaStatus& s : replicas) SetReady(s);
  }
}

void ShardPool::MarkStale(const Replica& replica, absl::string_view why) {
  absl::MutexLock lock(&mu_);
  ReplicaStatus& s = status_[replica.group][replica.index];
  s.stale = true;
  s.detail = absl::StrCat("stale (", why, "): being repaired");
  SetReady(s);
}

void ShardPool::MarkUnreachable(const Replica& replica, absl::string_view why) {
  absl::MutexLock lock(&mu_);
  ReplicaStatus& s = status_[replica.group][replica.index];
  // Alone in its group it is the only one to ask again; the probe decides.
  if (!s.reachable || groups_[replica.group].size() < 2) return;
  s.reachable = false;
  s.detail = absl::StrCat("unreachable (", why, ")");
  SetReady(s);
}

bool ShardPool::ReadCredentialsAgain() {
  if (!token_.has_value() && tls_ == nullptr) return false;
  reread_ = true;
  return true;
}

void ShardPool::ReloadCredentials() {
  const absl::Time now = SteadyNow();
  const bool asked = reread_.exchange(false);
  if (now < next_reload_ && !asked) return;
  next_reload_ = now + std::max(options_.credentials_refresh, absl::Seconds(1));
  rpc::CredentialState& state = *credentials_;
  if (token_.has_value()) {
    rpc::Report(token_->Reload(),
                absl::StrCat("--shard_token_file=", options_.token_file),
                "the token sent to the shards", state.token_file_failed);
  }
  if (tls_ != nullptr) {
    const absl::StatusOr<bool> reloaded = tls_->Reload();
    if (rpc::Report(
            reloaded, "TLS files to the shards",
            tls_->describe().empty() ? "their CA bundle" : tls_->describe(),
            state.tls_files_failed)) {
      state.certificate_expiry = static_cast<double>(tls_->expiry());
    }
  }
}

void ShardPool::ProbeLoop() {
  MutexLock lock(&stop_mu_);
  while (!stopping_) {
    if (stop_cv_.AwaitWithTimeout(
            &stop_mu_,
            [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(stop_mu_) { return stopping_; },
            options_.probe_interval)) {
      return;
    }
    stop_mu_.Unlock();
    ReloadCredentials();
    Probe().IgnoreError();  // Readiness says what is wrong.
    RepairStale();
    stop_mu_.Lock();
  }
}

void ShardPool::RepairStale() {
  for (const auto& group : groups_) {
    for (const auto& target : group) {
      const Replica* source = nullptr;
      {
        absl::ReaderMutexLock lock(&mu_);
        const ReplicaStatus& t = status_[target->group][target->index];
        if (!t.stale || !t.reachable) continue;
        for (const auto& candidate : group) {
          if (status_[candidate->group][candidate->index].ready) {
            source = candidate.get();
            break;
          }
        }
      }
      if (source == nullptr) continue;  // Nobody to repair from yet.
      const absl::Status repaired = Repair(*source, *target);
      if (repaired.ok()) continue;  // Marked ready by FinishRepair.
      absl::MutexLock lock(&mu_);
      ReplicaStatus& t = status_[target->group][target->index];
      t.detail = absl::StrCat("stale; repair from ", source->address,
                              " failed: ", repaired.message());
      Log(LogLevel::kWarning, "replica %s of shard group %u: %s",
          target->address, target->group, t.detail);
    }
  }
}

namespace {

template <typename Request, typename Response>
absl::Status Call(const ShardPool& pool, const Replica& replica,
                  grpc::Status (engram::v1::Engram::Stub::*method)(
                      grpc::ClientContext*, const Request&, Response*),
                  const Request& request, Response* response) {
  // Unstamped: a repair's writes are copies, not client writes.
  return Unary(pool, replica, *replica.engram, method, request, response,
               absl::Now() + absl::Seconds(60), /*stamped=*/false);
}

// Fits only go forward: whichever of the two replicas holds the newer map
// of `store` gives it to the other.
absl::Status SyncMaps(const ShardPool& pool, const Replica& a, const Replica& b,
                      const std::string& store) {
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  v1::GetFeatureMapRequest get;
  get.set_store(store);
  v1::FeatureMapRecord maps[2];
  const Replica* replicas[2] = {&a, &b};
  for (int i = 0; i < 2; ++i) {
    absl::Status s = Unary(pool, *replicas[i], *replicas[i]->shard,
                           &v1::Shard::Stub::GetFeatureMap, get, &maps[i],
                           deadline, /*stamped=*/false);
    if (!s.ok() && !absl::IsNotFound(s)) return s;
  }
  if (maps[0].version() == maps[1].version()) return absl::OkStatus();
  const int newer = maps[0].version() > maps[1].version() ? 0 : 1;
  const Replica& behind = *replicas[1 - newer];
  v1::PutFeatureMapResponse put;
  return Unary(pool, behind, *behind.shard, &v1::Shard::Stub::PutFeatureMap,
               maps[newer], &put, deadline, /*stamped=*/false);
}

// What a replica's content digest sees of a pattern: its values (as bytes),
// label and metadata; not its expiry, which each replica computed at its own
// add.
uint64_t ContentHash(const engram::v1::Pattern& p) {
  const absl::string_view values(
      reinterpret_cast<const char*>(p.values().data()),
      sizeof(float) * static_cast<size_t>(p.values_size()));
  std::vector<std::pair<std::string, std::string>> metadata(
      p.metadata().begin(), p.metadata().end());
  std::sort(metadata.begin(), metadata.end());
  return absl::HashOf(values, p.label(), metadata);
}

// Every pattern of a store on a replica: id -> ContentHash.
absl::StatusOr<std::map<uint64_t, uint64_t>> Contents(
    const ShardPool& pool, const Replica& replica, const std::string& store) {
  std::map<uint64_t, uint64_t> contents;
  engram::v1::ListPatternsRequest request;
  request.set_store(store);
  request.set_page_size(1000);
  do {
    engram::v1::ListPatternsResponse page;
    if (absl::Status s =
            Call(pool, replica, &engram::v1::Engram::Stub::ListPatterns,
                 request, &page);
        !s.ok()) {
      return s;
    }
    for (const engram::v1::Pattern& p : page.patterns()) {
      contents[p.id()] = ContentHash(p);
    }
    request.set_page_token(page.next_page_token());
  } while (!request.page_token().empty());
  return contents;
}

// Makes the target's copy of the store `mine` (as the source lists it;
// `held`: the target has one) equal to the source's: settings, patterns
// (copying what it lacks, deleting what the source no longer holds), map.
absl::Status CopyStore(const ShardPool& pool, const Replica& source,
                       const Replica& target, const engram::v1::Store& mine,
                       bool held) {
  namespace api = engram::v1;
  api::Store settings = mine;
  settings.clear_pattern_count();
  if (!held) {
    api::CreateStoreRequest create;
    *create.mutable_store() = settings;
    api::Store created;
    if (absl::Status s = Call(pool, target, &api::Engram::Stub::CreateStore,
                              create, &created);
        !s.ok()) {
      return s;
    }
  } else {
    api::UpdateStoreRequest update;
    *update.mutable_store() = settings;
    for (const char* path : {"retrieval", "low_rank", "calibration"}) {
      update.mutable_update_mask()->add_paths(path);
    }
    api::Store updated;
    if (absl::Status s = Call(pool, target, &api::Engram::Stub::UpdateStore,
                              update, &updated);
        !s.ok()) {
      return s;
    }
  }
  absl::StatusOr<std::map<uint64_t, uint64_t>> have =
      Contents(pool, target, mine.name());
  if (!have.ok()) return have.status();
  // The source's patterns the target lacks or holds otherwise (an id
  // deleted and added again while it was down), a page at a time.
  api::ListPatternsRequest page_request;
  page_request.set_store(mine.name());
  page_request.set_page_size(1000);
  std::set<uint64_t> seen;
  do {
    api::ListPatternsResponse page;
    if (absl::Status s = Call(pool, source, &api::Engram::Stub::ListPatterns,
                              page_request, &page);
        !s.ok()) {
      return s;
    }
    api::AddPatternsRequest add;
    add.set_store(mine.name());
    api::DeletePatternsRequest replaced;
    replaced.set_store(mine.name());
    for (const api::Pattern& p : page.patterns()) {
      seen.insert(p.id());
      const auto held = have->find(p.id());
      if (held != have->end() && held->second == ContentHash(p)) continue;
      if (held != have->end()) replaced.add_ids(p.id());
      *add.add_patterns() = p;
    }
    if (replaced.ids_size() > 0) {
      api::DeletePatternsResponse removed;
      if (absl::Status s =
              Call(pool, target, &api::Engram::Stub::DeletePatterns, replaced,
                   &removed);
          !s.ok()) {
        return s;
      }
    }
    if (add.patterns_size() > 0) {
      api::AddPatternsResponse added;
      if (absl::Status s =
              Call(pool, target, &api::Engram::Stub::AddPatterns, add, &added);
          !s.ok()) {
        return s;
      }
    }
    page_request.set_page_token(page.next_page_token());
  } while (!page_request.page_token().empty());
  // And what the target holds that the source does not.
  std::vector<uint64_t> extra;
  for (const auto& [id, unused] : *have) {
    if (!seen.count(id)) extra.push_back(id);
  }
  for (size_t first = 0; first < extra.size(); first += 1000) {
    api::DeletePatternsRequest remove;
    remove.set_store(mine.name());
    for (size_t i = first; i < std::min(extra.size(), first + 1000); ++i) {
      remove.add_ids(extra[i]);
    }
    api::DeletePatternsResponse removed;
    if (absl::Status s = Call(pool, target, &api::Engram::Stub::DeletePatterns,
                              remove, &removed);
        !s.ok()) {
      return s;
    }
  }
  return SyncMaps(pool, source, target, mine.name());
}

}  // namespace

absl::StatusOr<bool> ShardPool::FinishRepair(const Replica& source,
                                             const Replica& target) {
  // Writes are short; one that holds the gate long (a restore) makes this
  // round fail rather than every write after it wait behind the repair.
  const absl::Time give_up = SteadyNow() + options_.probe_timeout;
  while (!write_gate_.TryLock()) {
    if (SteadyNow() > give_up) {
      return absl::AbortedError("client writes kept the replicas busy");
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  v1::DescribeRequest describe;
  v1::ShardDescription a, b;
  grpc::ClientContext ca, cb;
  Prepare(ca, absl::Now() + options_.probe_timeout, /*stamped=*/false);
  Prepare(cb, absl::Now() + options_.probe_timeout, /*stamped=*/false);
  const bool same = source.shard->Describe(&ca, describe, &a).ok() &&
                    target.shard->Describe(&cb, describe, &b).ok() &&
                    FirstDifference(Holdings(a), Holdings(b)).empty();
  if (same) {
    absl::MutexLock lock(&mu_);
    ReplicaStatus& t = status_[target.group][target.index];
    t.stale = false;
    t.mismatches = 0;
    t.detail = absl::StrCat("repaired from ", source.address);
    // What it holds now, not what the probe before the repair saw.
    t.description = std::move(b);
    ++repairs_;
    SetReady(t);
    Log(LogLevel::kInfo, "replica %s of shard group %u: %s", target.address,
        target.group, t.detail);
  }
  write_gate_.Unlock();
  return same;
}

absl::Status ShardPool::Repair(const Replica& source, const Replica& target) {
  namespace api = engram::v1;
  // A few rounds: writes that land on the source meanwhile are copied by
  // the next; the repair ends when both describe the same holdings.
  for (int round = 0; round < 5; ++round) {
    api::ListStoresRequest list;
    list.set_page_size(1000);
    api::ListStoresResponse from, to;
    if (absl::Status s =
            Call(*this, source, &api::Engram::Stub::ListStores, list, &from);
        !s.ok()) {
      return s;
    }
    if (absl::Status s =
            Call(*this, target, &api::Engram::Stub::ListStores, list, &to);
        !s.ok()) {
      return s;
    }
    std::map<std::string, api::Store> theirs;
    for (const api::Store& st : to.stores()) theirs[st.name()] = st;
    for (const api::Store& mine : from.stores()) {
      const bool held = theirs.erase(mine.name()) > 0;
      if (absl::Status s = CopyStore(*this, source, target, mine, held);
          !s.ok()) {
        return s;
      }
    }
    for (const auto& [name, unused] : theirs) {  // Stores gone from the source.
      api::DeleteStoreRequest drop;
      drop.set_name(name);
      api::DeleteStoreResponse dropped;
      if (absl::Status s = Call(*this, target, &api::Engram::Stub::DeleteStore,
                                drop, &dropped);
          !s.ok()) {
        return s;
      }
    }
    // Done when both describe the same holdings.
    absl::StatusOr<bool> finished = FinishRepair(source, target);
    if (!finished.ok()) return finished.status();
    if (*finished) return absl::OkStatus();
  }
  return absl::AbortedError(
      "the source kept changing faster than the repair copied it");
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

absl::StatusOr<std::vector<const Replica*>> ShardPool::PickEach() {
  std::vector<const Replica*> replicas(groups());
  for (uint32_t g = 0; g < replicas.size(); ++g) {
    absl::StatusOr<const Replica*> r = Pick(g);
    if (!r.ok()) return r.status();
    replicas[g] = *r;
  }
  return replicas;
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

absl::StatusOr<std::vector<const Replica*>> ShardPool::EveryReadyReplica() {
  std::vector<const Replica*> every;
  for (uint32_t g = 0; g < groups(); ++g) {
    absl::StatusOr<std::vector<const Replica*>> ready = ReadyReplicas(g);
    if (!ready.ok()) return ready.status();
    every.insert(every.end(), ready->begin(), ready->end());
  }
  return every;
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
