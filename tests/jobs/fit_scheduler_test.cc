#include "server/jobs/fit_scheduler.h"

#include <atomic>
#include <cmath>
#include <random>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/store/registry.h"
#include "server/store/retrieve.h"

namespace engram::jobs {
namespace {

using State = FitStatus::State;

class FitSchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_ =
        std::make_unique<store::StoreRegistry>(store::Limits{}, &storage_);
    ASSERT_TRUE(registry_->Load().ok());
    FitSchedulerOptions options;
    options.tick = absl::Milliseconds(5);
    fits_ = std::make_unique<FitScheduler>(registry_.get(), options);
  }

  std::shared_ptr<store::Store> Create(const std::string& name, uint32_t dim,
                                       uint32_t epochs, uint32_t debounce_ms,
                                       uint32_t min_new = 1) {
    store::StoreSettings s;
    s.name = name;
    s.dimension = dim;
    s.retrieval.similarity = core::Similarity::kKernelDot;
    s.retrieval.beta = 0.05f;
    s.feature_map.kind = store::FeatureMapKind::kUhop;
    s.feature_map.epochs = epochs;
    s.feature_map.debounce_ms = debounce_ms;
    s.feature_map.min_new_patterns = min_new;
    s.feature_map.seed = 3;
    return *registry_->Create(s);
  }

  std::vector<store::Pattern> Patterns(size_t n, uint32_t dim, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<store::Pattern> out(n);
    for (store::Pattern& p : out) {
      p.values.resize(dim);
      for (float& v : p.values) v = normal(rng);
    }
    return out;
  }

  void Add(store::Store& s, size_t n, uint32_t seed) {
    ASSERT_TRUE(s.Add(Patterns(n, s.view()->settings().dimension, seed)).ok());
    fits_->PatternsAdded(s.name(), n);
  }

  // Waits until `done` holds for the store's status (at most 30 s).
  FitStatus WaitFor(const std::string& name,
                    const std::function<bool(const FitStatus&)>& done) {
    FitStatus status = *fits_->Status(name);
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!done(status) && absl::Now() < deadline) {
      status = *fits_->WaitForChange(name, status.generation,
                                     absl::Milliseconds(200));
    }
    return status;
  }

  // Every row's key is Phi(row) under the view's own map.
  static void ExpectKeysMatchMap(const store::StoreView& view) {
    const core::MemorySet set = view.memories();
    ASSERT_NE(set.map, nullptr);
    const size_t p = set.map->out_dim();
    std::vector<float> key(p);
    size_t index = 0;
    for (const core::MemoryBlock& block : set.blocks) {
      for (size_t r = 0; r < block.count; r += 7, index += 7) {
        set.map->Apply(block.rows + r * set.dim, 1, key.data());
        for (size_t k = 0; k < p; ++k) {
          ASSERT_NEAR(block.keys[r * p + k], key[k],
                      1e-3 * (1 + std::fabs(key[k])));
        }
      }
    }
  }

  store::EphemeralStorage storage_;
  std::unique_ptr<store::StoreRegistry> registry_;
  std::unique_ptr<FitScheduler> fits_;
};

TEST_F(FitSchedulerTest, StoresWithoutUhopAreNotConfigured) {
  store::StoreSettings s;
  s.name = "plain";
  s.dimension = 4;
  ASSERT_TRUE(registry_->Create(s).ok());
  EXPECT_EQ(fits_->Status("plain")->state, State::kNotConfigured);
  EXPECT_EQ(fits_->Start("plain").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(fits_->Status("missing").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(FitSchedulerTest, StartNeedsTwoPatterns) {
  std::shared_ptr<store::Store> s = Create("s", 4, 5, 60000);
  Add(*s, 1, 1);
  EXPECT_EQ(fits_->Start("s").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(FitSchedulerTest,
       DebouncedAddsTriggerAFitWhosePublishedMapRetrievalUses) {
  std::shared_ptr<store::Store> s = Create("s", 8, 20, 50, 6);
  const std::shared_ptr<const core::FeatureMap> initial = s->view()->map();
  ASSERT_TRUE(initial->identity());
  Add(*s, 4, 1);
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(fits_->Status("s")->state, State::kIdle)
      << "fewer than 6 new patterns";
  Add(*s, 4, 2);
  const FitStatus done = WaitFor(
      "s", [](const FitStatus& f) { return f.state == State::kSucceeded; });
  ASSERT_EQ(done.state, State::kSucceeded);
  EXPECT_EQ(done.map_version, 1u);
  EXPECT_EQ(done.patterns_fitted, 8u);
  EXPECT_EQ(done.epoch, 20u);
  EXPECT_LT(done.loss_after, done.loss_before);

  std::shared_ptr<const store::StoreView> view = s->view();
  EXPECT_EQ(view->fit().version, 1u);
  EXPECT_FALSE(view->map()->identity());
  ExpectKeysMatchMap(*view);
  // Retrieval scores with the new map: the kernel score of a pattern with
  // itself is ||W xi||^2 under the fitted W.
  std::vector<float> query = s->Get(1)->values;
  store::RetrieveRequest request;
  request.queries = query;
  request.num_queries = 1;
  request.top_k = 8;
  absl::StatusOr<store::RetrieveResult> r =
      store::Retrieve(*view, request, store::Limits{}, {});
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<float> feature(view->map()->out_dim());
  view->map()->Apply(query.data(), 1, feature.data());
  double sq = 0;
  for (float f : feature) sq += double{f} * f;
  bool found = false;
  for (const store::MatchedPattern& m : r->matches[0]) {
    if (m.id == 1) {
      EXPECT_NEAR(m.score, 0.05 * sq, 1e-3 * 0.05 * sq);
      found = true;
    }
  }
  EXPECT_TRUE(found);
}

TEST_F(FitSchedulerTest, CancelStopsARunningFitAndKeepsThePreviousMap) {
  std::shared_ptr<store::Store> s = Create("s", 32, 100000, 60000);
  Add(*s, 300, 1);
  ASSERT_TRUE(fits_->Start("s").ok());
  FitStatus running = WaitFor("s", [](const FitStatus& f) {
    return f.state == State::kRunning && f.epoch >= 2;
  });
  ASSERT_EQ(running.state, State::kRunning);
  ASSERT_TRUE(fits_->Cancel("s").ok());
  const FitStatus cancelled = WaitFor(
      "s", [](const FitStatus& f) { return f.state == State::kCancelled; });
  EXPECT_EQ(cancelled.state, State::kCancelled);
  EXPECT_LT(cancelled.epoch, 100000u);
  EXPECT_EQ(s->view()->fit().version, 0u);
  EXPECT_TRUE(s->view()->map()->identity());
}

TEST_F(FitSchedulerTest, DeletingTheStoreStopsItsFit) {
  std::shared_ptr<store::Store> s = Create("s", 32, 100000, 60000);
  Add(*s, 300, 1);
  ASSERT_TRUE(fits_->Start("s").ok());
  WaitFor("s", [](const FitStatus& f) { return f.state == State::kRunning; });
  ASSERT_TRUE(registry_->Delete("s").ok());
  fits_->StoreDeleted("s");
  // The worker is free again: a fit of another store completes.
  std::shared_ptr<store::Store> t = Create("t", 4, 3, 60000);
  Add(*t, 5, 2);
  ASSERT_TRUE(fits_->Start("t").ok());
  EXPECT_EQ(
      WaitFor("t",
              [](const FitStatus& f) { return f.state == State::kSucceeded; })
          .state,
      State::kSucceeded);
}

// Regression: a store deleted during its fit and created again inherited the
// old fit's CANCELLED state.
TEST_F(FitSchedulerTest, AStoreCreatedAgainAfterDeletionStartsIdle) {
  std::shared_ptr<store::Store> s = Create("s", 32, 100000, 60000);
  Add(*s, 300, 1);
  ASSERT_TRUE(fits_->Start("s").ok());
  WaitFor("s", [](const FitStatus& f) {
    return f.state == State::kRunning && f.epoch >= 1;
  });
  ASSERT_TRUE(registry_->Delete("s").ok());
  fits_->StoreDeleted("s");
  std::shared_ptr<store::Store> again = Create("s", 8, 3, 60000);
  EXPECT_EQ(fits_->Status("s")->state, State::kIdle);
  // Long enough for the old fit to notice its cancellation and end.
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(fits_->Status("s")->state, State::kIdle);
  EXPECT_EQ(fits_->Status("s")->map_version, 0u);
  // And it fits as a new store does.
  Add(*again, 5, 2);
  ASSERT_TRUE(fits_->Start("s").ok());
  EXPECT_EQ(
      WaitFor("s",
              [](const FitStatus& f) { return f.state == State::kSucceeded; })
          .state,
      State::kSucceeded);
  EXPECT_EQ(again->view()->fit().version, 1u);
}

TEST_F(FitSchedulerTest, FitsUnderConcurrentAddsAndQueriesStayConsistent) {
  std::shared_ptr<store::Store> s = Create("s", 16, 15, 1);
  Add(*s, 50, 1);
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (uint32_t round = 0; round < 60; ++round) {
      Add(*s, 10, 100 + round);
      absl::SleepFor(absl::Milliseconds(3));
    }
  });
  std::thread reader([&] {
    std::vector<float> query(16, 0.3f);
    store::RetrieveRequest request;
    request.queries = query;
    request.num_queries = 1;
    while (!done) {
      std::shared_ptr<const store::StoreView> view = s->view();
      ASSERT_TRUE(store::Retrieve(*view, request, store::Limits{}, {}).ok());
      ExpectKeysMatchMap(*view);
    }
  });
  writer.join();
  ASSERT_TRUE(fits_->Start("s").ok() ||
              fits_->Status("s")->state == State::kRunning);
  const FitStatus last = WaitFor("s", [&](const FitStatus& f) {
    return f.state == State::kSucceeded && f.patterns_fitted == 650;
  });
  done = true;
  reader.join();
  EXPECT_EQ(last.patterns_fitted, 650u);
  EXPECT_GE(last.map_version, 3u) << "fits ran while patterns were added";
  EXPECT_EQ(s->view()->size(), 650u);
  ExpectKeysMatchMap(*s->view());
}

}  // namespace
}  // namespace engram::jobs

namespace engram::jobs {
namespace {

// Regression: the scheduler loop and the workers shared one condition
// variable, so the wake-up for a queued fit could go to the scheduler and the
// fit stayed queued until some later signal.
TEST_F(FitSchedulerTest, EveryQueuedFitRunsWhileTheSchedulerTicks) {
  for (int i = 0; i < 20; ++i) {
    std::shared_ptr<store::Store> s =
        Create("s" + std::to_string(i), 4, 2, 60000);
    Add(*s, 3, i);
    ASSERT_TRUE(fits_->Start(s->name()).ok());
  }
  for (int i = 0; i < 20; ++i) {
    const std::string name = "s" + std::to_string(i);
    EXPECT_EQ(
        WaitFor(name,
                [](const FitStatus& f) { return f.state == State::kSucceeded; })
            .state,
        State::kSucceeded)
        << name;
  }
}

}  // namespace
}  // namespace engram::jobs

namespace engram::jobs {
namespace {

class CalibrationJobTest : public FitSchedulerTest {
 protected:
  // A store of `n` noisy copies of 10 prototypes, l2 with a poor beta.
  std::shared_ptr<store::Store> CreatePlain(const std::string& name,
                                            bool automatic, bool apply) {
    store::StoreSettings s;
    s.name = name;
    s.dimension = 16;
    s.retrieval.similarity = core::Similarity::kL2;
    s.retrieval.beta = 0.001f;
    s.feature_map.debounce_ms = 50;
    s.calibration.automatic = automatic;
    s.calibration.apply = apply;
    s.calibration.corruption = core::Corruption::kGaussian;
    s.calibration.level = 0.2f;
    s.calibration.sample_size = 64;
    s.calibration.seed = 5;
    return *registry_->Create(s);
  }

  // Waits (at most 30 s) until a calibration queued after `after` finished.
  CalibrationStatus WaitCalibrated(const std::string& name, uint64_t after) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    CalibrationStatus status = *fits_->Calibration(name);
    using S = CalibrationStatus::State;
    while (absl::Now() < deadline &&
           (status.generation <= after || status.state == S::kPending ||
            status.state == S::kRunning || status.state == S::kIdle)) {
      absl::SleepFor(absl::Milliseconds(10));
      status = *fits_->Calibration(name);
    }
    return status;
  }
};

using CalState = CalibrationStatus::State;

TEST_F(CalibrationJobTest, OnRequestReportsThenAppliesThenKeeps) {
  std::shared_ptr<store::Store> s = CreatePlain("c", false, false);
  EXPECT_EQ(fits_->StartCalibration("c", std::nullopt).status().code(),
            absl::StatusCode::kFailedPrecondition);  // Empty.
  ASSERT_TRUE(s->Add(Patterns(200, 16, 1)).ok());
  EXPECT_EQ(fits_->Calibration("c")->state, CalState::kIdle);

  // Reported only (store.calibration.apply is false).
  CalibrationStatus started = *fits_->StartCalibration("c", std::nullopt);
  CalibrationStatus done = WaitCalibrated("c", started.generation - 1);
  ASSERT_EQ(done.state, CalState::kSucceeded) << done.error;
  EXPECT_TRUE(done.report.improved);
  EXPECT_FALSE(done.report.applied);
  EXPECT_LT(done.report.error, done.report.previous_error);
  EXPECT_GT(done.report.beta, 0.001f);
  EXPECT_EQ(done.report.patterns, 200u);
  EXPECT_EQ(done.report.sample_size, 64u);
  std::shared_ptr<const store::StoreView> view = s->view();
  EXPECT_EQ(view->settings().retrieval.beta, 0.001f);
  EXPECT_EQ(view->settings().calibration_report.error, done.report.error);

  // The request's override applies it, with the same figures (same seed).
  started = *fits_->StartCalibration("c", true);
  done = WaitCalibrated("c", started.generation - 1);
  ASSERT_EQ(done.state, CalState::kSucceeded) << done.error;
  EXPECT_TRUE(done.report.applied);
  view = s->view();
  EXPECT_EQ(view->settings().retrieval.beta, done.report.beta);
  EXPECT_EQ(view->settings().retrieval.similarity, core::Similarity::kL2);
  EXPECT_TRUE(view->settings().calibration_report.applied);

  // From the applied setting nothing is better: kept.
  const float beta = view->settings().retrieval.beta;
  started = *fits_->StartCalibration("c", true);
  done = WaitCalibrated("c", started.generation - 1);
  ASSERT_EQ(done.state, CalState::kSucceeded) << done.error;
  EXPECT_FALSE(done.report.applied);
  EXPECT_EQ(done.report.previous_error, done.report.error);
  EXPECT_EQ(s->view()->settings().retrieval.beta, beta);
}

TEST_F(CalibrationJobTest, PlainStoresCalibrateAutomaticallyOnceAddsGoQuiet) {
  std::shared_ptr<store::Store> s = CreatePlain("auto", true, true);
  ASSERT_TRUE(s->Add(Patterns(150, 16, 2)).ok());
  fits_->PatternsAdded("auto", 150);
  const CalibrationStatus done = WaitCalibrated("auto", 0);
  ASSERT_EQ(done.state, CalState::kSucceeded) << done.error;
  EXPECT_TRUE(done.report.applied);
  EXPECT_EQ(s->view()->settings().retrieval.beta, done.report.beta);
  // The fit side stays not configured.
  EXPECT_EQ(fits_->Status("auto")->state, State::kNotConfigured);
}

TEST_F(CalibrationJobTest, UhopStoresCalibrateAfterEachFit) {
  std::shared_ptr<store::Store> s = Create("u", 8, 5, 50);
  ASSERT_TRUE(s->UpdateSettings([](store::StoreSettings& settings) {
                 settings.calibration.automatic = true;
                 settings.calibration.apply = true;
                 settings.calibration.search_similarity = true;
                 return absl::OkStatus();
               }).ok());
  Add(*s, 60, 3);
  const CalibrationStatus done = WaitCalibrated("u", 0);
  ASSERT_EQ(done.state, CalState::kSucceeded) << done.error;
  EXPECT_EQ(fits_->Status("u")->state, State::kSucceeded);
  EXPECT_EQ(done.report.patterns, 60u);
  EXPECT_GE(done.report.recall_at_1, done.report.previous_recall_at_1);
  EXPECT_LE(done.report.error, done.report.previous_error);
}

}  // namespace
}  // namespace engram::jobs
