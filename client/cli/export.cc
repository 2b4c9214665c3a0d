#include "client/cli/export.h"

#include <filesystem>
#include <fstream>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "client/files.h"
#include "client/matrix_io.h"
#include "google/protobuf/util/json_util.h"

namespace engram::client {

namespace {

// The two files of an export, into `dir`, each synced.
absl::StatusOr<size_t> ExportInto(Client& client, const std::string& store,
                                  const std::filesystem::path& dir) {
  absl::StatusOr<v1::Store> described = client.GetStore(store);
  if (!described.ok()) return described.status();
  Matrix values;
  values.cols = described->dimension();
  const std::string details_path = (dir / kPatternsFile).string();
  std::ofstream details(details_path, std::ios::binary);
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string token, line;
  do {
    absl::StatusOr<v1::ListPatternsResponse> page =
        client.ListPatterns(store, token, 1000);
    if (!page.ok()) return page.status();
    for (v1::Pattern& p : *page->mutable_patterns()) {
      if (static_cast<size_t>(p.values_size()) != values.cols) {
        return absl::InternalError(absl::StrCat("pattern ", p.id(), " has ",
                                                p.values_size(), " values"));
      }
      values.data.insert(values.data.end(), p.values().begin(),
                         p.values().end());
      ++values.rows;
      p.clear_values();
      line.clear();
      if (!google::protobuf::util::MessageToJsonString(p, &line, options)
               .ok()) {
        return absl::InternalError("cannot write a pattern as JSON");
      }
      details << line << "\n";
    }
    token = page->next_page_token();
  } while (!token.empty());
  details.close();
  if (!details) {
    return absl::UnavailableError(absl::StrCat("writing ", details_path));
  }
  if (absl::Status synced = SyncPath(details_path); !synced.ok()) {
    return synced;
  }
  if (absl::Status status = WriteNpy((dir / kValuesFile).string(), values);
      !status.ok()) {
    return status;
  }
  return values.rows;
}

}  // namespace

absl::StatusOr<size_t> ExportStore(Client& client, const std::string& store,
                                   const std::string& dir) {
  size_t rows = 0;
  absl::Status status =
      FillNewDirectory(dir, "export", [&](const std::string& partial) {
        absl::StatusOr<size_t> written = ExportInto(client, store, partial);
        if (!written.ok()) return written.status();
        rows = *written;
        return absl::OkStatus();
      });
  if (!status.ok()) return status;
  return rows;
}

absl::StatusOr<std::vector<v1::Pattern>> ReadPatternDetails(
    const std::string& path, size_t offset, size_t count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::vector<v1::Pattern> out;
  std::string line;
  size_t number = 0;
  google::protobuf::util::JsonParseOptions options;
  while (out.size() < count && std::getline(in, line)) {
    ++number;
    if (number <= offset) continue;
    v1::Pattern p;
    if (!google::protobuf::util::JsonStringToMessage(
             std::string(absl::StripAsciiWhitespace(line)), &p, options)
             .ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", number,
          ": not a pattern's JSON (id, label, metadata), e.g. "
          "{\"id\": \"7\", \"label\": \"cat\", \"metadata\": {\"k\": \"v\"}}"));
    }
    if (p.values_size() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", number, ": values belong in the .npy file, not here"));
    }
    out.push_back(std::move(p));
  }
  if (out.size() < count) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " has ", number, " lines; ", offset + count,
                     " are needed, one per row used"));
  }
  return out;
}

}  // namespace engram::client
