// Reclaims expired patterns in the background (docs/expiry.md): every
// `interval`, each store whose earliest expiry has passed deletes its
// expired patterns (Store::ExpireDue), one atomic batch at a time, as a
// client's delete would. Reads never wait for it: a snapshot leaves expired
// patterns out of every answer by itself, so the sweep only gives back the
// memory and storage, and lets the low-rank path run again.
//
// Thread-safe: owns one thread, stopped by the destructor.
#ifndef ENGRAM_SERVER_JOBS_EXPIRY_SWEEPER_H_
#define ENGRAM_SERVER_JOBS_EXPIRY_SWEEPER_H_

#include <cstddef>
#include <functional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "server/base/mutex.h"
#include "server/store/registry.h"

namespace engram::jobs {

class ExpirySweeper {
 public:
  // Called after a store reclaimed patterns: how many, in how long.
  using Observer = std::function<void(const std::string& store, size_t count,
                                      double seconds)>;

  // `registry` is borrowed and must outlive the sweeper.
  ExpirySweeper(store::StoreRegistry* registry, absl::Duration interval,
                Observer observer);
  ~ExpirySweeper();
  ExpirySweeper(const ExpirySweeper&) = delete;
  ExpirySweeper& operator=(const ExpirySweeper&) = delete;

  // One pass over every store now; the patterns reclaimed.
  size_t SweepOnce();

 private:
  void Loop();

  store::StoreRegistry* const registry_;
  const absl::Duration interval_;
  const Observer observer_;
  Mutex mu_;
  CondVar stop_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace engram::jobs

#endif  // ENGRAM_SERVER_JOBS_EXPIRY_SWEEPER_H_
