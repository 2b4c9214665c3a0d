#include "server/rpc/call_cutter.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engram/v1/engram.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "server/base/steady_clock.h"

namespace engram::rpc {
namespace {

// A loopback port that takes connections (the kernel completes them in
// the backlog) and never says a word: a call to it waits for the server's
// HTTP/2 greeting until something ends it, as a call to a stopped peer
// does.
class SilentPort {
 public:
  SilentPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        listen(fd_, 16) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "no loopback port";
    }
    port_ = ntohs(addr.sin_port);
  }
  ~SilentPort() { close(fd_); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// A GetStore to the silent port that waits for the connection, on a
// thread of its own: its status as the cutter hands it back.
std::future<grpc::Status> CallThrough(
    CallCutter& cutter, const std::string& address,
    std::shared_ptr<grpc::ClientContext> context, absl::Time cutoff) {
  auto stub = v1::Engram::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  context->set_wait_for_ready(true);
  EXPECT_TRUE(cutter.Watch(context, cutoff));
  return std::async(
      std::launch::async, [&cutter, context, stub = std::move(stub)] {
        v1::GetStoreRequest request;
        request.set_name("s");
        v1::Store response;
        return cutter.Unwatch(
            context.get(), stub->GetStore(context.get(), request, &response));
      });
}

TEST(CallCutterTest, CutsACallStillOutAtItsCutoffAsItsDeadline) {
  SilentPort silent;
  CallCutter cutter;
  const absl::Time start = SteadyNow();
  std::future<grpc::Status> call = CallThrough(
      cutter, silent.address(), std::make_shared<grpc::ClientContext>(),
      SteadyNow() + absl::Milliseconds(200));
  ASSERT_EQ(call.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  const grpc::Status status = call.get();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << status.error_message();
  EXPECT_NE(status.error_message().find("steady clock"), std::string::npos)
      << status.error_message();
  EXPECT_GE(SteadyNow() - start, absl::Milliseconds(200));
}

TEST(CallCutterTest, LeavesTheStatusOfACallThatEndedFirst) {
  SilentPort silent;
  CallCutter cutter;
  auto context = std::make_shared<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(100));
  std::future<grpc::Status> call = CallThrough(
      cutter, silent.address(), context, SteadyNow() + absl::Seconds(60));
  ASSERT_EQ(call.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  const grpc::Status status = call.get();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // gRPC's own, not the cutter's.
  EXPECT_EQ(status.error_message().find("steady clock"), std::string::npos)
      << status.error_message();
}

TEST(CallCutterTest, StopCancelsWhatItWatchesAndRefusesMore) {
  SilentPort silent;
  CallCutter cutter;
  std::future<grpc::Status> call = CallThrough(
      cutter, silent.address(), std::make_shared<grpc::ClientContext>(),
      absl::InfiniteFuture());
  // Not cut while it waits (no cutoff).
  EXPECT_EQ(call.wait_for(std::chrono::milliseconds(300)),
            std::future_status::timeout);
  cutter.Stop();
  ASSERT_EQ(call.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  EXPECT_EQ(call.get().error_code(), grpc::StatusCode::CANCELLED);

  auto late = std::make_shared<grpc::ClientContext>();
  EXPECT_FALSE(cutter.Watch(late));
  // Refused and cancelled: a call made with it ends at once.
  auto stub = v1::Engram::NewStub(grpc::CreateChannel(
      silent.address(), grpc::InsecureChannelCredentials()));
  late->set_wait_for_ready(true);
  v1::GetStoreRequest request;
  v1::Store response;
  EXPECT_EQ(stub->GetStore(late.get(), request, &response).error_code(),
            grpc::StatusCode::CANCELLED);
}

TEST(CallCutterTest, TakesItsCutoffFromTheDeadlineOnTheSteadyClock) {
  const absl::Duration grace = absl::Milliseconds(500);
  // No deadline set: gRPC's is the far future, and the call is never cut.
  EXPECT_EQ(CallCutter::Cutoff(grpc::ClientContext().deadline(), grace),
            absl::InfiniteFuture());
  const absl::Time before = SteadyNow();
  const absl::Time cutoff = CallCutter::Cutoff(
      absl::ToChronoTime(absl::Now() + absl::Seconds(3)), grace);
  const absl::Time after = SteadyNow();
  EXPECT_GE(cutoff, before + absl::Milliseconds(3500) - absl::Milliseconds(5));
  EXPECT_LE(cutoff, after + absl::Milliseconds(3500) + absl::Milliseconds(5));
  // A deadline passed already: cut at the thread's next look after grace.
  EXPECT_LE(CallCutter::Cutoff(absl::ToChronoTime(absl::Now()), grace),
            SteadyNow() + grace + absl::Milliseconds(5));
}

}  // namespace
}  // namespace engram::rpc
