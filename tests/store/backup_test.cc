#include "server/store/backup.h"

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gtest/gtest.h"
#include "server/store/placement.h"
#include "server/store/registry.h"
#include "server/store/retrieve.h"
#include "tests/store/test_storage.h"

namespace engram::store {
namespace {

// Keeps a backup's files in memory, as a directory would.
class FilesSink : public BackupSink {
 public:
  absl::Status Write(absl::string_view file, absl::string_view data) override {
    if (!order.empty() && order.back() != file) {
      EXPECT_EQ(files.count(std::string(file)), 0u)
          << file << " came in two runs";
    }
    if (order.empty() || order.back() != file) order.emplace_back(file);
    files[std::string(file)].append(data.data(), data.size());
    return absl::OkStatus();
  }
  std::map<std::string, std::string> files;
  std::vector<std::string> order;
};

class MapSource : public BackupSource {
 public:
  explicit MapSource(std::map<std::string, std::string> files)
      : files_(std::move(files)) {}
  absl::StatusOr<std::string> Read(const std::string& file) override {
    auto found = files_.find(file);
    if (found == files_.end()) return absl::NotFoundError(file);
    return found->second;
  }

 private:
  std::map<std::string, std::string> files_;
};

StoreSettings Settings(const std::string& name, uint32_t dim) {
  StoreSettings s;
  s.name = name;
  s.dimension = dim;
  return s;
}

// A U-Hop store with a fitted map, labels and metadata, whose rows are out
// of id order after deletes.
std::shared_ptr<Store> Populated(
    StoreRegistry& registry, const std::string& name,
    core::Precision precision = core::Precision::kFloat32) {
  StoreSettings settings = Settings(name, 8);
  settings.precision = precision;
  settings.feature_map.kind = FeatureMapKind::kUhop;
  std::shared_ptr<Store> store = *registry.Create(settings);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<Pattern> patterns;
  for (uint64_t i = 0; i < 300; ++i) {
    Pattern p;
    p.values.resize(8);
    for (float& v : p.values) v = normal(rng);
    p.label = absl::StrCat("class-", i % 7);
    if (i % 3 == 0) p.metadata = {{"tenant", absl::StrCat("t", i % 2)}};
    patterns.push_back(std::move(p));
  }
  EXPECT_TRUE(store->Add(patterns).ok());
  EXPECT_TRUE(store->Delete({3, 50, 51, 120}).ok());
  std::vector<float> w(64, 0);
  for (int i = 0; i < 8; ++i) w[i * 8 + i] = 1.5f;
  EXPECT_TRUE(store
                  ->PublishMap(std::make_shared<core::FeatureMap>(8, 8, w),
                               FitRecord{1, 2.0, 1.0, 10, 0.5, 296})
                  .ok());
  EXPECT_TRUE(
      store->Add({Pattern{0, std::vector<float>(8, 0.25f), "x", {}}}).ok());
  return store;
}

std::map<std::string, std::string> BackupOf(
    const std::vector<std::shared_ptr<Store>>& stores) {
  FilesSink sink;
  absl::StatusOr<BackupManifest> manifest =
      WriteBackup(stores, sink, "test", /*piece_bytes=*/1000);
  EXPECT_TRUE(manifest.ok()) << manifest.status();
  // The manifest comes last, its checksum after it.
  EXPECT_EQ(sink.order.back(), kManifestSumFile);
  EXPECT_EQ(sink.order[sink.order.size() - 2], kManifestFile);
  return sink.files;
}

RetrieveResult Recall(const Store& store) {
  std::vector<float> queries(8 * 5);
  for (size_t i = 0; i < queries.size(); ++i) queries[i] = 0.1f * (i % 13);
  RetrieveRequest request;
  request.queries = queries;
  request.num_queries = 5;
  request.top_k = 5;
  request.path = PathChoice::kExact;
  absl::StatusOr<RetrieveResult> result =
      Retrieve(*store.view(), request, Limits{}, core::RetrievalOptions{});
  EXPECT_TRUE(result.ok()) << result.status();
  return *result;
}

class BackupPrecisionTest : public ::testing::TestWithParam<core::Precision> {};

INSTANTIATE_TEST_SUITE_P(Precisions, BackupPrecisionTest,
                         ::testing::Values(core::Precision::kFloat32,
                                           core::Precision::kBFloat16,
                                           core::Precision::kFloat16));

TEST_P(BackupPrecisionTest, ARestoredStoreAnswersExactlyAsTheOriginal) {
  EphemeralStorage storage;
  StoreRegistry registry(Limits{}, &storage);
  ASSERT_TRUE(registry.Load().ok());
  std::shared_ptr<Store> original = Populated(registry, "faces", GetParam());
  MapSource source(BackupOf({original}));
  absl::StatusOr<BackupManifest> manifest = ReadManifest(source);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  ASSERT_EQ(manifest->stores_size(), 1);
  EXPECT_EQ(manifest->stores(0).patterns(), 297u);
  absl::StatusOr<const BackupStore*> entry = FindStore(*manifest, "");
  ASSERT_TRUE(entry.ok());
  absl::StatusOr<StoreImage> image = ReadStore(source, **entry);
  ASSERT_TRUE(image.ok()) << image.status();
  image->settings.name = "faces-copy";
  absl::StatusOr<std::shared_ptr<Store>> copy = registry.Restore(*image, false);
  ASSERT_TRUE(copy.ok()) << copy.status();

  std::shared_ptr<const StoreView> a = original->view(), b = (*copy)->view();
  EXPECT_EQ(b->settings().precision, GetParam());
  ASSERT_EQ(a->size(), b->size());
  EXPECT_EQ(a->digest(), b->digest());
  EXPECT_EQ(a->next_id(), b->next_id());
  EXPECT_EQ(b->fit().version, 1u);
  EXPECT_EQ(b->fit().loss_after, 1.0);
  for (size_t i = 0; i < a->size(); ++i) {
    ASSERT_EQ(a->info(i).id, b->info(i).id) << "row " << i;
  }
  const RetrieveResult ra = Recall(*original), rb = Recall(**copy);
  EXPECT_EQ(ra.states, rb.states);  // Bit for bit.
  EXPECT_EQ(ra.energies, rb.energies);
  for (size_t q = 0; q < ra.matches.size(); ++q) {
    for (size_t k = 0; k < ra.matches[q].size(); ++k) {
      EXPECT_EQ(ra.matches[q][k].id, rb.matches[q][k].id);
      EXPECT_EQ(ra.matches[q][k].weight, rb.matches[q][k].weight);
    }
  }
  // The copy assigns the ids the original would next.
  EXPECT_EQ(*original->Add({Pattern{0, std::vector<float>(8, 1), "", {}}}),
            *(*copy)->Add({Pattern{0, std::vector<float>(8, 1), "", {}}}));
}

TEST(BackupTest, DamagedTruncatedEditedOrForeignBackupsAreRefusedByName) {
  EphemeralStorage storage;
  StoreRegistry registry(Limits{}, &storage);
  ASSERT_TRUE(registry.Load().ok());
  const std::map<std::string, std::string> files =
      BackupOf({Populated(registry, "a"), Populated(registry, "b")});
  auto read_all = [](std::map<std::string, std::string> files) {
    MapSource source(std::move(files));
    absl::StatusOr<BackupManifest> manifest = ReadManifest(source);
    if (!manifest.ok()) return manifest.status();
    for (const BackupStore& entry : manifest->stores()) {
      absl::StatusOr<StoreImage> image = ReadStore(source, entry);
      if (!image.ok()) return image.status();
    }
    return absl::OkStatus();
  };
  ASSERT_TRUE(read_all(files).ok());
  auto expect = [&](std::map<std::string, std::string> changed,
                    absl::StatusCode code, absl::string_view names) {
    absl::Status status = read_all(std::move(changed));
    EXPECT_EQ(status.code(), code) << status;
    EXPECT_NE(status.message().find(names), absl::string_view::npos) << status;
  };
  const std::string patterns = "stores/b/patterns.bin";
  for (size_t cut : {size_t{1}, size_t{100}, files.at(patterns).size() - 1}) {
    auto changed = files;
    changed[patterns].resize(cut);
    expect(changed, absl::StatusCode::kDataLoss, patterns);
  }
  {
    auto changed = files;
    changed[patterns][777] ^= 0x10;
    expect(changed, absl::StatusCode::kDataLoss, patterns);
  }
  {
    auto changed = files;
    changed["stores/a/map.bin"][20] ^= 1;
    expect(changed, absl::StatusCode::kDataLoss, "stores/a/map.bin");
  }
  {
    auto changed = files;
    changed.erase("stores/a/settings.pb");
    expect(changed, absl::StatusCode::kDataLoss, "stores/a/settings.pb");
  }
  {  // An edited manifest, checksum and all: the files still disagree.
    auto changed = files;
    std::string& json = changed[kManifestFile];
    json = absl::StrReplaceAll(
        json, {{"\"patterns\": \"297\"", "\"patterns\": \"296\""}});
    ASSERT_NE(json, files.at(kManifestFile));
    expect(changed, absl::StatusCode::kDataLoss, "manifest");
    changed[kManifestSumFile] = Sha256Hex(json);
    expect(changed, absl::StatusCode::kDataLoss, "stores/a/patterns.bin");
  }
  {
    auto changed = files;
    changed.erase(kManifestSumFile);
    expect(changed, absl::StatusCode::kDataLoss, kManifestSumFile);
  }
  expect({{"notes.txt", "hello"}}, absl::StatusCode::kInvalidArgument,
         "not an engram backup");
  {  // Another program's JSON, consistently summed.
    std::map<std::string, std::string> foreign = {
        {kManifestFile, "{\"kind\": \"other-backup\", \"format\": 1}"}};
    foreign[kManifestSumFile] = Sha256Hex(foreign[kManifestFile]);
    expect(foreign, absl::StatusCode::kInvalidArgument, "other-backup");
    foreign[kManifestFile] = "{\"kind\": \"engram-backup\", \"format\": 9}";
    foreign[kManifestSumFile] = Sha256Hex(foreign[kManifestFile]);
    expect(foreign, absl::StatusCode::kInvalidArgument, "format 9");
  }
}

TEST(BackupTest, MemorySourceTakesOnlyBackupFilesUpToItsLimit) {
  MemorySource source(100);
  EXPECT_TRUE(source.Append("stores/a/patterns.bin", "abc").ok());
  EXPECT_TRUE(source.Append("stores/a/patterns.bin", "def").ok());
  EXPECT_EQ(*source.Read("stores/a/patterns.bin"), "abcdef");
  for (const char* bad : {"../etc/passwd", "stores/../x/settings.pb",
                          "stores/a/other.bin", "/manifest.json", ""}) {
    EXPECT_EQ(source.Append(bad, "x").code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  EXPECT_EQ(source.Append(kManifestFile, std::string(95, 'x')).code(),
            absl::StatusCode::kResourceExhausted);
}

// The image of `store` read back from a backup of it alone.
absl::StatusOr<StoreImage> ImageOf(const std::shared_ptr<Store>& store) {
  MapSource source(BackupOf({store}));
  absl::StatusOr<BackupManifest> manifest = ReadManifest(source);
  if (!manifest.ok()) return manifest.status();
  return ReadStore(source, manifest->stores(0));
}

TEST(BackupTest, ARestoreThatWouldPassTheStoresMemoryCeilingIsRefused) {
  EphemeralStorage storage;
  size_t one = 0;  // What the store takes.
  {
    StoreRegistry scratch(Limits{}, &storage);
    ASSERT_TRUE(scratch.Load().ok());
    one = Populated(scratch, "s")->view()->memory_bytes();
  }
  Limits limits;
  limits.max_store_memory_bytes = one + one / 2;
  EphemeralStorage fresh;
  StoreRegistry registry(limits, &fresh);
  ASSERT_TRUE(registry.Load().ok());
  std::shared_ptr<Store> original = Populated(registry, "s");
  absl::StatusOr<StoreImage> image = ImageOf(original);
  ASSERT_TRUE(image.ok()) << image.status();
  image->settings.name = "copy";
  absl::Status refused = registry.Restore(*image, false).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find("max_store_memory_mb"), std::string::npos)
      << refused;
  EXPECT_EQ(registry.Get("copy").status().code(), absl::StatusCode::kNotFound);
  // In place of the store it was taken from, it fits.
  image->settings.name = "s";
  ASSERT_TRUE(registry.Restore(*image, true).ok());
}

TEST(BackupTest, RestoreRefusesATakenNameUnlessReplacingAndNeverHalfApplies) {
  FaultyStorage storage;
  StoreRegistry registry(Limits{}, &storage);
  ASSERT_TRUE(registry.Load().ok());
  std::shared_ptr<Store> original = Populated(registry, "s");
  absl::StatusOr<StoreImage> image = ImageOf(original);
  ASSERT_TRUE(image.ok()) << image.status();
  // The original changes after the backup.
  ASSERT_TRUE(original->Delete({1, 2}).ok());
  EXPECT_EQ(registry.Restore(*image, false).status().code(),
            absl::StatusCode::kAlreadyExists);
  // A restore whose write fails changes nothing: the old store serves and
  // takes writes.
  storage.fail = true;
  EXPECT_EQ(registry.Restore(*image, true).status().code(),
            absl::StatusCode::kUnavailable);
  storage.fail = false;
  EXPECT_EQ((*registry.Get("s"))->view()->size(), 295u);
  EXPECT_TRUE(original->Delete({4}).ok());
  // Replacing brings back the backup's contents; the old store object
  // refuses writes from then on.
  absl::StatusOr<std::shared_ptr<Store>> restored =
      registry.Restore(*image, true);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ((*registry.Get("s"))->view()->size(), 297u);
  EXPECT_EQ((*registry.Get("s"))->view()->digest(), image->digest);
  EXPECT_EQ(original->Delete({5}).code(), absl::StatusCode::kAborted);
  // An image that does not match its digest is refused before any write.
  image->patterns.pop_back();
  image->settings.name = "t";
  EXPECT_EQ(registry.Restore(*image, false).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(registry.Get("t").status().code(), absl::StatusCode::kNotFound);
}

// A store backed up through a router: split over groups by placement and
// put together again, it is the same store, and each group keeps its id
// sequence.
TEST(BackupTest, AStoreSplitOverGroupsAndMergedBackIsTheSame) {
  constexpr uint32_t kGroups = 3;
  StoreImage image;
  image.settings = Settings("spread", 2);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (uint64_t i = 0; i < 90; ++i) {
    Pattern p;
    // Ids as three shard groups hand them out, and some a client chose.
    p.id = i % 4 == 3 ? 1000 + i : ((i % kGroups + 1) << kGroupShift) | i;
    p.values = {normal(rng), normal(rng)};
    p.label = absl::StrCat("l", i % 5);
    image.digest += PatternDigest(p.id, p.values.data(), 2, p.label, {});
    image.patterns.push_back(std::move(p));
  }
  image.group_next_ids = {(uint64_t{1} << kGroupShift) | 200,
                          (uint64_t{2} << kGroupShift) | 150,
                          (uint64_t{3} << kGroupShift) | 120};
  image.next_id = image.group_next_ids[2];

  std::vector<StoreImage> parts = SplitImageByGroup(image, kGroups);
  ASSERT_EQ(parts.size(), kGroups);
  uint64_t digest = 0;
  size_t count = 0;
  for (uint32_t g = 0; g < kGroups; ++g) {
    uint64_t part_digest = 0, last = 0;
    for (const Pattern& p : parts[g].patterns) {
      EXPECT_EQ(GroupOf(p.id, kGroups), g) << p.id;
      // In the image's order.
      const auto at =
          std::find_if(image.patterns.begin(), image.patterns.end(),
                       [&](const Pattern& q) { return q.id == p.id; });
      EXPECT_GE(static_cast<uint64_t>(at - image.patterns.begin()), last);
      last = static_cast<uint64_t>(at - image.patterns.begin());
      part_digest += PatternDigest(p.id, p.values.data(), 2, p.label, {});
    }
    EXPECT_EQ(parts[g].digest, part_digest);
    EXPECT_EQ(parts[g].next_id, image.group_next_ids[g]);
    EXPECT_EQ(parts[g].settings.name, "spread");
    digest += part_digest;
    count += parts[g].patterns.size();
  }
  EXPECT_EQ(digest, image.digest);
  EXPECT_EQ(count, image.patterns.size());

  // Into 2 groups: each old sequence goes where its ids now place.
  std::vector<StoreImage> two = SplitImageByGroup(image, 2);
  EXPECT_EQ(two[0].next_id, image.group_next_ids[2]);  // Prefixes 1 and 3.
  EXPECT_EQ(two[1].next_id, image.group_next_ids[1]);

  // Merged back: every pattern, the same digest, each group's next id.
  parts[1].fit.version = 4;
  parts[1].map = std::make_shared<core::FeatureMap>(
      2, 2, std::vector<float>{1.5f, 0, 0, 1.5f});
  parts[2].settings.create_time =
      parts[0].settings.create_time - absl::Hours(1);
  absl::StatusOr<StoreImage> merged = MergeGroupImages(parts);
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ(merged->patterns.size(), image.patterns.size());
  EXPECT_EQ(merged->digest, image.digest);
  EXPECT_EQ(merged->group_next_ids, image.group_next_ids);
  EXPECT_EQ(merged->next_id, image.group_next_ids[2]);  // The largest.
  EXPECT_EQ(merged->fit.version, 4u);                   // The newest map.
  EXPECT_NE(merged->map, nullptr);
  EXPECT_EQ(merged->settings.create_time, parts[2].settings.create_time);

  // Written and read back, the group sequences stay.
  FilesSink sink;
  absl::StatusOr<BackupManifest> written = WriteBackup(
      1, [&](size_t) { return *merged; }, sink, "test");
  ASSERT_TRUE(written.ok()) << written.status();
  MapSource source(sink.files);
  absl::StatusOr<StoreImage> read =
      ReadStore(source, *FindStore(*ReadManifest(source), "spread").value());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->group_next_ids, image.group_next_ids);
  EXPECT_EQ(read->digest, image.digest);

  // Groups that disagree about the settings are not put together.
  parts = SplitImageByGroup(image, kGroups);
  parts[2].settings.retrieval.beta = 3;
  absl::StatusOr<StoreImage> mixed = MergeGroupImages(parts);
  EXPECT_EQ(mixed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(mixed.status().message().find("groups 0 and 2"), std::string::npos)
      << mixed.status();
}

}  // namespace
}  // namespace engram::store
