#include "server/store/backup.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "server/base/file_text.h"
#include "server/store/internal/little_endian.h"
#include "server/store/placement.h"
#include "server/store/records.h"
#include "server/store/settings.h"

namespace engram::store {

namespace {

constexpr char kKind[] = "engram-backup";
constexpr uint32_t kFormat = 1;
constexpr char kSettingsFile[] = "settings.pb";
constexpr char kMapFile[] = "map.bin";
constexpr char kPatternsFile[] = "patterns.bin";

std::string StoreFile(absl::string_view store, absl::string_view file) {
  return absl::StrCat("stores/", store, "/", file);
}

// SHA-256 over data given in pieces (OpenSSL).
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr);
  }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(absl::string_view data) {
    EVP_DigestUpdate(ctx_, data.data(), data.size());
  }
  std::string Hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx_, digest, &n);
    std::string hex;
    for (unsigned int i = 0; i < n; ++i) {
      absl::StrAppend(&hex, absl::Hex(digest[i], absl::kZeroPad2));
    }
    return hex;
  }

 private:
  EVP_MD_CTX* ctx_;
};

// Writes one file to the sink in pieces, counting and hashing it.
class FileWriter {
 public:
  FileWriter(BackupSink& sink, std::string path, size_t piece_bytes)
      : sink_(sink), path_(std::move(path)), piece_bytes_(piece_bytes) {}

  absl::Status Append(absl::string_view data) {
    buffer_.append(data.data(), data.size());
    return buffer_.size() >= piece_bytes_ ? Flush() : absl::OkStatus();
  }
  // Sends what is left and lists the file in `store`.
  absl::Status Finish(BackupStore& store) {
    if (absl::Status status = Flush(); !status.ok()) return status;
    if (bytes_ == 0) {  // An empty file still reaches the sink.
      if (absl::Status status = sink_.Write(path_, ""); !status.ok()) {
        return status;
      }
    }
    storage::v1::BackupFile* file = store.add_files();
    file->set_path(path_);
    file->set_bytes(bytes_);
    file->set_sha256(sha_.Hex());
    return absl::OkStatus();
  }

 private:
  absl::Status Flush() {
    if (buffer_.empty()) return absl::OkStatus();
    sha_.Update(buffer_);
    bytes_ += buffer_.size();
    absl::Status status = sink_.Write(path_, buffer_);
    buffer_.clear();
    return status;
  }

  BackupSink& sink_;
  const std::string path_;
  const size_t piece_bytes_;
  std::string buffer_;
  uint64_t bytes_ = 0;
  Sha256 sha_;
};

absl::Status WriteFile(BackupSink& sink, const std::string& path,
                       absl::string_view data, size_t piece_bytes,
                       BackupStore& store) {
  FileWriter file(sink, path, piece_bytes);
  if (absl::Status status = file.Append(data); !status.ok()) return status;
  return file.Finish(store);
}

// What a backup writes of one store, from a live store's view or from an
// image (a store put together from its shard groups' backups).
struct StoreContent {
  const StoreSettings& settings;
  const FitRecord& fit;
  const core::FeatureMap* map;  // Null: none fitted.
  uint64_t next_id;
  absl::Span<const uint64_t> group_next_ids;
  uint64_t stamp;
  uint64_t digest;
  size_t size;
  // Row r (in row order), made in `scratch` if it is not held as a Pattern.
  std::function<const Pattern&(size_t r, Pattern& scratch)> pattern;
};

absl::Status WriteStore(const StoreContent& store, BackupSink& sink,
                        size_t piece_bytes, BackupStore& entry) {
  const std::string& name = store.settings.name;
  entry.set_name(name);
  entry.set_patterns(store.size);
  entry.set_next_id(store.next_id);
  entry.mutable_group_next_ids()->Assign(store.group_next_ids.begin(),
                                         store.group_next_ids.end());
  entry.set_stamp(store.stamp);
  entry.set_digest(store.digest);
  entry.set_map_version(store.fit.version);
  if (absl::Status status =
          WriteFile(sink, StoreFile(name, kSettingsFile),
                    EncodeSettingsRecord(store.settings), piece_bytes, entry);
      !status.ok()) {
    return status;
  }
  if (store.fit.version > 0 && store.map != nullptr) {
    if (absl::Status status =
            WriteFile(sink, StoreFile(name, kMapFile),
                      EncodeMap(store.fit, *store.map), piece_bytes, entry);
        !status.ok()) {
      return status;
    }
  }
  FileWriter patterns(sink, StoreFile(name, kPatternsFile), piece_bytes);
  std::string record;
  Pattern scratch;
  for (size_t i = 0; i < store.size; ++i) {
    const Pattern& p = store.pattern(i, scratch);
    const std::string bytes = EncodePattern(p);
    record.clear();
    internal::PutFixed64(record, p.id);
    internal::PutFixed32(record, static_cast<uint32_t>(bytes.size()));
    record += bytes;
    if (absl::Status status = patterns.Append(record); !status.ok()) {
      return status;
    }
  }
  return patterns.Finish(entry);
}

// The files a store of a backup may have, by name.
bool IsStoreFile(absl::string_view file) {
  return file == kSettingsFile || file == kMapFile || file == kPatternsFile;
}

}  // namespace

absl::Status CheckBackupPath(absl::string_view path) {
  if (path == kManifestFile || path == kManifestSumFile) {
    return absl::OkStatus();
  }
  std::vector<absl::string_view> parts = absl::StrSplit(path, '/');
  if (parts.size() == 3 && parts[0] == "stores" &&
      ValidateStoreName(parts[1]).ok() && IsStoreFile(parts[2])) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "'", path.substr(0, 200),
      "' is not a file of an engram backup (expected ", kManifestFile, ", ",
      kManifestSumFile, " or stores/NAME/{settings.pb,map.bin,patterns.bin})"));
}

std::string Sha256Hex(absl::string_view data) {
  Sha256 sha;
  sha.Update(data);
  return sha.Hex();
}

namespace {

// Writes each of `count` stores (`write(i, entry)`), then the manifest.
absl::StatusOr<BackupManifest> WriteStores(
    size_t count,
    const std::function<absl::Status(size_t, BackupStore&)>& write,
    BackupSink& sink, absl::string_view engram_version) {
  BackupManifest manifest;
  manifest.set_kind(kKind);
  manifest.set_format(kFormat);
  manifest.set_engram_version(std::string(engram_version));
  manifest.set_create_time(
      absl::FormatTime(absl::RFC3339_full, absl::Now(), absl::UTCTimeZone()));
  for (size_t i = 0; i < count; ++i) {
    if (absl::Status status = write(i, *manifest.add_stores()); !status.ok()) {
      return status;
    }
  }
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(manifest, &json, options)
           .ok()) {
    return absl::InternalError("cannot write the backup manifest as JSON");
  }
  if (absl::Status status = sink.Write(kManifestFile, json); !status.ok()) {
    return status;
  }
  if (absl::Status status =
          sink.Write(kManifestSumFile, absl::StrCat(Sha256Hex(json), "\n"));
      !status.ok()) {
    return status;
  }
  return manifest;
}

}  // namespace

absl::StatusOr<BackupManifest> WriteBackup(
    absl::Span<const std::shared_ptr<Store>> stores, BackupSink& sink,
    absl::string_view engram_version, size_t piece_bytes) {
  return WriteStores(
      stores.size(),
      [&](size_t i, BackupStore& entry) {
        std::shared_ptr<const StoreView> view = stores[i]->view();
        const StoreContent content{
            view->settings(),
            view->fit(),
            view->map().get(),
            view->next_id(),
            {},
            stores[i]->stamp(),
            view->digest(),
            view->size(),
            [&view](size_t r, Pattern& scratch) -> const Pattern& {
              scratch = view->pattern(r);
              return scratch;
            }};
        return WriteStore(content, sink, piece_bytes, entry);
      },
      sink, engram_version);
}

absl::StatusOr<BackupManifest> WriteBackup(
    size_t count,
    const std::function<absl::StatusOr<StoreImage>(size_t)>& image_of,
    BackupSink& sink, absl::string_view engram_version, size_t piece_bytes) {
  return WriteStores(
      count,
      [&](size_t i, BackupStore& entry) {
        absl::StatusOr<StoreImage> made = image_of(i);
        if (!made.ok()) return made.status();
        const StoreImage& image = *made;
        const StoreContent content{
            image.settings,
            image.fit,
            image.map.get(),
            image.next_id,
            image.group_next_ids,
            image.stamp,
            image.digest,
            image.patterns.size(),
            [&image](size_t r, Pattern&) -> const Pattern& {
              return image.patterns[r];
            }};
        return WriteStore(content, sink, piece_bytes, entry);
      },
      sink, engram_version);
}

absl::StatusOr<std::string> DirectorySource::Read(const std::string& file) {
  if (absl::Status status = CheckBackupPath(file); !status.ok()) return status;
  const std::string path = absl::StrCat(dir_, "/", file);
  return ReadFileText(path);
}

absl::Status MemorySource::Append(const std::string& file,
                                  absl::string_view data) {
  if (absl::Status status = CheckBackupPath(file); !status.ok()) return status;
  if (data.size() > max_bytes_ - bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the backup sent is over ", max_bytes_,
        " bytes, the limit of one restore (--max_restore_mb=", max_bytes_ >> 20,
        ")"));
  }
  bytes_ += data.size();
  files_[file].append(data.data(), data.size());
  return absl::OkStatus();
}

absl::StatusOr<std::string> MemorySource::Read(const std::string& file) {
  auto found = files_.find(file);
  if (found == files_.end()) {
    return absl::NotFoundError(absl::StrCat(file, ": not sent"));
  }
  std::string data = std::move(found->second);
  files_.erase(found);
  return data;
}

absl::StatusOr<std::string> ReadListedFile(BackupSource& source,
                                           const BackupStore& entry,
                                           const std::string& path) {
  const storage::v1::BackupFile* listed = nullptr;
  for (const storage::v1::BackupFile& file : entry.files()) {
    if (file.path() == path) listed = &file;
  }
  if (listed == nullptr) {
    return absl::DataLossError(
        absl::StrCat(kManifestFile, " lists no file ", path));
  }
  absl::StatusOr<std::string> data = source.Read(path);
  if (!data.ok()) {
    return absl::DataLossError(
        absl::StrCat("the backup is incomplete: ", data.status().message()));
  }
  if (data->size() != listed->bytes()) {
    return absl::DataLossError(
        absl::StrCat(path, " is ", data->size(), " bytes; the manifest says ",
                     listed->bytes(), " (truncated or replaced)"));
  }
  if (Sha256Hex(*data) != listed->sha256()) {
    return absl::DataLossError(absl::StrCat(
        path,
        " does not match its SHA-256 in the manifest: damaged or edited"));
  }
  return data;
}

absl::StatusOr<BackupManifest> ReadManifest(BackupSource& source) {
  absl::StatusOr<std::string> json = source.Read(kManifestFile);
  if (!json.ok()) {
    if (absl::IsNotFound(json.status())) {
      return absl::InvalidArgumentError(
          absl::StrCat("not an engram backup: ", json.status().message()));
    }
    return json.status();
  }
  absl::StatusOr<std::string> sum = source.Read(kManifestSumFile);
  if (!sum.ok()) {
    return absl::DataLossError(absl::StrCat(
        "the backup's manifest cannot be checked: ", sum.status().message()));
  }
  if (absl::StripAsciiWhitespace(*sum) != Sha256Hex(*json)) {
    return absl::DataLossError(
        absl::StrCat(kManifestFile, " does not match ", kManifestSumFile,
                     ": one of them is damaged or was edited"));
  }
  BackupManifest manifest;
  google::protobuf::util::JsonParseOptions options;
  if (!google::protobuf::util::JsonStringToMessage(*json, &manifest, options)
           .ok()) {
    return absl::DataLossError(
        absl::StrCat(kManifestFile, " is not a valid backup manifest"));
  }
  if (manifest.kind() != kKind) {
    return absl::InvalidArgumentError(
        absl::StrCat("not an engram backup: ", kManifestFile, " has kind '",
                     manifest.kind().substr(0, 64), "', not '", kKind, "'"));
  }
  if (manifest.format() != kFormat) {
    return absl::InvalidArgumentError(
        absl::StrCat("the backup has format ", manifest.format(), " (engram ",
                     manifest.engram_version().substr(0, 32),
                     "); this engram reads format ", kFormat));
  }
  std::vector<absl::string_view> names;
  for (const BackupStore& store : manifest.stores()) {
    if (absl::Status status = ValidateStoreName(store.name()); !status.ok()) {
      return absl::DataLossError(
          absl::StrCat(kManifestFile, ": ", status.message()));
    }
    names.push_back(store.name());
    for (const storage::v1::BackupFile& file : store.files()) {
      if (!absl::StartsWith(file.path(), StoreFile(store.name(), "")) ||
          !CheckBackupPath(file.path()).ok()) {
        return absl::DataLossError(absl::StrCat(
            kManifestFile, ": store '", store.name(), "' lists file '",
            file.path().substr(0, 200), "', which is not one of its files"));
      }
    }
  }
  std::sort(names.begin(), names.end());
  if (std::adjacent_find(names.begin(), names.end()) != names.end()) {
    return absl::DataLossError(
        absl::StrCat(kManifestFile, " lists a store twice"));
  }
  return manifest;
}

absl::StatusOr<const BackupStore*> FindStore(const BackupManifest& manifest,
                                             absl::string_view name) {
  std::vector<std::string> names;
  for (const BackupStore& store : manifest.stores()) {
    if (store.name() == name) return &store;
    names.push_back(store.name());
  }
  if (name.empty() && manifest.stores_size() == 1) return &manifest.stores(0);
  if (name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the backup holds ", names.size(), " stores; name the one to restore (",
        absl::StrJoin(names, ", "), ")"));
  }
  return absl::NotFoundError(absl::StrCat(
      "the backup holds no store '", name.substr(0, 64), "' (it holds: ",
      names.empty() ? "none" : absl::StrJoin(names, ", "), ")"));
}

namespace {

// The file of `entry` named `file`, checked against its manifest entry;
// NOT_FOUND if the manifest does not list it.
absl::StatusOr<std::string> ReadChecked(BackupSource& source,
                                        const BackupStore& entry,
                                        absl::string_view file) {
  const std::string path = StoreFile(entry.name(), file);
  const bool listed =
      std::any_of(entry.files().begin(), entry.files().end(),
                  [&](const auto& f) { return f.path() == path; });
  if (!listed) {
    return absl::NotFoundError(
        absl::StrCat(kManifestFile, " lists no file ", path));
  }
  return ReadListedFile(source, entry, path);
}

absl::Status DecodePatterns(absl::string_view bytes, const std::string& path,
                            std::vector<Pattern>& patterns) {
  while (!bytes.empty()) {
    if (bytes.size() < 12) {
      return absl::DataLossError(absl::StrCat(
          path, ": truncated record after pattern ", patterns.size()));
    }
    const uint64_t id = internal::LoadFixed64(bytes.data());
    const uint32_t n = internal::LoadFixed32(bytes.data() + 8);
    bytes.remove_prefix(12);
    if (bytes.size() < n) {
      return absl::DataLossError(
          absl::StrCat(path, ": truncated record of pattern ", id));
    }
    absl::StatusOr<Pattern> p = DecodePattern(id, bytes.substr(0, n));
    if (!p.ok()) {
      return absl::DataLossError(
          absl::StrCat(path, ": ", p.status().message()));
    }
    patterns.push_back(std::move(*p));
    bytes.remove_prefix(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StoreImage> ReadStore(BackupSource& source,
                                     const BackupStore& entry) {
  StoreImage image;
  absl::StatusOr<std::string> settings =
      ReadChecked(source, entry, kSettingsFile);
  if (!settings.ok()) return settings.status();
  absl::StatusOr<StoreSettings> decoded = DecodeSettingsRecord(*settings);
  if (!decoded.ok()) {
    return absl::DataLossError(
        absl::StrCat(StoreFile(entry.name(), kSettingsFile), ": ",
                     decoded.status().message()));
  }
  if (decoded->name != entry.name()) {
    return absl::DataLossError(
        absl::StrCat(StoreFile(entry.name(), kSettingsFile), " names store '",
                     decoded->name, "'"));
  }
  image.settings = std::move(*decoded);
  image.next_id = entry.next_id();
  image.group_next_ids.assign(entry.group_next_ids().begin(),
                              entry.group_next_ids().end());
  image.stamp = entry.stamp();
  image.digest = entry.digest();
  absl::StatusOr<std::string> map = ReadChecked(source, entry, kMapFile);
  if (map.ok()) {
    absl::Status status = DecodeMap(*map, image.fit, image.map);
    if (!status.ok()) {
      return absl::DataLossError(absl::StrCat(StoreFile(entry.name(), kMapFile),
                                              ": ", status.message()));
    }
  } else if (!absl::IsNotFound(map.status())) {
    return map.status();
  }
  if (image.fit.version != entry.map_version()) {
    return absl::DataLossError(absl::StrCat(
        "store '", entry.name(), "': the manifest says map version ",
        entry.map_version(), ", its files hold ", image.fit.version));
  }
  absl::StatusOr<std::string> patterns =
      ReadChecked(source, entry, kPatternsFile);
  if (!patterns.ok()) return patterns.status();
  const std::string path = StoreFile(entry.name(), kPatternsFile);
  image.patterns.reserve(entry.patterns());
  if (absl::Status status = DecodePatterns(*patterns, path, image.patterns);
      !status.ok()) {
    return status;
  }
  uint64_t digest = 0;
  for (const Pattern& p : image.patterns) {
    digest += PatternDigest(p.id, p.values.data(), p.values.size(), p.label,
                            p.metadata);
  }
  if (image.patterns.size() != entry.patterns() || digest != entry.digest()) {
    return absl::DataLossError(
        absl::StrCat(path, " holds ", image.patterns.size(),
                     " patterns whose digest differs from the manifest's (",
                     entry.patterns(), " patterns)"));
  }
  return image;
}

absl::StatusOr<StoreImage> MergeGroupImages(std::vector<StoreImage> groups) {
  if (groups.empty()) {
    return absl::InvalidArgumentError("no shard group to merge");
  }
  StoreImage merged;
  merged.settings = groups[0].settings;
  merged.next_id = 1;
  size_t count = 0;
  for (const StoreImage& g : groups) count += g.patterns.size();
  merged.patterns.reserve(count);
  for (size_t i = 0; i < groups.size(); ++i) {
    StoreImage& g = groups[i];
    // Each shard stamped its own creation time; the rest must agree.
    StoreSettings same = g.settings;
    same.create_time = merged.settings.create_time;
    if (EncodeSettingsRecord(same) != EncodeSettingsRecord(merged.settings)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "shard groups 0 and ", i, " hold different settings for store '",
          merged.settings.name,
          "' (a change still reaching them?); retry the backup"));
    }
    merged.settings.create_time =
        std::min(merged.settings.create_time, g.settings.create_time);
    if (g.fit.version > merged.fit.version) {
      merged.fit = g.fit;
      merged.map = g.map;
    }
    merged.group_next_ids.push_back(g.next_id);
    if (merged.next_id != 0) {
      merged.next_id = g.next_id == 0 ? 0 : std::max(merged.next_id, g.next_id);
    }
    merged.digest += g.digest;
    std::move(g.patterns.begin(), g.patterns.end(),
              std::back_inserter(merged.patterns));
    g.patterns = {};
  }
  return merged;
}

std::vector<StoreImage> SplitImageByGroup(StoreImage image, uint32_t groups) {
  groups = std::max<uint32_t>(groups, 1);
  std::vector<StoreImage> parts(groups);
  for (StoreImage& part : parts) {
    part.settings = image.settings;
    part.map = image.map;
    part.fit = image.fit;
    part.next_id = 1;  // Raised below; a shard never goes below its own.
  }
  for (Pattern& p : image.patterns) {
    StoreImage& part = parts[GroupOf(p.id, groups)];
    part.digest += PatternDigest(p.id, p.values.data(), p.values.size(),
                                 p.label, p.metadata);
    part.patterns.push_back(std::move(p));
  }
  // A next id the original handed out from goes to the group it places in
  // now, so no id below it that was used (and perhaps deleted) comes again.
  std::vector<uint64_t> nexts = image.group_next_ids;
  if (nexts.empty()) nexts.push_back(image.next_id);
  for (uint64_t next : nexts) {
    if (next == 0) continue;  // None was left: nothing to hand out anyway.
    StoreImage& part = parts[GroupOf(next, groups)];
    part.next_id = std::max(part.next_id, next);
  }
  return parts;
}

}  // namespace engram::store
