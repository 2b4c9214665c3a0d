#include "server/jobs/job_runner.h"

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

using FitState = v1::FitStatus;
using FitStatus = v1::FitStatus;
using CalibrationStatus = v1::CalibrationStatus;

class JobRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_ =
        std::make_unique<store::StoreRegistry>(store::Limits{}, &storage_);
    ASSERT_TRUE(registry_->Load().ok());
    fits_ = std::make_unique<JobRunner>(registry_.get(), JobRunnerOptions{});
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

  // Waits until `done` holds for the store's fit status (at most 30 s).
  FitStatus WaitFor(const std::string& name,
                    const std::function<bool(const FitStatus&)>& done) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (true) {
      const uint64_t seen = *fits_->Generation(JobKind::kFit, name);
      FitStatus status = *fits_->FitStatus(name);
      if (done(status) || absl::Now() > deadline) return status;
      fits_->WaitForChange(JobKind::kFit, name, seen, absl::Milliseconds(200))
          .IgnoreError();
    }
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
        set.map->Apply(static_cast<const float*>(block.rows) + r * set.dim, 1,
                       key.data());
        for (size_t k = 0; k < p; ++k) {
          ASSERT_NEAR(static_cast<const float*>(block.keys)[r * p + k], key[k],
                      1e-3 * (1 + std::fabs(key[k])));
        }
      }
    }
  }

  store::EphemeralStorage storage_;
  std::unique_ptr<store::StoreRegistry> registry_;
  std::unique_ptr<JobRunner> fits_;
};

TEST_F(JobRunnerTest, StoresWithoutUhopAreNotConfigured) {
  store::StoreSettings s;
  s.name = "plain";
  s.dimension = 4;
  ASSERT_TRUE(registry_->Create(s).ok());
  EXPECT_EQ(fits_->FitStatus("plain")->state(), FitState::NOT_CONFIGURED);
  EXPECT_EQ(fits_->Start(JobKind::kFit, "plain").code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(fits_->FitStatus("missing").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(JobRunnerTest, StartNeedsTwoPatterns) {
  std::shared_ptr<store::Store> s = Create("s", 4, 5, 60000);
  Add(*s, 1, 1);
  EXPECT_EQ(fits_->Start(JobKind::kFit, "s").code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(JobRunnerTest, DebouncedAddsTriggerAFitWhosePublishedMapRetrievalUses) {
  std::shared_ptr<store::Store> s = Create("s", 8, 20, 50, 6);
  const std::shared_ptr<const core::FeatureMap> initial = s->view()->map();
  ASSERT_TRUE(initial->identity());
  Add(*s, 4, 1);
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(fits_->FitStatus("s")->state(), FitState::IDLE)
      << "fewer than 6 new patterns";
  Add(*s, 4, 2);
  const FitStatus done = WaitFor(
      "s", [](const FitStatus& f) { return f.state() == FitState::SUCCEEDED; });
  ASSERT_EQ(done.state(), FitState::SUCCEEDED);
  EXPECT_EQ(done.map_version(), 1u);
  EXPECT_EQ(done.patterns_fitted(), 8u);
  EXPECT_EQ(done.epoch(), 20u);
  EXPECT_LT(done.loss_after(), done.loss_before());

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

TEST_F(JobRunnerTest, CancelStopsARunningFitAndKeepsThePreviousMap) {
  std::shared_ptr<store::Store> s = Create("s", 32, 100000, 60000);
  Add(*s, 300, 1);
  ASSERT_TRUE(fits_->Start(JobKind::kFit, "s").ok());
  FitStatus running = WaitFor("s", [](const FitStatus& f) {
    return f.state() == FitState::RUNNING && f.epoch() >= 2;
  });
  ASSERT_EQ(running.state(), FitState::RUNNING);
  ASSERT_TRUE(fits_->Cancel(JobKind::kFit, "s").ok());
  const FitStatus cancelled = WaitFor(
      "s", [](const FitStatus& f) { return f.state() == FitState::CANCELLED; });
  EXPECT_EQ(cancelled.state(), FitState::CANCELLED);
  EXPECT_LT(cancelled.epoch(), 100000u);
  EXPECT_EQ(s->view()->fit().version, 0u);
  EXPECT_TRUE(s->view()->map()->identity());
}

TEST_F(JobRunnerTest, DeletingTheStoreStopsItsFit) {
  std::shared_ptr<store::Store> s = Create("s", 32, 100000, 60000);
  Add(*s, 300, 1);
  ASSERT_TRUE(fits_->Start(JobKind::kFit, "s").ok());
  WaitFor("s",
          [](const FitStatus& f) { return f.state() == FitState::RUNNING; });
  ASSERT_TRUE(registry_->Delete("s").ok());
  fits_->StoreDeleted("s");
  // The worker is free again: a fit of another store completes.
  std::shared_ptr<store::Store> t = Create("t", 4, 3, 60000);
  Add(*t, 5, 2);
  ASSERT_TRUE(fits_->Start(JobKind::kFit, "t").ok());
  EXPECT_EQ(WaitFor("t",
                    [](const FitStatus& f) {
                      return f.state() == FitState::SUCCEEDED;
                    })
                .state(),
            FitState::SUCCEEDED);
}

// Regression: a store deleted during its fit and created again inherited the
// old fit's CANCELLED state.
TEST_F(JobRunnerTest, AStoreCreatedAgainAfterDeletionStartsIdle) {
  std::shared_ptr<store::Store> s = Create("s", 32, 100000, 60000);
  Add(*s, 300, 1);
  ASSERT_TRUE(fits_->Start(JobKind::kFit, "s").ok());
  WaitFor("s", [](const FitStatus& f) {
    return f.state() == FitState::RUNNING && f.epoch() >= 1;
  });
  ASSERT_TRUE(registry_->Delete("s").ok());
  fits_->StoreDeleted("s");
  std::shared_ptr<store::Store> again = Create("s", 8, 3, 60000);
  EXPECT_EQ(fits_->FitStatus("s")->state(), FitState::IDLE);
  // Long enough for the old fit to notice its cancellation and end.
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(fits_->FitStatus("s")->state(), FitState::IDLE);
  EXPECT_EQ(fits_->FitStatus("s")->map_version(), 0u);
  // And it fits as a new store does.
  Add(*again, 5, 2);
  ASSERT_TRUE(fits_->Start(JobKind::kFit, "s").ok());
  EXPECT_EQ(WaitFor("s",
                    [](const FitStatus& f) {
                      return f.state() == FitState::SUCCEEDED;
                    })
                .state(),
            FitState::SUCCEEDED);
  EXPECT_EQ(again->view()->fit().version, 1u);
}

TEST_F(JobRunnerTest, FitsUnderConcurrentAddsAndQueriesStayConsistent) {
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
  ASSERT_TRUE(fits_->Start(JobKind::kFit, "s").ok() ||
              fits_->FitStatus("s")->state() == FitState::RUNNING);
  const FitStatus last = WaitFor("s", [&](const FitStatus& f) {
    return f.state() == FitState::SUCCEEDED && f.patterns_fitted() == 650;
  });
  done = true;
  reader.join();
  EXPECT_EQ(last.patterns_fitted(), 650u);
  EXPECT_GE(last.map_version(), 3u) << "fits ran while patterns were added";
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
// The scheduler sleeps until a store's debounce ends: an add during it
// moves the end (the scheduler, woken at the old end, sleeps again), and
// adds after a fit wake it for the next one.
TEST_F(JobRunnerTest, AddsDuringTheDebounceMoveTheFitAndLaterAddsFitAgain) {
  std::shared_ptr<store::Store> s = Create("s", 4, 5, 300);
  Add(*s, 3, 1);
  absl::SleepFor(absl::Milliseconds(150));
  Add(*s, 3, 2);
  const absl::Time last_add = absl::Now();
  // The first moment the fit is anything but IDLE.
  absl::Time left_idle = absl::InfiniteFuture();
  const FitStatus done = WaitFor("s", [&](const FitStatus& f) {
    if (f.state() != FitState::IDLE && left_idle == absl::InfiniteFuture()) {
      left_idle = absl::Now();
    }
    return f.state() == FitState::SUCCEEDED;
  });
  ASSERT_EQ(done.state(), FitState::SUCCEEDED);
  EXPECT_EQ(done.patterns_fitted(), 6u);
  EXPECT_GE(left_idle - last_add,
            absl::Milliseconds(300) - absl::Milliseconds(5))
      << "the fit started before the debounce after the last add";

  Add(*s, 3, 3);
  const FitStatus again =
      WaitFor("s", [](const FitStatus& f) { return f.map_version() == 2; });
  EXPECT_EQ(again.map_version(), 2u);
  EXPECT_EQ(again.patterns_fitted(), 9u);
}

TEST_F(JobRunnerTest, EveryQueuedFitRunsWhileTheSchedulerTicks) {
  for (int i = 0; i < 20; ++i) {
    std::shared_ptr<store::Store> s =
        Create("s" + std::to_string(i), 4, 2, 60000);
    Add(*s, 3, i);
    ASSERT_TRUE(fits_->Start(JobKind::kFit, s->name()).ok());
  }
  for (int i = 0; i < 20; ++i) {
    const std::string name = "s" + std::to_string(i);
    EXPECT_EQ(WaitFor(name,
                      [](const FitStatus& f) {
                        return f.state() == FitState::SUCCEEDED;
                      })
                  .state(),
              FitState::SUCCEEDED)
        << name;
  }
}

}  // namespace
}  // namespace engram::jobs

namespace engram::jobs {
namespace {

class CalibrationJobTest : public JobRunnerTest {
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

  // Starts a calibration and waits (at most 30 s) until it has finished.
  CalibrationStatus Calibrate(const std::string& name,
                              std::optional<bool> apply) {
    const uint64_t before = *fits_->Generation(JobKind::kCalibration, name);
    EXPECT_TRUE(fits_->Start(JobKind::kCalibration, name, apply).ok());
    return WaitCalibrated(name, before);
  }

  // Waits (at most 30 s) until a calibration that changed the status after
  // generation `after` has finished.
  CalibrationStatus WaitCalibrated(const std::string& name, uint64_t after) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (true) {
      const uint64_t seen = *fits_->Generation(JobKind::kCalibration, name);
      CalibrationStatus status = *fits_->CalibrationStatus(name);
      const bool busy = status.state() == CalibrationStatus::PENDING ||
                        status.state() == CalibrationStatus::RUNNING ||
                        status.state() == CalibrationStatus::IDLE;
      if ((seen > after && !busy) || absl::Now() > deadline) return status;
      fits_
          ->WaitForChange(JobKind::kCalibration, name, seen,
                          absl::Milliseconds(200))
          .IgnoreError();
    }
  }
};

TEST_F(CalibrationJobTest, OnRequestReportsThenAppliesThenKeeps) {
  std::shared_ptr<store::Store> s = CreatePlain("c", false, false);
  EXPECT_EQ(fits_->Start(JobKind::kCalibration, "c").code(),
            absl::StatusCode::kFailedPrecondition);  // Empty.
  ASSERT_TRUE(s->Add(Patterns(200, 16, 1)).ok());
  EXPECT_EQ(fits_->CalibrationStatus("c")->state(), CalibrationStatus::IDLE);

  // Reported only (store.calibration.apply is false).
  CalibrationStatus done = Calibrate("c", std::nullopt);
  ASSERT_EQ(done.state(), CalibrationStatus::SUCCEEDED) << done.error();
  EXPECT_TRUE(done.report().improved());
  EXPECT_FALSE(done.report().applied());
  EXPECT_LT(done.report().error(), done.report().previous_error());
  EXPECT_GT(done.report().beta(), 0.001f);
  EXPECT_EQ(done.report().pattern_count(), 200u);
  EXPECT_EQ(done.report().sample_size(), 64u);
  std::shared_ptr<const store::StoreView> view = s->view();
  EXPECT_EQ(view->settings().retrieval.beta, 0.001f);
  EXPECT_EQ(view->settings().calibration_report.error(), done.report().error());

  // The request's override applies it, with the same figures (same seed).
  done = Calibrate("c", true);
  ASSERT_EQ(done.state(), CalibrationStatus::SUCCEEDED) << done.error();
  EXPECT_TRUE(done.report().applied());
  view = s->view();
  EXPECT_EQ(view->settings().retrieval.beta, done.report().beta());
  EXPECT_EQ(view->settings().retrieval.similarity, core::Similarity::kL2);
  EXPECT_TRUE(view->settings().calibration_report.applied());

  // From the applied setting nothing is better: kept.
  const float beta = view->settings().retrieval.beta;
  done = Calibrate("c", true);
  ASSERT_EQ(done.state(), CalibrationStatus::SUCCEEDED) << done.error();
  EXPECT_FALSE(done.report().applied());
  EXPECT_EQ(done.report().previous_error(), done.report().error());
  EXPECT_EQ(s->view()->settings().retrieval.beta, beta);
}

TEST_F(CalibrationJobTest, PlainStoresCalibrateAutomaticallyOnceAddsGoQuiet) {
  std::shared_ptr<store::Store> s = CreatePlain("auto", true, true);
  ASSERT_TRUE(s->Add(Patterns(150, 16, 2)).ok());
  fits_->PatternsAdded("auto", 150);
  const CalibrationStatus done = WaitCalibrated("auto", 0);
  ASSERT_EQ(done.state(), CalibrationStatus::SUCCEEDED) << done.error();
  EXPECT_TRUE(done.report().applied());
  EXPECT_EQ(s->view()->settings().retrieval.beta, done.report().beta());
  // The fit side stays not configured.
  EXPECT_EQ(fits_->FitStatus("auto")->state(), FitState::NOT_CONFIGURED);
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
  ASSERT_EQ(done.state(), CalibrationStatus::SUCCEEDED) << done.error();
  EXPECT_EQ(fits_->FitStatus("u")->state(), FitState::SUCCEEDED);
  EXPECT_EQ(done.report().pattern_count(), 60u);
  EXPECT_GE(done.report().recall_at_1(), done.report().previous_recall_at_1());
  EXPECT_LE(done.report().error(), done.report().previous_error());
}

}  // namespace
}  // namespace engram::jobs
