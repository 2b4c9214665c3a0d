// Handlers: tasks run on at most max_threads threads, up to max_waiting
// more wait for them holding at most max_waiting_bytes, a task beyond those
// is refused saying why, threads are reused, and the destructor waits for
// what it took. RunAndWait (for a synchronous method) returns once its task
// ran, and is refused as Run is.
#include "server/rpc/handlers.h"

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace engram::rpc {
namespace {

TEST(HandlersTest, QueuesAsManyTasksAsThreadsWhenAllAreBusyThenRefuses) {
  Handlers handlers(2);
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::promise<void> started[2];
  for (std::promise<void>& s : started) {
    ASSERT_TRUE(handlers.Run([&s, released] {
      s.set_value();
      released.wait();
    }));
  }
  for (std::promise<void>& s : started) s.get_future().wait();
  // Both threads busy: two more tasks wait for them, a third is refused.
  std::promise<void> waited[2];
  for (std::promise<void>& w : waited) {
    ASSERT_TRUE(handlers.Run([&w] { w.set_value(); }));
  }
  bool ran = false;
  EXPECT_FALSE(handlers.Run([&ran] { ran = true; }));
  release.set_value();
  for (std::promise<void>& w : waited) w.get_future().wait();
  std::promise<void> done;
  ASSERT_TRUE(handlers.Run([&done] { done.set_value(); }));
  done.get_future().wait();
  EXPECT_FALSE(ran);
}

TEST(HandlersTest, ReusesItsThreadsAndStartsNoMoreThanAllowed) {
  Handlers handlers(3);
  std::mutex mu;
  std::set<std::thread::id> threads;
  std::atomic<int> done{0};
  int refused = 0;
  for (int i = 0; i < 300; ++i) {
    if (!handlers.Run([&] {
          {
            std::lock_guard<std::mutex> lock(mu);
            threads.insert(std::this_thread::get_id());
          }
          done.fetch_add(1);
        })) {
      ++refused;
    }
  }
  while (done.load() + refused < 300) std::this_thread::yield();
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_GE(threads.size(), 1u);
  EXPECT_LE(threads.size(), 3u);
  EXPECT_EQ(threads.count(std::this_thread::get_id()), 0u);
}

TEST(HandlersTest, TheDestructorWaitsForEveryTaskItTook) {
  std::atomic<int> done{0};
  int taken = 0;
  {
    Handlers handlers(4);
    for (int i = 0; i < 4; ++i) {
      taken += handlers.Run([&done] {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        done.fetch_add(1);
      });
    }
  }
  EXPECT_EQ(taken, 4);
  EXPECT_EQ(done.load(), 4);
}

TEST(HandlersTest, WaitingTasksAreBoundedByCountAndByWhatTheyHold) {
  Handlers handlers(1, 3, 100);
  std::promise<void> release, started;
  std::shared_future<void> released = release.get_future().share();
  ASSERT_TRUE(handlers.Run(
      [&started, released] {
        started.set_value();
        released.wait();
      },
      1000));  // Runs at once: its bytes do not count.
  started.get_future().wait();
  std::atomic<int> ran{0};
  auto task = [&ran] { ran.fetch_add(1); };
  std::string why;
  ASSERT_TRUE(handlers.Run(task, 60, &why));
  EXPECT_FALSE(handlers.Run(task, 50, &why));  // 110 of 100.
  EXPECT_NE(why.find("the 1 waiting for them hold"), std::string::npos) << why;
  ASSERT_TRUE(handlers.Run(task, 40));  // 100 of 100.
  ASSERT_TRUE(handlers.Run(task, 0));
  EXPECT_FALSE(handlers.Run(task, 0, &why));  // A fourth may not wait.
  EXPECT_NE(why.find("all 1 threads are busy and 3 more wait"),
            std::string::npos)
      << why;
  release.set_value();
  while (ran.load() < 3) std::this_thread::yield();
  ASSERT_TRUE(handlers.Run(task, 100));  // What waited has gone.
  while (ran.load() < 4) std::this_thread::yield();
}

TEST(HandlersTest, RunAndWaitReturnsOnceTheTaskRanOnAHandlerThread) {
  Handlers handlers(1, 1, 100);
  std::thread::id ran_on;
  ASSERT_TRUE(handlers.RunAndWait([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ran_on = std::this_thread::get_id();
  }));
  // Set before RunAndWait returned, by another thread.
  EXPECT_NE(ran_on, std::thread::id());
  EXPECT_NE(ran_on, std::this_thread::get_id());
}

TEST(HandlersTest, RunAndWaitIsRefusedAsRunIsAndRunsNothing) {
  Handlers handlers(1, 1, 100);
  std::promise<void> release, started;
  std::shared_future<void> released = release.get_future().share();
  ASSERT_TRUE(handlers.Run([&started, released] {
    started.set_value();
    released.wait();
  }));
  started.get_future().wait();
  bool ran = false;
  std::string why;
  // The one thread is busy and 200 bytes may not wait.
  EXPECT_FALSE(handlers.RunAndWait([&ran] { ran = true; }, 200, &why));
  EXPECT_NE(why.find("may wait"), std::string::npos) << why;
  // One of 100 may: it waits for the thread, and runs once it is free.
  std::thread release_soon([&release] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    release.set_value();
  });
  EXPECT_TRUE(handlers.RunAndWait([&ran] { ran = true; }, 100));
  EXPECT_TRUE(ran);
  release_soon.join();
}

TEST(HandlersTest, ARetrievalTurnedAwayIsResourceExhaustedSayingWhy) {
  const absl::Status status = RetrievalThreadsBusy("all 2 threads are busy");
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(),
            "retrieval threads: all 2 threads are busy (--rpc_threads); retry "
            "later or send fewer queries");
}

}  // namespace
}  // namespace engram::rpc
