// The engram service over real gRPC on a free loopback port, through the C++
// client: every method, every bad-input case, and that bad input changes
// nothing.
#include "server/rpc/service.h"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "engram/cluster/v1/shard.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "server/base/mutex.h"
#include "server/cluster/shard_service.h"
#include "server/cluster/topology.h"
#include "server/metrics/metrics.h"
#include "server/rpc/handlers.h"
#include "server/rpc/server.h"
#include "server/store/registry.h"

namespace engram::rpc {
namespace {

using ::absl::StatusCode;

void SetValues(v1::Pattern* pattern, std::vector<float> values) {
  pattern->mutable_values()->Assign(values.begin(), values.end());
}

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    limits_.max_batch = 100;
    limits_.max_queries = 64;
    limits_.max_stores = 5;
    limits_.max_dimension = 4096;
    registry_ = std::make_unique<store::StoreRegistry>(limits_, &storage_);
    ASSERT_TRUE(registry_->Load().ok());
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.max_message_bytes = 4 << 20;
    options.after_write = [this](store::Store& written,
                                 const grpc::ServerContextBase& context) {
      AfterWrite hook;
      {
        MutexLock lock(&hook_mu_);
        hook = after_write_;
      }
      if (hook) hook(written, context);
    };
    fits_ = std::make_unique<jobs::JobRunner>(registry_.get(),
                                              jobs::JobRunnerOptions{});
    absl::StatusOr<std::unique_ptr<Server>> server =
        Server::Start(options, registry_.get(), fits_.get(), &metrics_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    server_->SetReady(true);
    client::ClientOptions client_options;
    client_options.address = server_->address();
    client_options.timeout = absl::Seconds(20);
    client_ = std::move(*client::Client::Connect(client_options));
    // Raw calls, for what the typed client does not send.
    stub_ = v1::Engram::NewStub(grpc::CreateChannel(
        server_->address(), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override { server_->Shutdown(absl::Seconds(1)); }

  v1::Store NewStore(const std::string& name, uint32_t dim) {
    v1::Store store;
    store.set_name(name);
    store.set_dimension(dim);
    return store;
  }

  void Create(const std::string& name, uint32_t dim) {
    ASSERT_TRUE(client_->CreateStore(NewStore(name, dim)).ok());
  }

  std::vector<float> Random(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng);
    return v;
  }

  // Calls `rpc` and checks its code and that the message mentions `needle`.
  static void ExpectError(const absl::Status& status, StatusCode code,
                          const std::string& needle) {
    EXPECT_EQ(status.code(), code) << status;
    EXPECT_NE(status.message().find(needle), std::string::npos)
        << "message '" << status.message() << "' lacks '" << needle << "'";
  }

  uint64_t Count(const std::string& name) {
    return client_->GetStore(name)->pattern_count();
  }

  store::Limits limits_;
  store::EphemeralStorage storage_;
  metrics::NullMetrics metrics_;
  std::unique_ptr<store::StoreRegistry> registry_;
  std::unique_ptr<jobs::JobRunner> fits_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<client::Client> client_;
  std::unique_ptr<v1::Engram::Stub> stub_;
  // What the server runs after each write that succeeded (none by default).
  Mutex hook_mu_;
  AfterWrite after_write_;
};

TEST_F(ServiceTest, HealthSeparatesLivenessAndReadiness) {
  EXPECT_EQ(*client_->Health(""), "SERVING");
  EXPECT_EQ(*client_->Health("engram.v1.Engram"), "SERVING");
  server_->SetReady(false);
  EXPECT_EQ(*client_->Health("engram.v1.Engram"), "NOT_SERVING");
  EXPECT_EQ(*client_->Health(""), "SERVING");
}

TEST_F(ServiceTest, CreateAppliesDefaultsAndGetReportsStatistics) {
  absl::StatusOr<v1::Store> created = client_->CreateStore(NewStore("s", 3));
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->retrieval().similarity(), v1::DOT);
  EXPECT_EQ(created->retrieval().separation(), v1::SOFTMAX);
  EXPECT_EQ(created->retrieval().beta(), 1.0f);
  EXPECT_EQ(created->retrieval().steps(), 1u);
  EXPECT_EQ(created->retrieval().top_k(), 5u);
  EXPECT_EQ(created->low_rank().max_degree(), 4u);
  EXPECT_EQ(created->fit().state(), v1::FitStatus::NOT_CONFIGURED);
  EXPECT_EQ(created->state(), v1::Store::READY);
  ASSERT_TRUE(client_->AddPatterns("s", {3, 4, 0, 0, 0, 1}, 3).ok());
  absl::StatusOr<v1::Store> got = client_->GetStore("s");
  EXPECT_EQ(got->pattern_count(), 2u);
  EXPECT_DOUBLE_EQ(got->norms().max_norm(), 5.0);
  EXPECT_DOUBLE_EQ(got->norms().mean_norm(), 3.0);
  EXPECT_DOUBLE_EQ(got->norms().max_abs_entry(), 4.0);
  EXPECT_GT(got->create_time().seconds(), 0);
}

TEST_F(ServiceTest, CreateRejectsBadSettings) {
  auto create = [&](v1::Store s) { return client_->CreateStore(s).status(); };
  v1::Store s = NewStore("", 3);
  ExpectError(create(s), StatusCode::kInvalidArgument, "store name");
  s = NewStore("Has Space", 3);
  ExpectError(create(s), StatusCode::kInvalidArgument, "lowercase");
  s = NewStore("x", 0);
  ExpectError(create(s), StatusCode::kInvalidArgument, "store.dimension");
  s = NewStore("x", 5000);
  ExpectError(create(s), StatusCode::kResourceExhausted, "max_dimension 4096");
  s = NewStore("x", 3);
  s.mutable_retrieval()->set_beta(-2);
  ExpectError(create(s), StatusCode::kInvalidArgument, "store.retrieval.beta");
  s = NewStore("x", 3);
  s.mutable_retrieval()->set_beta(NAN);
  ExpectError(create(s), StatusCode::kInvalidArgument, "store.retrieval.beta");
  s = NewStore("x", 3);
  s.mutable_retrieval()->set_steps(100000);
  ExpectError(create(s), StatusCode::kInvalidArgument, "store.retrieval.steps");
  s = NewStore("x", 3);
  s.mutable_retrieval()->set_similarity(static_cast<v1::Similarity>(42));
  ExpectError(create(s), StatusCode::kInvalidArgument, "unknown value 42");
  s = NewStore("x", 3);
  s.mutable_retrieval()->set_separation(static_cast<v1::Separation>(9));
  ExpectError(create(s), StatusCode::kInvalidArgument,
              "store.retrieval.separation");
  s = NewStore("x", 3);
  s.mutable_low_rank()->set_max_degree(3);
  ExpectError(create(s), StatusCode::kInvalidArgument,
              "store.low_rank.max_degree");
  s = NewStore("x", 3);
  s.mutable_low_rank()->set_tolerance(-1);
  ExpectError(create(s), StatusCode::kInvalidArgument,
              "store.low_rank.tolerance");
  s = NewStore("x", 3);
  s.mutable_feature_map()->set_kind(static_cast<v1::FeatureMapKind>(7));
  ExpectError(create(s), StatusCode::kInvalidArgument,
              "store.feature_map.kind");
  EXPECT_TRUE(client_->ListStores()->empty()) << "nothing was created";

  Create("x", 3);
  ExpectError(create(NewStore("x", 3)), StatusCode::kAlreadyExists, "'x'");
  for (const char* name : {"a", "b", "c", "d"}) Create(name, 1);
  ExpectError(create(NewStore("f", 3)), StatusCode::kResourceExhausted,
              "max_stores");
}

// A store that is not there is NOT_FOUND from every method; a name no
// store could have (empty, not lowercase, too long) INVALID_ARGUMENT,
// saying why.
TEST_F(ServiceTest, UnknownStoresAreNotFoundEverywhere) {
  const std::vector<float> one = {1};
  const std::pair<std::string, StatusCode> cases[] = {
      {"nope", StatusCode::kNotFound},
      {"", StatusCode::kInvalidArgument},
      {"Nope", StatusCode::kInvalidArgument},
      {"-nope", StatusCode::kInvalidArgument},
      {std::string(64, 'n'), StatusCode::kInvalidArgument}};
  for (const auto& [name, code] : cases) {
    const std::string says =
        code == StatusCode::kNotFound ? "'nope'" : "store name";
    ExpectError(client_->GetStore(name).status(), code, says);
    ExpectError(client_->DeleteStore(name), code, says);
    ExpectError(client_->AddPatterns(name, one, 1).status(), code, says);
    ExpectError(client_->Retrieve(name, one, 1, {}).status(), code, says);
    ExpectError(client_->Import(name, one, 1, {}, 10).status(), code,
                name.empty() ? "store is required" : says);
    ExpectError(client_->GetFitStatus(name).status(), code, says);
  }
}

TEST(MethodTableTest, NamesEveryMethodOfTheServices) {
  for (const google::protobuf::ServiceDescriptor* service :
       {v1::Store::descriptor()->file()->FindServiceByName("Engram"),
        cluster::v1::ShardDescription::descriptor()->file()->FindServiceByName(
            "Shard"),
        cluster::v1::ShardDescription::descriptor()->file()->FindServiceByName(
            "Router")}) {
    ASSERT_NE(service, nullptr);
    for (int i = 0; i < service->method_count(); ++i) {
      const google::protobuf::MethodDescriptor* method = service->method(i);
      EXPECT_TRUE(MethodWrites(method->name()).has_value())
          << method->name() << " is not in the method table";
      EXPECT_EQ(MethodStreams(method->name()),
                method->client_streaming() || method->server_streaming())
          << method->name();
    }
  }
  EXPECT_FALSE(MethodWrites("NoSuchMethod").has_value());
  EXPECT_FALSE(MethodStreams("NoSuchMethod").has_value());
  EXPECT_EQ(MethodWrites("Retrieve"), false);
  EXPECT_EQ(MethodWrites("DeletePatterns"), true);
}

// A slot is held by one owner at a time and given back exactly once: when
// its holder is destroyed, reset or assigned another.
TEST(StreamSlotsTest, GivesEachSlotBackOnce) {
  StreamSlots slots(2);
  StreamSlots::Slot a = slots.TryTake();
  StreamSlots::Slot b = slots.TryTake();
  EXPECT_TRUE(a);
  EXPECT_TRUE(b);
  EXPECT_FALSE(slots.TryTake());
  EXPECT_EQ(slots.used(), 2u);
  StreamSlots::Slot moved = std::move(a);
  EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): moved-from is empty.
  EXPECT_EQ(slots.used(), 2u);
  moved = std::move(b);  // Gives moved's own slot back, takes b's.
  EXPECT_EQ(slots.used(), 1u);
  {
    StreamSlots::Slot scoped = slots.TryTake();
    EXPECT_TRUE(scoped);
    EXPECT_EQ(slots.used(), 2u);
  }
  EXPECT_EQ(slots.used(), 1u);
  moved.reset();
  moved.reset();
  EXPECT_EQ(slots.used(), 0u);
  EXPECT_EQ(StreamShare(1), 1u);
  EXPECT_EQ(StreamShare(64), 32u);
  EXPECT_EQ(UnreadShare(2), 1u);
  EXPECT_EQ(UnreadShare(64), 16u);
}

// Shares that draw from one whole: a slot takes one of each, a share that
// is not full is refused when the whole is (and says so), and every slot
// given back is given back to both.
TEST(StreamSlotsTest, SharesDrawFromTheirWhole) {
  ThreadShares shares = ShareThreads(16);
  EXPECT_EQ(shares.held->limit(), 13u);
  EXPECT_EQ(shares.streams->limit(), 8u);
  EXPECT_EQ(shares.unread->limit(), 4u);
  EXPECT_EQ(shares.writes->limit(), 8u);
  EXPECT_EQ(shares.writes->whole(), shares.held.get());
  std::vector<StreamSlots::Slot> held;
  for (int i = 0; i < 8; ++i) held.push_back(shares.streams->TryTake());
  bool whole_full = false;
  EXPECT_FALSE(shares.streams->TryTake(&whole_full));
  EXPECT_FALSE(whole_full);  // The streams' own share is full.
  for (int i = 0; i < 5; ++i) {
    held.push_back(shares.writes->TryTake(&whole_full));
    EXPECT_TRUE(held.back());
  }
  EXPECT_FALSE(whole_full);
  EXPECT_EQ(shares.held->used(), 13u);
  EXPECT_FALSE(shares.writes->TryTake(&whole_full));
  EXPECT_TRUE(whole_full);  // Five writes of eight, but 13 of 13 together.
  EXPECT_EQ(shares.writes->used(), 5u);  // The refused one took nothing.
  whole_full = false;
  EXPECT_FALSE(shares.unread->TryTake(&whole_full));
  EXPECT_TRUE(whole_full);
  EXPECT_EQ(shares.unread->used(), 0u);
  held.front().reset();  // A stream ends: a write may take its place.
  EXPECT_EQ(shares.streams->used(), 7u);
  EXPECT_EQ(shares.held->used(), 12u);
  held.push_back(shares.writes->TryTake());
  EXPECT_TRUE(held.back());
  held.clear();
  EXPECT_EQ(shares.held->used(), 0u);
  EXPECT_EQ(shares.streams->used(), 0u);
  EXPECT_EQ(shares.writes->used(), 0u);
  EXPECT_EQ(HeldShare(1), 1u);
  EXPECT_EQ(HeldShare(2), 1u);
  EXPECT_EQ(HeldShare(8), 5u);
  EXPECT_EQ(HeldShare(64), 56u);
}

// Streams hold one of gRPC's threads each for as long as they last: at
// most half of the server's threads (4 of 8 here) go to them, and every
// other call keeps working with all of those held. It used to take 33
// silent imports on a 2-core engramd (64 threads) to refuse every call but
// Retrieve ("Server Threadpool Exhausted").
TEST_F(ServiceTest, StreamsHoldAtMostHalfTheThreads) {
  Create("s", 2);
  struct Open {
    grpc::ClientContext context;
    v1::ImportPatternsResponse response;
    std::unique_ptr<grpc::ClientWriter<v1::ImportPatternsRequest>> writer;
  };
  v1::ImportPatternsRequest one;
  one.set_store("s");
  SetValues(one.add_patterns(), {1.0f, 2.0f});
  std::vector<std::unique_ptr<Open>> open;
  for (uint64_t i = 1; i <= 4; ++i) {
    auto o = std::make_unique<Open>();
    o->writer = stub_->ImportPatterns(&o->context, &o->response);
    ASSERT_TRUE(o->writer->Write(one));
    // Admitted once its first message is committed; then it waits.
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (Count("s") < i && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    ASSERT_EQ(Count("s"), i);
    open.push_back(std::move(o));
  }
  // A fifth stream of any kind is refused at once, naming the limit ...
  grpc::ClientContext fifth;
  v1::ImportPatternsResponse refused_response;
  auto refused = stub_->ImportPatterns(&fifth, &refused_response);
  refused->Write(one);
  refused->WritesDone();
  const grpc::Status refusal = refused->Finish();
  EXPECT_EQ(refusal.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(
      refusal.error_message().find(
          "4 streams (imports, restores, backups, watches) are in flight"),
      std::string::npos)
      << refusal.error_message();
  EXPECT_NE(refusal.error_message().find("--rpc_threads"), std::string::npos);
  grpc::ClientContext watch_context;
  v1::WatchFitRequest watch;
  watch.set_store("s");
  auto watcher = stub_->WatchFit(&watch_context, watch);
  v1::FitStatus status;
  EXPECT_FALSE(watcher->Read(&status));
  EXPECT_EQ(watcher->Finish().error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  // ... while every other call works.
  std::vector<float> more = Random(2 * 3, 5);
  ASSERT_TRUE(client_->AddPatterns("s", more, 2).ok());
  EXPECT_EQ(Count("s"), 7u);
  ASSERT_TRUE(client_->ListStores().ok());
  // One stream ends: its slot takes the next.
  open[0]->writer->WritesDone();
  ASSERT_TRUE(open[0]->writer->Finish().ok());
  absl::StatusOr<v1::ImportPatternsResponse> imported =
      client_->Import("s", std::vector<float>(2 * 5, 1.0f), 2, {}, 2);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->patterns_added(), 5u);
  for (size_t i = 1; i < open.size(); ++i) {
    open[i]->writer->WritesDone();
    EXPECT_TRUE(open[i]->writer->Finish().ok());
  }
}

TEST_F(ServiceTest, ListStoresPaginates) {
  for (const char* name : {"e", "b", "d", "a", "c"}) Create(name, 2);
  std::vector<std::string> names;
  v1::ListStoresRequest request;
  request.set_page_size(2);
  int pages = 0;
  do {
    grpc::ClientContext context;
    v1::ListStoresResponse response;
    ASSERT_TRUE(stub_->ListStores(&context, request, &response).ok());
    for (const v1::Store& s : response.stores()) names.push_back(s.name());
    request.set_page_token(response.next_page_token());
    ++pages;
  } while (!request.page_token().empty());
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b", "c", "d", "e"}));
  EXPECT_EQ(pages, 3);
  grpc::ClientContext context;
  request.set_page_token("garbage!");
  v1::ListStoresResponse response;
  grpc::Status bad = stub_->ListStores(&context, request, &response);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad.error_message().find("page_token"), std::string::npos);
}

// Regression: tokens were plain base64 of "p:<id>" / "s:<name>": one store's
// token worked on another, and forged ones were accepted.
TEST_F(ServiceTest, PageTokensWorkOnlyForTheirOwnListing) {
  for (const char* name : {"a", "b"}) {
    Create(name, 1);
    ASSERT_TRUE(
        client_->Import(name, std::vector<float>(10, 1.0f), 1, {}, 10).ok());
  }
  auto list = [&](const std::string& store, const std::string& token) {
    grpc::ClientContext context;
    v1::ListPatternsRequest request;
    request.set_store(store);
    request.set_page_size(3);
    request.set_page_token(token);
    v1::ListPatternsResponse response;
    grpc::Status status = stub_->ListPatterns(&context, request, &response);
    return std::make_pair(status, response);
  };
  auto [first, page] = list("a", "");
  ASSERT_TRUE(first.ok());
  const std::string token = page.next_page_token();
  ASSERT_FALSE(token.empty());
  EXPECT_TRUE(list("a", token).first.ok());
  // Another store's listing refuses it.
  grpc::Status other = list("b", token).first;
  EXPECT_EQ(other.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(other.error_message().find("page_token"), std::string::npos);
  // So do ListStores, an old-style forged token and any altered byte.
  grpc::ClientContext context;
  v1::ListStoresRequest stores;
  stores.set_page_token(token);
  v1::ListStoresResponse stores_response;
  EXPECT_EQ(stub_->ListStores(&context, stores, &stores_response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(list("a", "cDo1").first.error_code(),  // base64("p:5")
            grpc::StatusCode::INVALID_ARGUMENT);
  for (size_t i = 0; i < token.size(); ++i) {
    std::string altered = token;
    altered[i] = altered[i] == 'A' ? 'B' : 'A';
    EXPECT_EQ(list("a", altered).first.error_code(),
              grpc::StatusCode::INVALID_ARGUMENT)
        << i;
  }
}

// Regression: a 100,000-character store name came back whole in the status,
// over the client's metadata limit.
TEST_F(ServiceTest, EchoedInputIsClipped) {
  const std::string huge(100000, 'x');
  grpc::ClientContext context;
  v1::GetStoreRequest request;
  request.set_name(huge);
  v1::Store response;
  grpc::Status status = stub_->GetStore(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(status.error_message().size(), 300u);
  EXPECT_NE(status.error_message().find("got 100000"), std::string::npos)
      << status.error_message();
  grpc::ClientContext create_context;
  v1::CreateStoreRequest create;
  create.mutable_store()->set_name(huge);
  create.mutable_store()->set_dimension(2);
  status = stub_->CreateStore(&create_context, create, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(status.error_message().size(), 300u);
}

// Bytes that are no RetrieveRequest: INVALID_ARGUMENT saying so (gRPC's
// callback API, left to parse them, would answer UNIMPLEMENTED).
TEST_F(ServiceTest, BytesThatAreNoRequestAreInvalid) {
  Create("s", 2);
  grpc::GenericStub generic(grpc::CreateChannel(
      server_->address(), grpc::InsecureChannelCredentials()));
  // A field 2 whose length runs past the end of the message.
  const std::string garbage("\x12\x7f\x0a", 3);
  // Retrieve and AddPatterns read their own requests; gRPC parses the
  // others'.
  for (const char* method :
       {"Retrieve", "GetStore", "CreateStore", "AddPatterns", "DeletePatterns",
        "StartCalibration"}) {
    grpc::Slice slice(garbage);
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::ClientContext context;
    std::promise<grpc::Status> done;
    generic.UnaryCall(&context, absl::StrCat("/engram.v1.Engram/", method),
                      grpc::StubOptions(), &request, &response,
                      [&done](grpc::Status status) { done.set_value(status); });
    const grpc::Status status = done.get_future().get();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << method << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(
                  absl::StrCat("are not an engram.v1.", method, "Request")),
              std::string::npos)
        << method << ": " << status.error_message();
  }
  EXPECT_EQ(Count("s"), 0u);
}

TEST_F(ServiceTest, UpdateStoreFollowsTheMask) {
  Create("s", 2);
  auto update = [&](v1::Store store, std::vector<std::string> paths) {
    grpc::ClientContext context;
    v1::UpdateStoreRequest request;
    *request.mutable_store() = store;
    for (const std::string& p : paths)
      request.mutable_update_mask()->add_paths(p);
    v1::Store response;
    grpc::Status status = stub_->UpdateStore(&context, request, &response);
    return std::make_pair(status, response);
  };
  v1::Store change = NewStore("s", 2);
  change.mutable_retrieval()->set_beta(4);
  change.mutable_retrieval()->set_steps(7);
  auto [status, updated] = update(change, {"retrieval.beta"});
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(updated.retrieval().beta(), 4.0f);
  EXPECT_EQ(updated.fit().state(), v1::FitStatus::NOT_CONFIGURED);
  EXPECT_EQ(updated.retrieval().steps(), 1u) << "steps was not in the mask";

  EXPECT_EQ(update(change, {}).first.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::Status unknown = update(change, {"dimension"}).first;
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(unknown.error_message().find("update_mask.paths[0] 'dimension'"),
            std::string::npos);
  change.mutable_retrieval()->set_beta(0);
  grpc::Status bad_beta = update(change, {"retrieval.beta"}).first;
  EXPECT_EQ(bad_beta.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->GetStore("s")->retrieval().beta(), 4.0f);
  EXPECT_EQ(update(NewStore("zz", 2), {"retrieval.beta"}).first.error_code(),
            grpc::StatusCode::NOT_FOUND);
  change = NewStore("s", 2);
  change.mutable_retrieval()->set_beta(2);
  change.mutable_retrieval()->set_steps(3);
  change.mutable_retrieval()->set_top_k(1);
  change.mutable_retrieval()->set_separation(v1::SPARSEMAX);
  auto [whole_status, whole] = update(change, {"retrieval"});
  ASSERT_TRUE(whole_status.ok()) << whole_status.error_message();
  EXPECT_EQ(whole.retrieval().steps(), 3u);
  EXPECT_EQ(whole.retrieval().separation(), v1::SPARSEMAX);
}

TEST_F(ServiceTest, AddRejectsBadBatchesAndChangesNothing) {
  Create("s", 3);
  ASSERT_TRUE(client_->AddPatterns("s", {1, 2, 3}, 3).ok());
  auto add = [&](std::vector<v1::Pattern> patterns) {
    grpc::ClientContext context;
    v1::AddPatternsRequest request;
    request.set_store("s");
    for (auto& p : patterns) *request.add_patterns() = p;
    v1::AddPatternsResponse response;
    grpc::Status s = stub_->AddPatterns(&context, request, &response);
    return absl::Status(static_cast<StatusCode>(s.error_code()),
                        s.error_message());
  };
  auto pattern = [](uint64_t id, std::vector<float> values) {
    v1::Pattern p;
    p.set_id(id);
    p.mutable_values()->Assign(values.begin(), values.end());
    return p;
  };
  ExpectError(add({}), StatusCode::kInvalidArgument, "must not be empty");
  ExpectError(add({pattern(0, {1, 2, 3}), pattern(0, {1, 2})}),
              StatusCode::kInvalidArgument,
              "patterns[1].values has 2 values; store 's' has dimension 3");
  ExpectError(add({pattern(0, {1, NAN, 3})}), StatusCode::kInvalidArgument,
              "patterns[0].values[1] is nan");
  ExpectError(add({pattern(0, {1, 2, -INFINITY})}),
              StatusCode::kInvalidArgument, "values must be finite");
  ExpectError(add({pattern(0, {1, 2, 3}), pattern(0, {1, 2e18f, 3})}),
              StatusCode::kInvalidArgument,
              "patterns[1].values has norm 2e+18; a pattern's norm must be at "
              "most 1.5e+18");
  ExpectError(add({pattern(9, {1, 2, 3}), pattern(9, {1, 2, 3})}),
              StatusCode::kInvalidArgument, "patterns[1].id 9 repeats");
  ExpectError(add({pattern(5, {1, 2, 3}), pattern(1, {1, 2, 3})}),
              StatusCode::kAlreadyExists, "patterns[1].id 1 already exists");
  v1::Pattern labelled = pattern(0, {1, 2, 3});
  labelled.set_label(std::string(1000, 'x'));
  ExpectError(add({labelled}), StatusCode::kInvalidArgument, "label");
  ExpectError(add(std::vector<v1::Pattern>(101, pattern(0, {1, 2, 3}))),
              StatusCode::kResourceExhausted, "max_batch is 100");
  EXPECT_EQ(Count("s"), 1u);
  EXPECT_EQ(client_->GetPattern("s", 5).status().code(), StatusCode::kNotFound);
}

TEST_F(ServiceTest, OversizedMessageIsResourceExhausted) {
  Create("s", 4096);
  // 300 x 4096 floats = 4.9 MB > the 4 MiB limit of this server.
  absl::Status status =
      client_->AddPatterns("s", std::vector<float>(300 * 4096, 1.0f), 4096)
          .status();
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted) << status;
  EXPECT_EQ(Count("s"), 0u);
}

TEST_F(ServiceTest, PatternsRoundTripWithLabelsAndMetadata) {
  Create("s", 2);
  grpc::ClientContext context;
  v1::AddPatternsRequest request;
  request.set_store("s");
  v1::Pattern* p = request.add_patterns();
  p->set_id(42);
  p->add_values(0.5f);
  p->add_values(-1.5f);
  p->set_label("cat");
  (*p->mutable_metadata())["source"] = "camera-1";
  v1::AddPatternsResponse response;
  ASSERT_TRUE(stub_->AddPatterns(&context, request, &response).ok());
  EXPECT_EQ(response.ids(0), 42u);
  absl::StatusOr<v1::Pattern> got = client_->GetPattern("s", 42);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->values(1), -1.5f);
  EXPECT_EQ(got->label(), "cat");
  EXPECT_EQ(got->metadata().at("source"), "camera-1");
}

TEST_F(ServiceTest, ListAndDeletePatterns) {
  Create("s", 1);
  std::vector<float> values(250);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i);
  ASSERT_TRUE(client_->Import("s", values, 1, {}, 60).ok());
  std::vector<uint64_t> ids;
  v1::ListPatternsRequest request;
  request.set_store("s");
  request.set_page_size(100);
  request.set_omit_values(true);
  do {
    grpc::ClientContext context;
    v1::ListPatternsResponse response;
    ASSERT_TRUE(stub_->ListPatterns(&context, request, &response).ok());
    for (const v1::Pattern& p : response.patterns()) {
      ids.push_back(p.id());
      EXPECT_EQ(p.values_size(), 0);
    }
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty());
  ASSERT_EQ(ids.size(), 250u);
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));

  auto remove = [&](std::vector<uint64_t> doomed) {
    grpc::ClientContext context;
    v1::DeletePatternsRequest request;
    request.set_store("s");
    for (uint64_t id : doomed) request.add_ids(id);
    v1::DeletePatternsResponse response;
    grpc::Status s = stub_->DeletePatterns(&context, request, &response);
    return absl::Status(static_cast<StatusCode>(s.error_code()),
                        s.error_message());
  };
  ExpectError(remove({1, 9999}), StatusCode::kNotFound, "ids[1] 9999");
  ExpectError(remove({3, 3}), StatusCode::kInvalidArgument,
              "ids[1] 3 appears twice");
  ExpectError(remove({}), StatusCode::kInvalidArgument,
              "ids must not be empty");
  EXPECT_EQ(Count("s"), 250u);
  ASSERT_TRUE(remove({1, 2, 250}).ok());
  EXPECT_EQ(Count("s"), 247u);
  EXPECT_EQ(client_->GetPattern("s", 2).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(client_->GetPattern("s", 100)->values(0), 99.0f);
}

TEST_F(ServiceTest, ImportReportsWhatWasCommittedBeforeAnError) {
  Create("s", 2);
  absl::StatusOr<v1::ImportPatternsResponse> ok =
      client_->Import("s", std::vector<float>(2 * 150, 1.0f), 2, {}, 40);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->patterns_added(), 150u);
  EXPECT_EQ(ok->batches(), 4u);
  EXPECT_EQ(ok->first_id(), 1u);
  EXPECT_EQ(ok->last_id(), 150u);

  grpc::ClientContext context;
  v1::ImportPatternsResponse response;
  auto writer = stub_->ImportPatterns(&context, &response);
  v1::ImportPatternsRequest first;
  first.set_store("s");
  SetValues(first.add_patterns(), {1.0f, 2.0f});
  ASSERT_TRUE(writer->Write(first));
  v1::ImportPatternsRequest broken;
  SetValues(broken.add_patterns(), {1.0f});
  writer->Write(broken);
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(
      status.error_message().find("message 1: patterns[0].values has 1 values"),
      std::string::npos)
      << status.error_message();
  EXPECT_NE(status.error_message().find(
                "1 patterns of earlier messages were committed"),
            std::string::npos)
      << status.error_message();
  EXPECT_EQ(Count("s"), 151u);

  grpc::ClientContext anonymous;
  auto nameless = stub_->ImportPatterns(&anonymous, &response);
  v1::ImportPatternsRequest no_store;
  SetValues(no_store.add_patterns(), {1.0f, 2.0f});
  nameless->Write(no_store);
  nameless->WritesDone();
  grpc::Status missing = nameless->Finish();
  // Regression: this was NOT_FOUND.
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(missing.error_message().find("store is required"),
            std::string::npos);

  // Regression: a message over the size limit mid-stream got gRPC's bare
  // "Received message larger than max", without what was committed.
  grpc::ClientContext sized;
  auto big_import = stub_->ImportPatterns(&sized, &response);
  ASSERT_TRUE(big_import->Write(first));
  v1::ImportPatternsRequest big;
  for (int i = 0; i < 2800; ++i) {  // ~4.5 MB; the limit is 4 MiB.
    SetValues(big.add_patterns(), std::vector<float>(400, 1.0f));
  }
  big_import->Write(big);
  big_import->WritesDone();
  grpc::Status too_big = big_import->Finish();
  EXPECT_EQ(too_big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(too_big.error_message().find("message 1 is"), std::string::npos)
      << too_big.error_message();
  EXPECT_NE(too_big.error_message().find("--max_message_mb=4"),
            std::string::npos)
      << too_big.error_message();
  EXPECT_NE(too_big.error_message().find(
                "1 patterns of earlier messages were committed"),
            std::string::npos)
      << too_big.error_message();
}

TEST_F(ServiceTest, RetrieveRecallsAndReportsEverything) {
  Create("s", 32);
  const std::vector<float> memories = Random(50 * 32, 1);
  std::vector<std::string> labels;
  for (int i = 0; i < 50; ++i) labels.push_back("m" + std::to_string(i));
  ASSERT_TRUE(client_->AddPatterns("s", memories, 32, labels).ok());
  std::vector<float> queries(memories.begin() + 7 * 32,
                             memories.begin() + 9 * 32);
  for (size_t k = 0; k < queries.size(); k += 3) queries[k] = 0;
  v1::RetrieveRequest overrides;
  overrides.set_beta(3);
  overrides.set_top_k(2);
  overrides.set_steps(5);
  overrides.set_eps(1e-4f);
  overrides.set_path(v1::EXACT);
  absl::StatusOr<v1::RetrieveResponse> r =
      client_->Retrieve("s", queries, 32, overrides);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->results_size(), 2);
  for (int i = 0; i < 2; ++i) {
    const v1::QueryResult& q = r->results(i);
    ASSERT_EQ(q.matches_size(), 2);
    EXPECT_EQ(q.matches(0).id(), 8u + i);  // Ids start at 1.
    EXPECT_EQ(q.matches(0).label(), "m" + std::to_string(7 + i));
    EXPECT_GT(q.matches(0).weight(), 0.99f);
    EXPECT_EQ(q.values_size(), 32);
    EXPECT_NEAR(q.values(5), memories[(7 + i) * 32 + 5], 1e-3);
    EXPECT_TRUE(q.converged());
    EXPECT_LE(q.steps(), 5u);
    EXPECT_LT(q.energy(), 0);
  }
  EXPECT_EQ(r->path().path(), v1::EXACT);
  EXPECT_GT(r->store_version(), 0u);

  overrides.set_omit_vectors(true);
  EXPECT_EQ(
      client_->Retrieve("s", queries, 32, overrides)->results(0).values_size(),
      0);
}

TEST_F(ServiceTest, RetrieveReportsTheLowRankPathAndRefusesWhatItCannotMeet) {
  Create("s", 8);
  std::vector<float> memories = Random(100 * 8, 3);
  for (float& v : memories) v *= 0.05f;
  ASSERT_TRUE(client_->AddPatterns("s", memories, 8).ok());
  absl::StatusOr<v1::Store> store = client_->GetStore("s");
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(store->low_rank_state().degree(), 4u);
  EXPECT_EQ(store->low_rank_state().rank(), 495u);  // C(12, 4)
  std::vector<float> query(memories.begin(), memories.begin() + 8);
  v1::RetrieveRequest r;
  r.set_path(v1::LOW_RANK);
  r.set_top_k(3);
  absl::StatusOr<v1::RetrieveResponse> low =
      client_->Retrieve("s", query, 8, r);
  ASSERT_TRUE(low.ok()) << low.status();
  EXPECT_EQ(low->path().path(), v1::LOW_RANK);
  EXPECT_EQ(low->path().degree(), 2u);
  EXPECT_EQ(low->path().rank(), 45u);
  EXPECT_GT(low->path().error_bound(), 0);
  EXPECT_LE(low->path().error_bound(), 1e-3);
  EXPECT_EQ(low->results(0).matches_size(), 3);
  r.set_path(v1::EXACT);
  absl::StatusOr<v1::RetrieveResponse> exact =
      client_->Retrieve("s", query, 8, r);
  ASSERT_TRUE(exact.ok());
  for (int j = 0; j < 8; ++j) {
    EXPECT_NEAR(low->results(0).values(j), exact->results(0).values(j),
                low->path().error_bound());
  }
  r.set_path(v1::LOW_RANK);
  r.set_beta(5000);
  ExpectError(client_->Retrieve("s", query, 8, r).status(),
              StatusCode::kFailedPrecondition,
              "path LOW_RANK cannot meet the tolerance on store 's': the error "
              "bound at the largest kept degree g = 4 is");
}

TEST_F(ServiceTest, RetrieveRejectsBadRequests) {
  Create("empty", 2);
  Create("s", 2);
  ASSERT_TRUE(client_->AddPatterns("s", {1, 0, 0, 1}, 2).ok());
  const std::vector<float> query = {1, 0};
  auto retrieve = [&](const std::string& store, std::vector<float> q,
                      v1::RetrieveRequest r) {
    return client_->Retrieve(store, q, 2, r).status();
  };
  ExpectError(retrieve("empty", query, {}), StatusCode::kFailedPrecondition,
              "has no patterns");
  ExpectError(retrieve("s", {}, {}), StatusCode::kInvalidArgument,
              "queries must not be empty");
  ExpectError(retrieve("s", std::vector<float>(2 * 65, 1.0f), {}),
              StatusCode::kResourceExhausted, "max_queries is 64");
  ExpectError(retrieve("s", {1, NAN}, {}), StatusCode::kInvalidArgument,
              "queries[0].values[1] is nan");
  ExpectError(retrieve("s", {1, 0, 0, 1e30f}, {}), StatusCode::kInvalidArgument,
              "queries[1] has norm 1e+30");
  ExpectError(client_->Retrieve("s", {1, 2, 3}, 3, {}).status(),
              StatusCode::kInvalidArgument, "queries[0].values has 3 values");
  v1::RetrieveRequest r;
  r.set_beta(0);
  ExpectError(retrieve("s", query, r), StatusCode::kInvalidArgument, "beta");
  r = {};
  r.set_steps(0);
  ExpectError(retrieve("s", query, r), StatusCode::kInvalidArgument, "steps");
  r = {};
  r.set_eps(-1);
  ExpectError(retrieve("s", query, r), StatusCode::kInvalidArgument, "eps");
  r = {};
  r.set_tolerance(0);
  ExpectError(retrieve("s", query, r), StatusCode::kInvalidArgument,
              "tolerance");
  r = {};
  r.set_path(static_cast<v1::RetrievalPath>(17));
  ExpectError(retrieve("s", query, r), StatusCode::kInvalidArgument,
              "path has unknown value 17");
  r = {};
  r.set_top_k(5000);
  ExpectError(retrieve("s", query, r), StatusCode::kInvalidArgument, "top_k");
}

// Regression: an answer over --max_message_mb failed only after all the work,
// with gRPC's "Sent message larger than max".
TEST_F(ServiceTest, AnAnswerTooLargeToSendIsRefusedUpFront) {
  Create("s", 4);
  const std::string label(200, 'l');
  for (int batch = 0; batch < 10; ++batch) {
    ASSERT_TRUE(client_
                    ->AddPatterns("s", Random(100 * 4, batch), 4,
                                  std::vector<std::string>(100, label))
                    .ok());
  }
  v1::RetrieveRequest r;
  r.set_top_k(1000);  // 64 x 1000 matches of 200-byte labels: ~15 MB.
  absl::StatusOr<v1::RetrieveResponse> refused =
      client_->Retrieve("s", Random(64 * 4, 99), 4, r);
  ExpectError(refused.status(), StatusCode::kResourceExhausted,
              "--max_message_mb=4");
  ExpectError(refused.status(), StatusCode::kResourceExhausted,
              "queries per request");
  // Split as it says, each part is answered.
  const std::string& message = std::string(refused.status().message());
  const size_t at = message.find("send at most ") + 13;
  const int most = std::stoi(message.substr(at));
  ASSERT_GT(most, 0);
  ASSERT_LT(most, 64);
  absl::StatusOr<v1::RetrieveResponse> part =
      client_->Retrieve("s", Random(most * 4, 98), 4, r);
  ASSERT_TRUE(part.ok()) << part.status();
  EXPECT_EQ(part->results(0).matches_size(), 1000);
}

TEST_F(ServiceTest, RetrieveHonoursTheDeadline) {
  Create("big", 256);
  const std::vector<float> memories = Random(100 * 256, 2);
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(client_->AddPatterns("big", memories, 256).ok());
  }
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(20));
  v1::RetrieveRequest request;
  request.set_store("big");
  request.set_steps(1000);  // Far more work than 20 ms allow.
  for (int i = 0; i < 64; ++i) {
    request.add_queries()->mutable_values()->Assign(
        memories.begin() + i * 256, memories.begin() + (i + 1) * 256);
  }
  v1::RetrieveResponse response;
  grpc::Status status = stub_->Retrieve(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
}

// A second server over the same stores, with its own service options.
std::unique_ptr<Server> StartWith(ServiceOptions service,
                                  store::StoreRegistry* registry,
                                  jobs::JobRunner* jobs,
                                  metrics::Metrics* metrics) {
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Start(options, metrics, [&](const CallPolicy* policy) {
        std::vector<std::unique_ptr<grpc::Service>> services;
        services.push_back(
            std::make_unique<EngramService>(registry, jobs, policy, service));
        return services;
      });
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

std::unique_ptr<v1::Engram::Stub> StubOf(const Server& server) {
  return v1::Engram::NewStub(grpc::CreateChannel(
      server.address(), grpc::InsecureChannelCredentials()));
}

TEST_F(ServiceTest, RetrieveAnswersAlikeOnGrpcsThreadAndOnAHandlerThread) {
  Create("s", 48);
  const std::vector<float> memories = Random(300 * 48, 3);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(client_
                    ->AddPatterns("s",
                                  std::vector<float>(
                                      memories.begin() + i * 100 * 48,
                                      memories.begin() + (i + 1) * 100 * 48),
                                  48)
                    .ok());
  }
  ServiceOptions on_grpc, on_handlers;
  on_grpc.inline_work = SIZE_MAX;
  on_handlers.inline_work = 0;
  std::unique_ptr<Server> a =
      StartWith(on_grpc, registry_.get(), fits_.get(), &metrics_);
  std::unique_ptr<Server> b =
      StartWith(on_handlers, registry_.get(), fits_.get(), &metrics_);
  ASSERT_TRUE(a && b);
  v1::RetrieveRequest request;
  request.set_store("s");
  request.set_steps(3);
  request.set_top_k(4);
  for (int i = 0; i < 5; ++i) {
    std::vector<float> q(memories.begin() + (40 * i) * 48,
                         memories.begin() + (40 * i + 1) * 48);
    for (size_t k = 0; k < q.size(); k += 2) q[k] *= 0.3f;
    request.add_queries()->mutable_values()->Assign(q.begin(), q.end());
  }
  v1::RetrieveResponse answers[2];
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext context;
    grpc::Status status =
        StubOf(i == 0 ? *a : *b)->Retrieve(&context, request, &answers[i]);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  ASSERT_EQ(answers[0].results_size(), 5);
  EXPECT_EQ(answers[0].SerializeAsString(), answers[1].SerializeAsString());
  a->Shutdown(absl::Seconds(1));
  b->Shutdown(absl::Seconds(1));
}

TEST_F(ServiceTest, RetrieveIsRefusedWhileEveryHandlerThreadIsBusy) {
  Create("s", 16);
  const std::vector<float> memories = Random(100 * 16, 4);
  ASSERT_TRUE(client_->AddPatterns("s", memories, 16).ok());
  Handlers handlers(1);  // One thread, one task waiting.
  ServiceOptions service;
  service.handlers = &handlers;
  // One query over the 100 rows is inline, four are not.
  service.inline_work = 100 * (16 + 64);
  std::unique_ptr<Server> server =
      StartWith(service, registry_.get(), fits_.get(), &metrics_);
  ASSERT_TRUE(server);
  std::unique_ptr<v1::Engram::Stub> stub = StubOf(*server);
  auto retrieve = [&](int queries) {
    v1::RetrieveRequest request;
    request.set_store("s");
    for (int i = 0; i < queries; ++i) {
      request.add_queries()->mutable_values()->Assign(
          memories.begin() + i * 16, memories.begin() + (i + 1) * 16);
    }
    grpc::ClientContext context;  // A refusal that never came would hang.
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(20));
    v1::RetrieveResponse response;
    grpc::Status status = stub->Retrieve(&context, request, &response);
    EXPECT_TRUE(!status.ok() || response.results_size() == queries);
    return status;
  };

  // The one thread busy and one task waiting for it: the handlers are full.
  std::promise<void> started, release;
  std::shared_future<void> released = release.get_future().share();
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(handlers.Run([&started, released, i] {
      if (i == 0) started.set_value();
      released.wait();
    }));
  }
  started.get_future().wait();
  grpc::Status busy = retrieve(4);
  EXPECT_EQ(busy.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(busy.error_message().find("retrieval threads: all"),
            std::string::npos)
      << busy.error_message();
  EXPECT_TRUE(retrieve(1).ok());  // Inline: not refused.
  release.set_value();
  const auto deadline = absl::Now() + absl::Seconds(20);
  grpc::Status again = retrieve(4);
  while (again.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
         absl::Now() < deadline) {
    again = retrieve(4);
  }
  EXPECT_TRUE(again.ok()) << again.error_message();
  server->Shutdown(absl::Seconds(1));
}

TEST_F(ServiceTest, FitMethodsDescribeAStoreWithoutFeatureMap) {
  Create("s", 2);
  grpc::ClientContext context;
  v1::GetFitStatusRequest request;
  request.set_store("s");
  v1::FitStatus status;
  ASSERT_TRUE(stub_->GetFitStatus(&context, request, &status).ok());
  EXPECT_EQ(status.state(), v1::FitStatus::NOT_CONFIGURED);

  grpc::ClientContext start_context;
  v1::StartFitRequest start;
  start.set_store("s");
  grpc::Status started = stub_->StartFit(&start_context, start, &status);
  EXPECT_EQ(started.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(started.error_message().find("store.feature_map.kind"),
            std::string::npos);

  grpc::ClientContext watch_context;
  v1::WatchFitRequest watch;
  watch.set_store("s");
  auto reader = stub_->WatchFit(&watch_context, watch);
  int messages = 0;
  while (reader->Read(&status)) ++messages;
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(messages, 1);
}

TEST_F(ServiceTest, CalibrationOverRpc) {
  // Defaults, and bad settings named by field.
  absl::StatusOr<v1::Store> created = client_->CreateStore(NewStore("c", 8));
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->calibration().corruption(), v1::DROPOUT);
  EXPECT_EQ(created->calibration().level(), 0.5f);
  EXPECT_EQ(created->calibration().sample_size(), 256u);
  EXPECT_FALSE(created->calibration().automatic());
  EXPECT_FALSE(created->has_calibration_report());
  v1::Store bad = NewStore("bad", 8);
  bad.mutable_calibration()->set_level(1.5f);
  ExpectError(client_->CreateStore(bad).status(), StatusCode::kInvalidArgument,
              "store.calibration.level for dropout must be in (0, 1)");
  bad.mutable_calibration()->set_level(0.5f);
  bad.mutable_calibration()->set_corruption(static_cast<v1::Corruption>(9));
  ExpectError(client_->CreateStore(bad).status(), StatusCode::kInvalidArgument,
              "store.calibration.corruption");
  bad.mutable_calibration()->set_corruption(v1::MASK);
  bad.mutable_calibration()->set_sample_size(100000);
  ExpectError(client_->CreateStore(bad).status(), StatusCode::kInvalidArgument,
              "store.calibration.sample_size must be in [1, 65536]");

  ExpectError(client_->StartCalibration("c").status(),
              StatusCode::kFailedPrecondition, "at least 2");
  ExpectError(client_->StartCalibration("nope").status(), StatusCode::kNotFound,
              "nope");
  // A poor beta; gaussian corruption through an update mask.
  {
    grpc::ClientContext context;
    v1::UpdateStoreRequest request;
    *request.mutable_store() = NewStore("c", 8);
    request.mutable_store()->mutable_retrieval()->set_similarity(v1::L2);
    request.mutable_store()->mutable_retrieval()->set_beta(0.001f);
    request.mutable_store()->mutable_calibration()->set_corruption(
        v1::GAUSSIAN);
    request.mutable_store()->mutable_calibration()->set_level(0.1f);
    for (const char* p : {"retrieval.similarity", "retrieval.beta",
                          "calibration.corruption", "calibration.level"}) {
      request.mutable_update_mask()->add_paths(p);
    }
    v1::Store response;
    ASSERT_TRUE(stub_->UpdateStore(&context, request, &response).ok());
    EXPECT_EQ(response.calibration().corruption(), v1::GAUSSIAN);
  }
  std::vector<float> memories;
  for (float v : Random(60 * 8, 4)) memories.push_back(std::fabs(v));
  ASSERT_TRUE(client_->AddPatterns("c", memories, 8).ok());
  absl::StatusOr<v1::CalibrationStatus> status =
      client_->StartCalibration("c", true);
  ASSERT_TRUE(status.ok()) << status.status();
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while ((status->state() == v1::CalibrationStatus::PENDING ||
          status->state() == v1::CalibrationStatus::RUNNING) &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
    status = client_->GetCalibrationStatus("c");
    ASSERT_TRUE(status.ok());
  }
  ASSERT_EQ(status->state(), v1::CalibrationStatus::SUCCEEDED)
      << status->error();
  const v1::CalibrationReport& r = status->report();
  EXPECT_TRUE(r.applied());
  EXPECT_EQ(r.corruption(), v1::GAUSSIAN);
  EXPECT_EQ(r.pattern_count(), 60u);
  EXPECT_LT(r.error(), r.previous_error());
  absl::StatusOr<v1::Store> got = client_->GetStore("c");
  EXPECT_EQ(got->retrieval().beta(), r.beta());
  EXPECT_EQ(got->calibration_report().error(), r.error());
  EXPECT_GT(got->calibration_report().time().seconds(), 0);
}

TEST_F(ServiceTest, UhopStoreFitsInTheBackgroundAndStreamsProgress) {
  v1::Store store = NewStore("u", 16);
  store.mutable_retrieval()->set_similarity(v1::KERNEL_L2);
  store.mutable_feature_map()->set_kind(v1::UHOP);
  store.mutable_feature_map()->set_feature_dim(8);
  store.mutable_feature_map()->set_epochs(30);
  store.mutable_feature_map()->set_debounce_ms(60000);  // Only explicit fits.
  absl::StatusOr<v1::Store> created = client_->CreateStore(store);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->fit().state(), v1::FitStatus::IDLE);
  EXPECT_EQ(created->feature_map().feature_dim(), 8u);
  const std::vector<float> memories = Random(40 * 16, 3);
  ASSERT_TRUE(client_->AddPatterns("u", memories, 16).ok());

  absl::StatusOr<v1::FitStatus> started = client_->StartFit("u");
  ASSERT_TRUE(started.ok()) << started.status();
  std::vector<v1::FitStatus> seen;
  absl::StatusOr<v1::FitStatus> last = client_->WatchFit(
      "u", [&](const v1::FitStatus& s) { seen.push_back(s); });
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->state(), v1::FitStatus::SUCCEEDED);
  EXPECT_EQ(last->map_version(), 1u);
  EXPECT_EQ(last->epoch(), 30u);
  EXPECT_EQ(last->patterns_fitted(), 40u);
  EXPECT_LT(last->loss_after(), last->loss_before());
  ASSERT_GE(seen.size(), 1u);
  for (size_t i = 1; i < seen.size(); ++i) {
    EXPECT_GE(seen[i].epoch(), seen[i - 1].epoch()) << "progress only moves on";
  }

  absl::StatusOr<v1::Store> got = client_->GetStore("u");
  EXPECT_EQ(got->fit().state(), v1::FitStatus::SUCCEEDED);
  EXPECT_EQ(got->fit().map_version(), 1u);
  EXPECT_GT(got->norms().max_feature_norm(), 0);
  // Kernel retrieval recalls a stored pattern from itself.
  v1::RetrieveRequest request;
  request.set_beta(20);
  request.set_top_k(1);
  absl::StatusOr<v1::RetrieveResponse> r = client_->Retrieve(
      "u", absl::MakeConstSpan(memories).subspan(5 * 16, 16), 16, request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->results(0).matches(0).id(), 6u);

  // Cancel of an idle store is harmless; kernel similarity without U-Hop is
  // not.
  EXPECT_TRUE(client_->CancelFit("u").ok());
  v1::Store plain = NewStore("k", 4);
  plain.mutable_retrieval()->set_similarity(v1::KERNEL_DOT);
  ExpectError(client_->CreateStore(plain).status(),
              StatusCode::kInvalidArgument,
              "needs store.feature_map.kind UHOP");
}

TEST_F(ServiceTest, ClientRetriesReadsWhileTheServerIsUnavailable) {
  // A port nobody listens on yet: a second server comes up there 150 ms
  // after the client starts asking.
  const int port = server_->port();
  const std::string address = server_->address();
  server_->Shutdown(absl::ZeroDuration());
  client::ClientOptions options;
  options.address = address;
  options.timeout = absl::Seconds(5);
  options.retries = 0;
  std::unique_ptr<client::Client> impatient =
      std::move(*client::Client::Connect(options));
  EXPECT_EQ(impatient->GetStore("s").status().code(), StatusCode::kUnavailable);

  options.retries =
      6;  // 50 ms doubling: 3.15 s, past gRPC's ~1 s reconnect backoff.
  std::unique_ptr<client::Client> patient =
      std::move(*client::Client::Connect(options));
  std::unique_ptr<Server> late;
  std::thread starter([&] {
    absl::SleepFor(absl::Milliseconds(150));
    ServerOptions server_options;
    server_options.listen = "127.0.0.1:" + std::to_string(port);
    late = std::move(*Server::Start(server_options, registry_.get(),
                                    fits_.get(), &metrics_));
    late->SetReady(true);
  });
  absl::StatusOr<std::vector<v1::Store>> stores = patient->ListStores();
  starter.join();
  EXPECT_TRUE(stores.ok()) << stores.status();
  late->Shutdown(absl::ZeroDuration());
  server_ = std::move(late);
}

TEST_F(ServiceTest, DeleteStoreRemovesIt) {
  Create("s", 2);
  ASSERT_TRUE(client_->AddPatterns("s", {1, 2}, 2).ok());
  ASSERT_TRUE(client_->DeleteStore("s").ok());
  EXPECT_EQ(client_->GetStore("s").status().code(), StatusCode::kNotFound);
  Create("s", 3);
  EXPECT_EQ(Count("s"), 0u);
}

// A shard stamps the store each write went to with its router's stamp, and
// only after a write that succeeded: not after a read or a refused write, and
// never a store of the same name that took the write's place in between.
TEST_F(ServiceTest, AfterWriteStampsTheStoreTheWriteWentTo) {
  const rpc::AfterWrite stamp = cluster::StampRecorder();
  Mutex mu;  // The hook runs on the server's threads.
  std::vector<store::Store*> written;
  bool replace_before_stamping = false;
  auto last_written = [&] {
    MutexLock lock(&mu);
    return written.empty() ? nullptr : written.back();
  };
  auto writes = [&] {
    MutexLock lock(&mu);
    return written.size();
  };
  {
    MutexLock lock(&hook_mu_);
    after_write_ = [&](store::Store& store,
                       const grpc::ServerContextBase& context) {
      bool replace = false;
      {
        MutexLock lock(&mu);
        written.push_back(&store);
        std::swap(replace, replace_before_stamping);
      }
      if (replace) {
        // The window between a write and its stamp: the store is deleted
        // and another of its name created.
        ASSERT_TRUE(registry_->Delete("s").ok());
        store::StoreSettings settings;
        settings.name = "s";
        settings.dimension = 2;
        ASSERT_TRUE(registry_->Create(settings).ok());
      }
      stamp(store, context);
    };
  }
  auto stamped = [&](uint64_t value) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->AddMetadata(cluster::kStampHeader, std::to_string(value));
    return context;
  };
  auto current = [&] { return *registry_->Get("s"); };

  v1::CreateStoreRequest create;
  *create.mutable_store() = NewStore("s", 2);
  v1::Store created;
  ASSERT_TRUE(stub_->CreateStore(stamped(5).get(), create, &created).ok());
  std::shared_ptr<store::Store> first = current();
  EXPECT_EQ(writes(), 1u);
  EXPECT_EQ(last_written(), first.get());
  EXPECT_EQ(first->stamp(), 5u);

  v1::AddPatternsRequest add;
  add.set_store("s");
  SetValues(add.add_patterns(), {1, 2});
  v1::AddPatternsResponse added;
  ASSERT_TRUE(stub_->AddPatterns(stamped(7).get(), add, &added).ok());
  EXPECT_EQ(first->stamp(), 7u);

  // Refused writes and reads record nothing.
  v1::AddPatternsRequest bad = add;
  SetValues(bad.mutable_patterns(0), {1, 2, 3});
  EXPECT_EQ(stub_->AddPatterns(stamped(9).get(), bad, &added).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::GetStoreRequest get;
  get.set_name("s");
  v1::Store got;
  ASSERT_TRUE(stub_->GetStore(stamped(9).get(), get, &got).ok());
  EXPECT_EQ(writes(), 2u);
  EXPECT_EQ(first->stamp(), 7u);

  v1::DeletePatternsRequest remove;
  remove.set_store("s");
  remove.add_ids(added.ids(0));
  v1::DeletePatternsResponse removed;
  ASSERT_TRUE(stub_->DeletePatterns(stamped(8).get(), remove, &removed).ok());
  EXPECT_EQ(first->stamp(), 8u);

  // Deleted and re-created between the write and its stamp: the stamp does
  // not go to the new store, which never saw the write.
  {
    MutexLock lock(&mu);
    replace_before_stamping = true;
  }
  ASSERT_TRUE(stub_->AddPatterns(stamped(11).get(), add, &added).ok());
  EXPECT_EQ(last_written(), first.get());
  std::shared_ptr<store::Store> second = current();
  EXPECT_NE(second.get(), first.get());
  EXPECT_EQ(second->stamp(), 0u);
  EXPECT_EQ(first->stamp(), 8u);  // Deleted: its stamp went with it.

  v1::UpdateStoreRequest update;
  update.mutable_store()->set_name("s");
  update.mutable_store()->mutable_retrieval()->set_beta(2);
  update.mutable_update_mask()->add_paths("retrieval.beta");
  v1::Store updated;
  ASSERT_TRUE(stub_->UpdateStore(stamped(12).get(), update, &updated).ok());
  EXPECT_EQ(last_written(), second.get());
  EXPECT_EQ(second->stamp(), 12u);
  MutexLock lock(&hook_mu_);
  after_write_ = nullptr;
}

}  // namespace
}  // namespace engram::rpc
