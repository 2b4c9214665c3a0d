// What one unary call costs in gRPC itself, by the way the server is
// written: an echo of `--bytes` each way, served by gRPC's callback API
// (what engramd serves with) and by the completion-queue ("async") API with
// one thread of the server's own that takes each call and answers it
// inline, and with two such threads. No engram code runs in the call: this
// is the floor each serving model gives, to weigh rewriting engramd's
// service (docs/performance.md, "What the serving model is worth").
//
//   grpc_serving [--bytes=51000] [--calls=3000] [--in_turn=false]
//
// Each server is this program again in a process of its own; the client
// (a generic stub whose thread waits on its own queue: the fewest hand-offs
// a client has) calls them in turn, one call each, so that each sees the
// same moments of a noisy machine (or one after another, --in_turn=false).
// Prints the machine, then model,bytes,best_us,median_us,p90_us.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_main.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

ABSL_FLAG(size_t, bytes, 51000,
          "Bytes each way (51,000: a request of 16 queries of 784 floats).");
ABSL_FLAG(int, calls, 3000, "Timed calls per server (after 200 untimed).");
ABSL_FLAG(bool, in_turn, true,
          "Call the servers in turn, one call each (their threads sleep "
          "between their calls, as between the calls of a retrieval of "
          "milliseconds); false: all of one server's calls, then the next's "
          "(back to back, their threads kept awake).");
ABSL_FLAG(std::string, serve, "",
          "Internal: serve this model on a free port of 127.0.0.1 and print "
          "the port.");

namespace {

constexpr char kMethod[] = "/engram.bench.Echo/Echo";

// The callback API: a reactor per call, run on gRPC's own threads.
class EchoReactor : public grpc::ServerGenericBidiReactor {
 public:
  EchoReactor() { StartRead(&message_); }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    StartWriteAndFinish(&message_, grpc::WriteOptions(), grpc::Status::OK);
  }
  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer message_;
};

class CallbackEcho : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext*) override {
    return new EchoReactor();
  }
};

// The completion-queue API: one call's state, its tag on the queue.
struct AsyncCall {
  enum Step { kArrived, kRead, kAnswered };
  grpc::GenericServerContext context;
  grpc::GenericServerAsyncReaderWriter stream{&context};
  grpc::ByteBuffer message;
  Step step = kArrived;
};

// One thread of the server's own: takes each call from `queue` and answers
// it on the same thread.
void ServeQueue(grpc::AsyncGenericService* service,
                grpc::ServerCompletionQueue* queue) {
  auto await_next = [&] {
    auto* call = new AsyncCall();
    service->RequestCall(&call->context, &call->stream, queue, queue, call);
  };
  await_next();
  void* tag = nullptr;
  bool ok = false;
  while (queue->Next(&tag, &ok)) {
    auto* call = static_cast<AsyncCall*>(tag);
    // Answered, or ended otherwise (a call cancelled; the queue shutting
    // down): no operation of the call is pending.
    if (!ok || call->step == AsyncCall::kAnswered) {
      delete call;
      continue;
    }
    if (call->step == AsyncCall::kArrived) {
      await_next();
      call->step = AsyncCall::kRead;
      call->stream.Read(&call->message, call);
    } else {
      call->step = AsyncCall::kAnswered;
      call->stream.WriteAndFinish(call->message, grpc::WriteOptions(),
                                  grpc::Status::OK, call);
    }
  }
}

// A server of one model on 127.0.0.1, a free port.
struct Server {
  std::string model;
  int port = 0;
  CallbackEcho callback;
  grpc::AsyncGenericService async;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  std::unique_ptr<grpc::Server> server;
  std::vector<std::thread> threads;

  Server(std::string name, int async_threads) : model(std::move(name)) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.SetMaxReceiveMessageSize(-1);
    if (async_threads == 0) {
      builder.RegisterCallbackGenericService(&callback);
    } else {
      builder.RegisterAsyncGenericService(&async);
      for (int i = 0; i < async_threads; ++i) {
        queues.push_back(builder.AddCompletionQueue());
      }
    }
    server = builder.BuildAndStart();
    for (auto& queue : queues) {
      threads.emplace_back(ServeQueue, &async, queue.get());
    }
  }
  ~Server() {
    server->Shutdown(std::chrono::system_clock::now());
    for (auto& queue : queues) queue->Shutdown();
    for (std::thread& thread : threads) thread.join();
  }
};

int RunClient(const std::vector<std::string>& pairs, size_t bytes, int calls,
              bool in_turn) {
  struct Target {
    std::string model;
    std::unique_ptr<grpc::GenericStub> stub;
    std::vector<double> us;
  };
  std::vector<Target> targets;
  for (const std::string& pair : pairs) {
    const std::vector<std::string> parts = absl::StrSplit(pair, '=');
    grpc::ChannelArguments arguments;
    arguments.SetMaxReceiveMessageSize(-1);
    targets.push_back(
        {parts[0],
         std::make_unique<grpc::GenericStub>(grpc::CreateCustomChannel(
             parts[1], grpc::InsecureChannelCredentials(), arguments)),
         {}});
  }
  const std::string payload(bytes, 'x');
  grpc::Slice slice(payload);
  const grpc::ByteBuffer request(&slice, 1);
  grpc::CompletionQueue queue;
  // One call, timed unless it is one of the first 200; false if it failed.
  auto call_once = [&](Target& target, int i) {
    const auto start = std::chrono::steady_clock::now();
    grpc::ClientContext context;
    grpc::ByteBuffer answer;
    grpc::Status status;
    std::unique_ptr<grpc::GenericClientAsyncResponseReader> call =
        target.stub->PrepareUnaryCall(&context, kMethod, request, &queue);
    call->StartCall();
    call->Finish(&answer, &status, nullptr);
    void* tag = nullptr;
    bool ok = false;
    queue.Next(&tag, &ok);
    if (!status.ok() || answer.Length() != bytes) {
      std::fprintf(stderr, "%s: %s\n", target.model.c_str(),
                   status.error_message().c_str());
      return false;
    }
    if (i >= 200) {
      target.us.push_back(std::chrono::duration<double, std::micro>(
                              std::chrono::steady_clock::now() - start)
                              .count());
    }
    return true;
  };
  if (in_turn) {
    for (int i = 0; i < calls + 200; ++i) {
      for (Target& target : targets) {
        if (!call_once(target, i)) return 1;
      }
    }
  } else {
    for (Target& target : targets) {
      for (int i = 0; i < calls + 200; ++i) {
        if (!call_once(target, i)) return 1;
      }
    }
  }
  std::printf("model,bytes,best_us,median_us,p90_us\n");
  for (Target& target : targets) {
    std::sort(target.us.begin(), target.us.end());
    const std::vector<double>& us = target.us;
    std::printf("%s,%zu,%.0f,%.0f,%.0f\n", target.model.c_str(), bytes, us[0],
                us[us.size() / 2], us[us.size() * 9 / 10]);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool child = false;  // A server, or the client, of another run.
  for (int i = 1; i < argc; ++i) {
    child = child || absl::StartsWith(argv[i], "--serve=");
  }
  if (child) {
    absl::ParseCommandLine(argc, argv);
  } else {
    engram::bench::Start(argc, argv);
  }
  const size_t bytes = absl::GetFlag(FLAGS_bytes);
  const int calls = absl::GetFlag(FLAGS_calls);
  if (calls < 1) {
    std::fprintf(stderr, "--calls must be at least 1\n");
    return 2;
  }
  if (child) {
    const std::string model = absl::GetFlag(FLAGS_serve);
    const int threads = model == "async_1_thread"    ? 1
                        : model == "async_2_threads" ? 2
                                                     : 0;
    Server server(model, threads);
    std::printf("%d\n", server.port);
    std::fflush(stdout);
    server.server->Wait();  // Until killed.
    return 0;
  }
  // Each server in a process of its own: gRPC's pollers are the process's,
  // and a callback server's threads would take an async server's events.
  std::vector<pid_t> servers;
  std::vector<std::string> pairs;
  for (const char* model : {"callback", "async_1_thread", "async_2_threads"}) {
    int out[2];
    if (pipe(out) != 0) return 1;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    std::string serve = absl::StrCat("--serve=", model);
    char* args[] = {argv[0], serve.data(), nullptr};
    pid_t pid = 0;
    const int spawned =
        posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, args, environ);
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    char port[16] = {};
    const ssize_t got =
        spawned == 0 ? read(out[0], port, sizeof(port) - 1) : -1;
    close(out[0]);
    if (got <= 0) {
      std::fprintf(stderr, "the %s server did not start\n", model);
      return 1;
    }
    servers.push_back(pid);
    pairs.push_back(
        absl::StrCat(model, "=127.0.0.1:", absl::StripAsciiWhitespace(port)));
  }
  const int status =
      RunClient(pairs, bytes, calls, absl::GetFlag(FLAGS_in_turn));
  for (pid_t pid : servers) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  return status;
}
