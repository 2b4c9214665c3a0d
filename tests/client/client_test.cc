// The C++ client against a real server: every RPC of the service has a
// client call, checked by walking the service descriptor and by the server's
// own record of which method each call reached.
#include "client/client.h"

#include <functional>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "server/jobs/job_runner.h"
#include "server/metrics/metrics.h"
#include "server/rpc/server.h"
#include "server/store/registry.h"

namespace engram::client {
namespace {

// Remembers the methods the server answered, with their codes.
class MethodLog : public metrics::NullMetrics {
 public:
  void RecordRequest(absl::string_view method, absl::string_view code,
                     double) override {
    absl::MutexLock lock(&mu_);
    calls_.push_back(absl::StrCat(method, " ", code));
  }
  std::vector<std::string> Take() {
    absl::MutexLock lock(&mu_);
    return std::exchange(calls_, {});
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> calls_ ABSL_GUARDED_BY(mu_);
};

// One client call per RPC, in an order in which each succeeds.
struct Call {
  const char* rpc;
  std::function<absl::Status(Client&)> run;
};

std::vector<Call> EveryCall() {
  const std::vector<float> rows = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0};
  v1::Store plain;
  plain.set_name("p");
  plain.set_dimension(4);
  v1::Store uhop = plain;
  uhop.set_name("u");
  uhop.mutable_retrieval()->set_similarity(v1::KERNEL_L2);
  uhop.mutable_feature_map()->set_kind(v1::UHOP);
  uhop.mutable_feature_map()->set_epochs(5);
  uhop.mutable_feature_map()->set_debounce_ms(600000);
  v1::Store beta = plain;
  beta.mutable_retrieval()->set_beta(3);
  // The files CreateBackup streams, which RestoreStore sends back.
  auto backup =
      std::make_shared<std::vector<std::pair<std::string, std::string>>>();
  return {
      {"CreateStore", [=](Client& c) { return c.CreateStore(plain).status(); }},
      {"GetStore", [](Client& c) { return c.GetStore("p").status(); }},
      {"ListStores", [](Client& c) { return c.ListStores().status(); }},
      {"UpdateStore",
       [=](Client& c) {
         return c.UpdateStore(beta, {"retrieval.beta"}).status();
       }},
      {"AddPatterns",
       [=](Client& c) { return c.AddPatterns("p", rows, 4).status(); }},
      {"ImportPatterns",
       [=](Client& c) { return c.Import("p", rows, 4, {}, 2).status(); }},
      {"GetPattern", [](Client& c) { return c.GetPattern("p", 1).status(); }},
      {"ListPatterns", [](Client& c) { return c.ListPatterns("p").status(); }},
      {"DeletePatterns",
       [](Client& c) {
         const uint64_t ids[] = {6};
         return c.DeletePatterns("p", ids).status();
       }},
      {"Retrieve",
       [=](Client& c) {
         return c.Retrieve("p", absl::MakeConstSpan(rows).first(4), 4, {})
             .status();
       }},
      {"StartCalibration",
       [](Client& c) { return c.StartCalibration("p").status(); }},
      {"WatchCalibration",
       [](Client& c) { return c.WatchCalibration("p", nullptr).status(); }},
      {"GetCalibrationStatus",
       [](Client& c) { return c.GetCalibrationStatus("p").status(); }},
      {"CancelCalibration",
       [](Client& c) { return c.CancelCalibration("p").status(); }},
      {"StartFit",
       [=](Client& c) {
         if (absl::Status s = c.CreateStore(uhop).status(); !s.ok()) return s;
         if (absl::Status s = c.AddPatterns("u", rows, 4).status(); !s.ok()) {
           return s;
         }
         return c.StartFit("u").status();
       }},
      {"WatchFit", [](Client& c) { return c.WatchFit("u", nullptr).status(); }},
      {"GetFitStatus", [](Client& c) { return c.GetFitStatus("u").status(); }},
      {"CancelFit", [](Client& c) { return c.CancelFit("u").status(); }},
      {"CreateBackup",
       [=](Client& c) {
         return c.CreateBackup("p", [=](const v1::BackupChunk& chunk) {
           if (backup->empty() || backup->back().first != chunk.file()) {
             backup->emplace_back(chunk.file(), "");
           }
           backup->back().second += chunk.data();
           return absl::OkStatus();
         });
       }},
      {"RestoreStore",
       [=](Client& c) {
         v1::RestoreStoreRequest request;
         request.set_name("p-copy");
         return c.RestoreStore(request, *backup, 100).status();
       }},
      {"DeleteStore", [](Client& c) { return c.DeleteStore("p"); }},
  };
}

TEST(ClientTest, EveryRpcHasAClientCallThatReachesIt) {
  store::Limits limits;
  store::EphemeralStorage storage;
  store::StoreRegistry registry(limits, &storage);
  ASSERT_TRUE(registry.Load().ok());
  jobs::JobRunner jobs(&registry, {});
  MethodLog log;
  rpc::ServerOptions options;
  options.listen = "127.0.0.1:0";
  absl::StatusOr<std::unique_ptr<rpc::Server>> server =
      rpc::Server::Start(options, &registry, &jobs, &log);
  ASSERT_TRUE(server.ok()) << server.status();
  (*server)->SetReady(true);
  ClientOptions client_options;
  client_options.address = (*server)->address();
  std::unique_ptr<Client> client = std::move(*Client::Connect(client_options));

  const std::vector<Call> calls = EveryCall();
  std::set<std::string> covered;
  for (const Call& call : calls) {
    log.Take();
    const absl::Status status = call.run(*client);
    EXPECT_TRUE(status.ok()) << call.rpc << ": " << status;
    const std::vector<std::string> reached = log.Take();
    ASSERT_FALSE(reached.empty()) << call.rpc;
    EXPECT_EQ(reached.back(), absl::StrCat(call.rpc, " OK"));
    covered.insert(call.rpc);
  }
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          v1::Engram::service_full_name());
  ASSERT_NE(service, nullptr);
  std::cout << "RPC                    C++ client call\n";
  for (int i = 0; i < service->method_count(); ++i) {
    const std::string& rpc = service->method(i)->name();
    EXPECT_TRUE(covered.count(rpc)) << rpc << " has no C++ client call";
    std::cout << absl::StrFormat("%-22s %s\n", rpc,
                                 covered.count(rpc) ? "yes" : "MISSING");
  }
  EXPECT_EQ(covered.size(), static_cast<size_t>(service->method_count()));
  (*server)->Shutdown(absl::Seconds(1));
}

// A server of its own with store "p": patterns e0..e3 of dimension 4.
class WithServer : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(registry_.Load().ok());
    rpc::ServerOptions options;
    options.listen = "127.0.0.1:0";
    absl::StatusOr<std::unique_ptr<rpc::Server>> server =
        rpc::Server::Start(options, &registry_, &jobs_, &metrics_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    server_->SetReady(true);
    ClientOptions client_options;
    client_options.address = server_->address();
    client_ = std::move(*Client::Connect(client_options));
    v1::Store store;
    store.set_name("p");
    store.set_dimension(4);
    ASSERT_TRUE(client_->CreateStore(store).ok());
    const std::vector<float> rows = {1, 0, 0, 0, 0, 1, 0, 0,
                                     0, 0, 1, 0, 0, 0, 0, 1};
    ASSERT_TRUE(client_->AddPatterns("p", rows, 4).ok());
  }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::Seconds(1));
  }

  store::Limits limits_;
  store::EphemeralStorage storage_;
  store::StoreRegistry registry_{limits_, &storage_};
  jobs::JobRunner jobs_{&registry_, {}};
  metrics::NullMetrics metrics_;
  std::unique_ptr<rpc::Server> server_;
  std::unique_ptr<Client> client_;
};

// Answers into an arena kept from call to call are the answers on the heap,
// call after call, with the request's overrides and whether or not an answer
// outgrows the arena's first block.
TEST_F(WithServer, AnswersIntoAnArenaAreTheAnswersOnTheHeap) {
  AnswerArena small(256);  // Every answer below takes blocks of its own.
  AnswerArena large;
  v1::RetrieveRequest overrides;
  overrides.set_top_k(2);
  overrides.set_beta(8);
  // Queries the request carries are replaced by those given.
  overrides.add_queries()->add_values(7);
  for (size_t rows = 1; rows <= 64; rows *= 4) {
    std::vector<float> queries(rows * 4);
    for (size_t i = 0; i < queries.size(); ++i) {
      queries[i] = static_cast<float>((i * 7) % 5) / 4.0f;
    }
    absl::StatusOr<v1::RetrieveResponse> heap =
        client_->Retrieve("p", queries, 4, overrides);
    ASSERT_TRUE(heap.ok()) << heap.status();
    ASSERT_EQ(heap->results_size(), static_cast<int>(rows));
    EXPECT_EQ(heap->results(0).matches_size(), 2);
    for (AnswerArena* arena : {&small, &large}) {
      v1::RetrieveResponse* answer = arena->Fresh();
      EXPECT_EQ(answer->results_size(), 0);  // Fresh, whatever came before.
      ASSERT_TRUE(client_->Retrieve("p", queries, 4, overrides, answer).ok());
      EXPECT_NE(answer->GetArena(), nullptr);
      EXPECT_EQ(answer->SerializeAsString(), heap->SerializeAsString())
          << rows << " queries";
    }
  }
  // An error comes back as the status; the arena serves on.
  const std::vector<float> wrong(3, 1.0f);
  EXPECT_EQ(client_->Retrieve("p", wrong, 3, overrides, large.Fresh()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->Retrieve("missing", wrong, 3, {}, large.Fresh()).code(),
            absl::StatusCode::kNotFound);
  const std::vector<float> one = {0, 0, 1, 0};
  v1::RetrieveResponse* answer = large.Fresh();
  ASSERT_TRUE(client_->Retrieve("p", one, 4, {}, answer).ok());
  ASSERT_EQ(answer->results_size(), 1);
  EXPECT_EQ(answer->results(0).matches(0).id(), 3u);
}

// A server that reads one message of an import and answers for it, as
// engramd does when the next message does not parse.
class ReadsOneMessage final : public v1::Engram::Service {
  grpc::Status ImportPatterns(grpc::ServerContext*,
                              grpc::ServerReader<v1::ImportPatternsRequest>* in,
                              v1::ImportPatternsResponse* response) override {
    v1::ImportPatternsRequest message;
    if (in->Read(&message)) {
      response->set_batches(1);
      response->set_patterns_added(message.patterns_size());
    }
    return grpc::Status::OK;
  }
};

TEST(ClientTest, AnImportTheServerReadPartOfFails) {
  ReadsOneMessage service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(port, 0);
  ClientOptions options;
  options.address = absl::StrCat("127.0.0.1:", port);
  std::unique_ptr<Client> client = std::move(*Client::Connect(options));
  const std::vector<float> rows(9 * 2, 1.0f);
  absl::StatusOr<v1::ImportPatternsResponse> done =
      client->Import("s", rows, 2, {}, 3);
  EXPECT_EQ(done.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(done.status().message(),
            "the server read 1 of the 3 messages and added 3 of the 9 "
            "patterns; the rest were not added");
  // Everything read: the answer.
  EXPECT_TRUE(client->Import("s", rows, 2, {}, 9).ok());
  server->Shutdown();
}

}  // namespace
}  // namespace engram::client
