// The CLI's text forms of the API's messages (--json prints the messages
// themselves). Enum names come from the generated descriptors, in lower case.
#ifndef ENGRAM_CLIENT_CLI_TEXT_H_
#define ENGRAM_CLIENT_CLI_TEXT_H_

#include <cstddef>
#include <string>

#include "engram/v1/engram.pb.h"
#include "google/protobuf/message.h"

namespace engram::client {

// A store's settings and statistics, one "name:   value" line each.
std::string StoreText(const v1::Store& store);
// A calibration report: what was found and the capacity figures.
std::string ReportText(const v1::CalibrationReport& report);
// One line of a job's progress.
std::string FitLine(const v1::FitStatus& status);
std::string CalibrationLine(const v1::CalibrationStatus& status);
// A pattern: "ID [LABEL] {k=v, ...}", with its values if `values`.
std::string PatternText(const v1::Pattern& pattern, bool values);
// "[#########.........]  4500/10000 patterns  45%"
std::string ProgressBar(size_t done, size_t total, const char* what);
// The message as JSON, with field names as in the proto and every field.
std::string Json(const google::protobuf::Message& message);

}  // namespace engram::client

#endif  // ENGRAM_CLIENT_CLI_TEXT_H_
