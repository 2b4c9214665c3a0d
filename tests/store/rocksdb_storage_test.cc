#include "server/store/rocksdb_storage.h"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engram/storage/v1/records.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "rocksdb/write_batch.h"
#include "server/store/internal/wal_scan.h"
#include "server/store/records.h"
#include "server/store/registry.h"

namespace engram::store {
namespace {

class RocksDbStorageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat(
               "engram_rocksdb_",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    Reopen();
  }
  void TearDown() override {
    registry_.reset();
    storage_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Closes everything and loads it back, as a restart does.
  void Reopen() {
    registry_.reset();
    storage_.reset();
    absl::StatusOr<std::unique_ptr<RocksDbStorage>> storage =
        RocksDbStorage::Open({dir_.string(), true});
    ASSERT_TRUE(storage.ok()) << storage.status();
    storage_ = std::move(*storage);
    registry_ = std::make_unique<StoreRegistry>(Limits{}, storage_.get());
    ASSERT_TRUE(registry_->Load().ok());
  }

  std::shared_ptr<Store> Create(const std::string& name, uint32_t dim) {
    StoreSettings s;
    s.name = name;
    s.dimension = dim;
    s.retrieval.beta = 2.5f;
    s.retrieval.separation = core::Separation::kEntmax15;
    s.low_rank.tolerance = 1e-4;
    s.create_time = absl::FromUnixSeconds(1700000000);
    return *registry_->Create(s);
  }

  static Pattern P(uint64_t id, std::vector<float> values,
                   std::string label = "") {
    return Pattern{id, std::move(values), std::move(label), {}};
  }

  std::filesystem::path dir_;
  std::unique_ptr<RocksDbStorage> storage_;
  std::unique_ptr<StoreRegistry> registry_;
};

TEST_F(RocksDbStorageTest, ReducedPrecisionStoresComeBackAsTheyWere) {
  for (core::Precision p :
       {core::Precision::kBFloat16, core::Precision::kFloat16}) {
    StoreSettings s;
    s.name = std::string(core::PrecisionName(p));
    s.dimension = 3;
    s.precision = p;
    std::shared_ptr<Store> store = *registry_->Create(s);
    ASSERT_TRUE(store
                    ->Add({P(1, {0.1f, -2.7f, 1000.3f}, "a"),
                           P(2, {1e-3f, 3.14159f, -0.0f})})
                    .ok());
    ASSERT_TRUE(store->Delete({1}).ok());
    ASSERT_TRUE(store->Add({P(3, {7.77f, 0.5f, 2.0f})}).ok());
  }
  std::map<std::string, std::pair<uint64_t, std::vector<float>>> before;
  for (const char* name : {"bfloat16", "float16"}) {
    std::shared_ptr<Store> store = *registry_->Get(name);
    before[name] = {store->view()->digest(), store->Get(3)->values};
  }
  Reopen();
  for (const char* name : {"bfloat16", "float16"}) {
    std::shared_ptr<Store> back = *registry_->Get(name);
    EXPECT_EQ(core::PrecisionName(back->view()->settings().precision), name);
    EXPECT_EQ(back->view()->size(), 2u);
    EXPECT_EQ(back->view()->digest(), before[name].first) << name;
    EXPECT_EQ(back->Get(3)->values, before[name].second) << name;
    EXPECT_EQ(std::signbit(back->Get(2)->values[2]), true);  // -0 stays.
  }
}

TEST_F(RocksDbStorageTest, ARestoredStoreReplacesAllOfTheOldOneDurably) {
  std::shared_ptr<Store> a = Create("a", 2);
  ASSERT_TRUE(a->Add({P(1, {1, 1}), P(2, {2, 2}), P(3, {3, 3})}).ok());
  ASSERT_TRUE(a->RaiseStamp(9).ok());
  StoreImage image;
  image.settings = a->view()->settings();
  image.settings.retrieval.beta = 4;
  image.next_id = 50;
  image.patterns = {P(2, {5, 5}, "five"), P(40, {4, 4})};
  for (const Pattern& p : image.patterns) {
    image.digest += PatternDigest(p.id, p.values.data(), 2, p.label, {});
  }
  ASSERT_TRUE(registry_->Restore(image, /*replace=*/true).ok());
  image.settings.name = "b";  // And one under a new name.
  ASSERT_TRUE(registry_->Restore(image, /*replace=*/false).ok());
  Reopen();
  for (const char* name : {"a", "b"}) {
    std::shared_ptr<Store> back = *registry_->Get(name);
    EXPECT_EQ(back->view()->size(), 2u) << name;
    EXPECT_EQ(back->view()->digest(), image.digest) << name;
    EXPECT_EQ(back->view()->settings().retrieval.beta, 4.0f);
    EXPECT_EQ(back->Get(2)->label, "five");
    EXPECT_EQ(back->Get(1).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(back->stamp(), 0u);  // The old store's stamp went too.
    EXPECT_EQ(*back->Add({P(0, {0, 0})}), (std::vector<uint64_t>{50}));
  }
}

TEST_F(RocksDbStorageTest, ExpiriesSurviveARestart) {
  std::shared_ptr<Store> a = Create("a", 2);
  Pattern expiring = P(1, {1, 2});
  expiring.expire_ns = absl::ToUnixNanos(absl::Now() + absl::Hours(2));
  ASSERT_TRUE(a->Add({expiring, P(2, {3, 4})}).ok());
  Reopen();
  std::shared_ptr<Store> back = *registry_->Get("a");
  EXPECT_EQ(back->Get(1)->expire_ns, expiring.expire_ns);
  EXPECT_EQ(back->Get(2)->expire_ns, 0);
  EXPECT_EQ(back->view()->min_expire_ns(), expiring.expire_ns);
  // The sweep after the restart finds it.
  EXPECT_EQ(*back->ExpireDue(expiring.expire_ns), 1u);
  Reopen();
  EXPECT_EQ((*registry_->Get("a"))->view()->size(), 1u);
}

TEST_F(RocksDbStorageTest, EverythingSurvivesARestart) {
  std::shared_ptr<Store> a = Create("a", 2);
  Pattern tagged = P(7, {1.5f, -2}, "seven");
  tagged.metadata = {{"k", "v"}, {"source", "cam"}};
  ASSERT_TRUE(a->Add({tagged, P(0, {3, 4}), P(0, {5, 6})}).ok());
  ASSERT_TRUE(a->Delete({8}).ok());
  ASSERT_TRUE(a->UpdateSettings([](StoreSettings& s) {
                 s.retrieval.steps = 4;
                 return absl::OkStatus();
               }).ok());
  Reopen();
  std::shared_ptr<Store> back = *registry_->Get("a");
  const StoreSettings& s = back->view()->settings();
  EXPECT_EQ(s.dimension, 2u);
  EXPECT_EQ(s.retrieval.beta, 2.5f);
  EXPECT_EQ(s.retrieval.steps, 4u);
  EXPECT_EQ(s.retrieval.separation, core::Separation::kEntmax15);
  EXPECT_EQ(s.low_rank.tolerance, 1e-4);
  EXPECT_EQ(s.create_time, absl::FromUnixSeconds(1700000000));
  EXPECT_EQ(back->view()->size(), 2u);
  absl::StatusOr<Pattern> seven = back->Get(7);
  ASSERT_TRUE(seven.ok());
  EXPECT_EQ(seven->values, (std::vector<float>{1.5f, -2}));
  EXPECT_EQ(seven->label, "seven");
  EXPECT_EQ(seven->metadata, tagged.metadata);
  EXPECT_EQ(back->Get(8).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(back->Get(9)->values, (std::vector<float>{5, 6}));
  // Ids are never reused, even the deleted highest one.
  ASSERT_TRUE(back->Delete({9}).ok());
  Reopen();
  EXPECT_EQ(*(*registry_->Get("a"))->Add({P(0, {0, 0})}),
            (std::vector<uint64_t>{10}));
}

TEST_F(RocksDbStorageTest, DeletedStoresStayDeletedAndNamesDoNotBleed) {
  std::shared_ptr<Store> a = Create("a", 1);
  std::shared_ptr<Store> ab = Create("a.b", 1);
  std::shared_ptr<Store> a0 = Create("a0", 1);
  ASSERT_TRUE(a->Add({P(1, {1}), P(2, {2})}).ok());
  ASSERT_TRUE(ab->Add({P(1, {10})}).ok());
  ASSERT_TRUE(a0->Add({P(1, {20})}).ok());
  ASSERT_TRUE(registry_->Delete("a").ok());
  Reopen();
  EXPECT_EQ(registry_->Get("a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*registry_->Get("a.b"))->Get(1)->values[0], 10.0f);
  EXPECT_EQ((*registry_->Get("a0"))->Get(1)->values[0], 20.0f);
  std::shared_ptr<Store> again = Create("a", 1);
  EXPECT_EQ(again->view()->size(), 0u);
  Reopen();
  EXPECT_EQ((*registry_->Get("a"))->view()->size(), 0u);
}

TEST_F(RocksDbStorageTest, ADamagedStoreIsReportedAndTheOthersServe) {
  ASSERT_TRUE(Create("good", 2)->Add({P(1, {1, 2})}).ok());
  ASSERT_TRUE(Create("bad", 2)->Add({P(1, {1, 2}), P(2, {3, 4})}).ok());
  registry_.reset();
  storage_.reset();
  {
    // Truncate one record of "bad" behind engram's back.
    std::vector<std::string> names;
    ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::Options(),
                                                dir_.string(), &names)
                    .ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> families;
    for (const std::string& name : names)
      families.emplace_back(name, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), dir_.string(), families,
                                  &handles, &db)
                    .ok());
    for (rocksdb::ColumnFamilyHandle* h : handles) {
      if (h->GetName() == "store/bad") {
        std::string key = std::string("p") + std::string(7, '\0') + '\2';
        ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), h, key, "\x01\x02").ok());
      }
      ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
    }
    delete db;
  }
  Reopen();
  EXPECT_TRUE(registry_->Get("good").ok());
  absl::Status bad = registry_->Get("bad").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(bad.message().find("DAMAGED"), std::string::npos) << bad;
  ASSERT_EQ(registry_->Damaged().size(), 1u);
  EXPECT_EQ(registry_->Damaged()[0].name, "bad");
  EXPECT_EQ(registry_->Damaged()[0].status.code(), absl::StatusCode::kDataLoss);
}

TEST_F(RocksDbStorageTest, AFullDiskFailsTheWriteAndChangesNothing) {
  std::shared_ptr<Store> s = Create("s", 256);
  ASSERT_TRUE(s->Add({P(1, std::vector<float>(256, 1.0f))}).ok());
  // Files may not grow past 64 KiB from here: writes fail as on a full disk.
  std::signal(SIGXFSZ, SIG_IGN);
  rlimit old;
  getrlimit(RLIMIT_FSIZE, &old);
  rlimit small = old;
  small.rlim_cur = 64 << 10;
  setrlimit(RLIMIT_FSIZE, &small);
  std::vector<Pattern> big;
  for (int i = 0; i < 200; ++i)
    big.push_back(P(0, std::vector<float>(256, 2.0f)));
  absl::StatusOr<std::vector<uint64_t>> added = s->Add(big);
  setrlimit(RLIMIT_FSIZE, &old);
  EXPECT_FALSE(added.ok());
  EXPECT_TRUE(added.status().code() == absl::StatusCode::kUnavailable ||
              added.status().code() == absl::StatusCode::kResourceExhausted)
      << added.status();
  EXPECT_NE(added.status().message().find("storage"), std::string::npos);
  // Nothing was applied, and reads keep working.
  EXPECT_EQ(s->view()->size(), 1u);
  EXPECT_TRUE(s->Get(1).ok());
  Reopen();
  EXPECT_EQ((*registry_->Get("s"))->view()->size(), 1u);
}

TEST_F(RocksDbStorageTest, AFittedMapSurvivesARestart) {
  StoreSettings settings;
  settings.name = "u";
  settings.dimension = 3;
  settings.feature_map.kind = FeatureMapKind::kUhop;
  settings.feature_map.feature_dim = 2;
  settings.retrieval.similarity = core::Similarity::kKernelDot;
  std::shared_ptr<Store> u = *registry_->Create(settings);
  ASSERT_TRUE(u->Add({P(1, {1, 2, 3}), P(2, {0, 1, 0})}).ok());
  auto map = std::make_shared<core::FeatureMap>(
      3, 2, std::vector<float>{1, 0, 0, 0, 0, 2});
  FitRecord record{1, -0.5, -0.9, 100, 1.25, 2};
  ASSERT_TRUE(u->PublishMap(map, record).ok());
  ASSERT_TRUE(u->Add({P(3, {4, 5, 6})}).ok());
  Reopen();
  std::shared_ptr<const StoreView> view = (*registry_->Get("u"))->view();
  EXPECT_EQ(view->fit().version, 1u);
  EXPECT_EQ(view->fit().loss_after, -0.9);
  EXPECT_EQ(view->fit().patterns_fitted, 2u);
  EXPECT_EQ(view->map()->weights(), map->weights());
  // Keys are rebuilt with the stored map: Phi(4, 5, 6) = (4, 12).
  const core::MemorySet set = view->memories();
  EXPECT_EQ(static_cast<const float*>(set.blocks[0].keys)[2 * 2 + 0], 4.0f);
  EXPECT_EQ(static_cast<const float*>(set.blocks[0].keys)[2 * 2 + 1], 12.0f);
}

TEST_F(RocksDbStorageTest, SecondOpenOfTheSameDirectoryFails) {
  absl::StatusOr<std::unique_ptr<RocksDbStorage>> second =
      RocksDbStorage::Open({dir_.string(), true});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()),
              ::testing::HasSubstr("the data directory is in use (by another "
                                   "engramd on the same --data_dir?)"));
}

// The files of the database directory named `suffix`, by name.
std::vector<std::filesystem::path> FilesEndingIn(
    const std::filesystem::path& dir, const std::string& suffix) {
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.size() >= suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

void FlipBytes(const std::filesystem::path& file, size_t offset, size_t n) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  std::string bytes(n, '\0');
  f.seekg(offset);
  f.read(bytes.data(), n);
  for (char& c : bytes) c = static_cast<char>(~c);
  f.seekp(offset);
  f.write(bytes.data(), n);
}

TEST_F(RocksDbStorageTest, DamagedStoresCanBeDeletedAndTheirNamesReused) {
  ASSERT_TRUE(Create("keep", 2)->Add({P(1, {1, 2})}).ok());
  ASSERT_TRUE(Create("lost", 2)->Add({P(1, {3, 4})}).ok());
  // A copy taken while the database is open is what a crash leaves: the
  // recent writes only in the write-ahead log.
  const std::filesystem::path crashed = dir_.string() + "_crashed";
  std::filesystem::remove_all(crashed);
  std::filesystem::copy(dir_, crashed);
  registry_.reset();
  storage_.reset();
  std::filesystem::remove_all(dir_);
  std::filesystem::rename(crashed, dir_);
  std::filesystem::remove(dir_ / "LOCK");
  const std::vector<std::filesystem::path> logs = FilesEndingIn(dir_, ".log");
  ASSERT_FALSE(logs.empty());
  // The last batch ("lost"'s add) is near the end of the log.
  FlipBytes(logs.back(), std::filesystem::file_size(logs.back()) - 20, 8);

  absl::StatusOr<std::unique_ptr<RocksDbStorage>> refused =
      RocksDbStorage::Open({dir_.string(), true});
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(refused.status().message().find(logs.back().filename().string()),
            std::string::npos)
      << refused.status();
  EXPECT_NE(refused.status().message().find("'lost'"), std::string::npos)
      << refused.status();
  EXPECT_EQ(refused.status().message().find("'keep'"), std::string::npos)
      << refused.status();

  RocksDbOptions accept{dir_.string(), true};
  accept.accept_data_loss = true;
  absl::StatusOr<std::unique_ptr<RocksDbStorage>> storage =
      RocksDbStorage::Open(accept);
  ASSERT_TRUE(storage.ok()) << storage.status();
  EXPECT_NE((*storage)->open_report().find("1 store(s) marked DAMAGED"),
            std::string::npos)
      << (*storage)->open_report();
  storage_ = std::move(*storage);
  registry_ = std::make_unique<StoreRegistry>(Limits{}, storage_.get());
  ASSERT_TRUE(registry_->Load().ok());
  EXPECT_EQ((*registry_->Get("keep"))->Get(1)->values,
            (std::vector<float>{1, 2}));
  ASSERT_EQ(registry_->Damaged().size(), 1u);
  EXPECT_EQ(registry_->Damaged()[0].name, "lost");
  StoreSettings lost;
  lost.name = "lost";
  lost.dimension = 2;
  EXPECT_EQ(registry_->Create(lost).status().code(),
            absl::StatusCode::kAlreadyExists);
  // The mark is durable: a start without the flag keeps it.
  Reopen();
  ASSERT_EQ(registry_->Damaged().size(), 1u);
  ASSERT_TRUE(registry_->Delete("lost").ok());
  EXPECT_TRUE(registry_->Damaged().empty());
  ASSERT_TRUE(Create("lost", 3)->Add({P(0, {1, 1, 1})}).ok());
  Reopen();
  EXPECT_EQ((*registry_->Get("lost"))->view()->size(), 1u);
}

TEST_F(RocksDbStorageTest, ACleanCloseLeavesNothingOnlyInTheLog) {
  ASSERT_TRUE(Create("a", 2)->Add({P(1, {1, 2}), P(2, {3, 4})}).ok());
  registry_.reset();
  ASSERT_TRUE(storage_->Close().ok());
  storage_.reset();
  for (const auto& log : FilesEndingIn(dir_, ".log")) {
    if (std::filesystem::file_size(log) > 0) {
      FlipBytes(log, std::filesystem::file_size(log) / 2, 16);
    }
  }
  Reopen();
  EXPECT_EQ((*registry_->Get("a"))->view()->size(), 2u);
}

// A shard's write stamp only rises, and survives a restart (a router's start
// rule reads it).
TEST_F(RocksDbStorageTest, TheWriteStampOnlyRisesAndSurvivesARestart) {
  std::shared_ptr<Store> a = Create("a", 2);
  EXPECT_EQ(a->stamp(), 0u);
  ASSERT_TRUE(a->RaiseStamp(1000).ok());
  ASSERT_TRUE(a->RaiseStamp(900).ok());  // Older: changes nothing.
  EXPECT_EQ(a->stamp(), 1000u);
  Create("b", 2);
  Reopen();
  EXPECT_EQ((*registry_->Get("a"))->stamp(), 1000u);
  EXPECT_EQ((*registry_->Get("b"))->stamp(), 0u);
}

TEST_F(RocksDbStorageTest, ExhaustedIdsStayExhaustedAfterARestart) {
  std::shared_ptr<Store> s = Create("s", 1);
  ASSERT_TRUE(s->Add({P(std::numeric_limits<uint64_t>::max(), {1})}).ok());
  Reopen();
  s = *registry_->Get("s");
  EXPECT_EQ(s->Add({P(0, {2})}).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(s->Add({P(3, {3})}).ok());
}

TEST(WalScanTest, FindsDamageAndTheFamiliesItHolds) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / "engram_wal_scan";
  std::filesystem::remove_all(dir);
  rocksdb::Options options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, {}}, {"one", {}}, {"two", {}}};
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  ASSERT_TRUE(
      rocksdb::DB::Open(options, dir.string(), families, &handles, &db).ok());
  // Batches big enough to span blocks, alternating families.
  for (int i = 0; i < 20; ++i) {
    rocksdb::WriteBatch batch;
    batch.Put(handles[1 + i % 2], absl::StrCat("k", i),
              std::string(5000 + 997 * i, 'v'));
    ASSERT_TRUE(db->Write(rocksdb::WriteOptions(), &batch).ok());
  }
  const uint32_t one = handles[1]->GetID(), two = handles[2]->GetID();
  const std::vector<std::filesystem::path> logs = FilesEndingIn(dir, ".log");
  ASSERT_EQ(logs.size(), 1u);
  std::ifstream in(logs[0], std::ios::binary);
  const std::string log((std::istreambuf_iterator<char>(in)),
                        std::istreambuf_iterator<char>());
  for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
  delete db;

  internal::WalScan clean = internal::ScanWal(log);
  EXPECT_TRUE(clean.damage.empty());
  EXPECT_FALSE(clean.torn_tail);
  EXPECT_EQ(clean.batches, 20u);

  // A crash in the middle of the last write: not damage.
  internal::WalScan torn = internal::ScanWal(log.substr(0, log.size() - 100));
  EXPECT_TRUE(torn.damage.empty());
  EXPECT_TRUE(torn.torn_tail);
  EXPECT_EQ(torn.batches, 19u);

  // Flipped bytes in a value: one stretch, attributed to the batches whose
  // records it drops, all from family one or two.
  std::string damaged = log;
  for (size_t k = 0; k < 16; ++k) damaged[log.size() / 2 + k] ^= 0xff;
  internal::WalScan scan = internal::ScanWal(damaged);
  ASSERT_EQ(scan.damage.size(), 1u) << scan.damage[1].reason;
  const internal::WalDamage& d = scan.damage[0];
  EXPECT_EQ(d.reason, "checksum mismatch");
  EXPECT_LE(d.offset, log.size() / 2);
  EXPECT_TRUE(d.attributed);
  EXPECT_FALSE(d.sequences.empty());
  EXPECT_FALSE(d.column_families.empty());
  for (uint32_t cf : d.column_families) EXPECT_TRUE(cf == one || cf == two);
  EXPECT_LT(scan.batches, 20u);
  // A damaged header: the stretch to the end of its block is unreadable.
  damaged = log;
  for (size_t k = 0; k < 7; ++k) damaged[k] ^= 0xff;
  scan = internal::ScanWal(damaged);
  ASSERT_FALSE(scan.damage.empty());
  EXPECT_EQ(scan.damage[0].offset, 0u);
  std::filesystem::remove_all(dir);
}

TEST(Crc32cTest, MatchesTheStandardCheckValue) {
  EXPECT_EQ(internal::Crc32c(0, "123456789"), 0xe3069283u);
}

TEST(PatternRecordTest, RoundTripsAndRejectsTruncation) {
  Pattern p{5, {1, 2, 3}, "label", {{"a", "b"}}};
  const std::string bytes = EncodePattern(p);
  absl::StatusOr<Pattern> back = DecodePattern(5, bytes);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->values, p.values);
  EXPECT_EQ(back->metadata, p.metadata);
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_EQ(DecodePattern(5, bytes.substr(0, n)).status().code(),
              absl::StatusCode::kDataLoss);
  }
}

TEST(SettingsRecordTest, RoundTripsEverySetting) {
  StoreSettings s;
  s.name = "x";
  s.dimension = 9;
  s.retrieval.beta = 0.1f;
  s.retrieval.similarity = core::Similarity::kCosine;
  s.feature_map.learning_rate = 0.3;
  s.feature_map.debounce_ms = 0;  // A zero that is not the default stays.
  s.calibration.automatic = true;
  s.calibration.apply = true;
  s.calibration.corruption = core::Corruption::kMask;
  s.calibration.level = 0.25f;
  s.calibration.search_similarity = true;
  s.calibration.sample_size = 77;
  s.calibration.seed = 12;
  s.create_time = absl::FromUnixSeconds(1700000000) + absl::Nanoseconds(5);
  CalibrationReport& r = s.calibration_report;
  r.mutable_time()->set_seconds(1700000001);
  r.set_pattern_count(1000);
  r.set_similarity(v1::MANHATTAN);
  r.set_separation(v1::ENTMAX15);
  r.set_beta(2.828427f);
  r.set_error(0.1234567890123);
  r.set_theory_beta_p90(std::numeric_limits<double>::infinity());
  r.set_detail("line one\nand = two");
  absl::StatusOr<StoreSettings> back =
      DecodeSettingsRecord(EncodeSettingsRecord(s));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->name, "x");
  EXPECT_EQ(back->dimension, 9u);
  EXPECT_EQ(back->retrieval.beta, 0.1f);
  EXPECT_EQ(back->retrieval.similarity, core::Similarity::kCosine);
  EXPECT_EQ(back->feature_map.learning_rate, 0.3);
  EXPECT_EQ(back->feature_map.debounce_ms, 0u);
  EXPECT_EQ(back->feature_map.epochs, s.feature_map.epochs);
  EXPECT_TRUE(back->calibration.automatic && back->calibration.apply);
  EXPECT_EQ(back->calibration.corruption, core::Corruption::kMask);
  EXPECT_EQ(back->calibration.level, 0.25f);
  EXPECT_TRUE(back->calibration.search_similarity);
  EXPECT_FALSE(back->calibration.search_separation);
  EXPECT_EQ(back->calibration.sample_size, 77u);
  EXPECT_EQ(back->calibration.seed, 12u);
  EXPECT_EQ(back->create_time, s.create_time);
  const CalibrationReport& b = back->calibration_report;
  EXPECT_EQ(b.SerializeAsString(), r.SerializeAsString());
}

TEST(SettingsRecordTest, RefusesDamageAndUnknownFormats) {
  StoreSettings s;
  s.name = "x";
  s.dimension = 9;
  const std::string bytes = EncodeSettingsRecord(s);
  EXPECT_EQ(DecodeSettingsRecord("\xff\xff\xff").status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(
      DecodeSettingsRecord(bytes.substr(0, bytes.size() - 1)).status().code(),
      absl::StatusCode::kDataLoss);
  storage::v1::SettingsRecord future;
  ASSERT_TRUE(future.ParseFromString(bytes));
  future.set_format(3);
  absl::StatusOr<StoreSettings> refused =
      DecodeSettingsRecord(future.SerializeAsString());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(refused.status().message(), testing::HasSubstr("format 3"));
}

// A record as engram 0.1 wrote it (abridged where 0.1 wrote defaults).
constexpr char kLegacyRecord[] =
    "format=1\nname=old\ndimension=4\nsimilarity=manhattan\n"
    "separation=entmax15\nbeta=2.5\nsteps=3\neps=0.0001\ntop_k=7\n"
    "feature_map.kind=uhop\nfeature_map.feature_dim=8\nfeature_map.loss=mean\n"
    "feature_map.optimizer=adam\nfeature_map.epochs=50\n"
    "feature_map.learning_rate=0.25\nfeature_map.batch_size=64\n"
    "feature_map.seed=9\nfeature_map.min_new_patterns=1\n"
    "feature_map.debounce_ms=0\nlow_rank.tolerance=0.01\n"
    "low_rank.max_degree=3\ncreate_time_unix_ns=1700000000000000005\n"
    "calibration.automatic=1\ncalibration.apply=0\n"
    "calibration.corruption=gaussian\ncalibration.level=0.5\n"
    "calibration.search_similarity=0\ncalibration.search_separation=1\n"
    "calibration.sample_size=256\ncalibration.seed=4\n"
    "report.time_unix_ns=1700000001000000000\nreport.store_version=6\n"
    "report.patterns=100\nreport.similarity=l2\nreport.beta=4\n"
    "report.error=0.125\nreport.improved=1\nreport.applied=0\n"
    "report.detail=line one\\nand = two\na_future_key=1\n";

TEST(SettingsRecordTest, ReadsEngram01Records) {
  absl::StatusOr<StoreSettings> s = DecodeLegacySettings(kLegacyRecord);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->name, "old");
  EXPECT_EQ(s->dimension, 4u);
  EXPECT_EQ(s->retrieval.similarity, core::Similarity::kManhattan);
  EXPECT_EQ(s->retrieval.separation, core::Separation::kEntmax15);
  EXPECT_EQ(s->retrieval.beta, 2.5f);
  EXPECT_EQ(s->retrieval.steps, 3u);
  EXPECT_EQ(s->retrieval.top_k, 7u);
  EXPECT_EQ(s->feature_map.kind, FeatureMapKind::kUhop);
  EXPECT_EQ(s->feature_map.loss, FitLoss::kMean);
  EXPECT_EQ(s->feature_map.optimizer, FitOptimizer::kAdam);
  EXPECT_EQ(s->feature_map.learning_rate, 0.25);
  EXPECT_EQ(s->feature_map.debounce_ms, 0u);
  EXPECT_EQ(s->low_rank.max_degree, 3u);
  EXPECT_EQ(s->create_time, absl::FromUnixNanos(1700000000000000005));
  EXPECT_TRUE(s->calibration.automatic);
  EXPECT_FALSE(s->calibration.apply);
  EXPECT_EQ(s->calibration.corruption, core::Corruption::kGaussian);
  EXPECT_TRUE(s->calibration.search_separation);
  const CalibrationReport& r = s->calibration_report;
  EXPECT_EQ(r.time().seconds(), 1700000001);
  EXPECT_EQ(r.store_version(), 6u);
  EXPECT_EQ(r.pattern_count(), 100u);
  EXPECT_EQ(r.similarity(), v1::L2);
  EXPECT_EQ(r.error(), 0.125);
  EXPECT_TRUE(r.improved());
  EXPECT_FALSE(r.applied());
  EXPECT_EQ(r.detail(), "line one\nand = two");

  EXPECT_EQ(DecodeLegacySettings("dimension=abc\n").status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeLegacySettings("no equals sign\n").status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeLegacySettings("format=7\n").status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeLegacySettings("similarity=sideways\n").status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace engram::store
