// Setting a proto field from command-line text, by the field's descriptor:
// the CLI's flags name fields of engram.v1.Store and take their types,
// ranges and enum names from the generated schema, never from a copy.
#ifndef ENGRAM_CLIENT_CLI_FIELDS_H_
#define ENGRAM_CLIENT_CLI_FIELDS_H_

#include <cctype>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace engram::client {

// Sets the field at dotted `path` of `message` (e.g. "retrieval.beta") from
// `text`: numbers by the field's type, booleans as true/false/1/0, enums by
// value name in any case ("l2" for L2). INVALID_ARGUMENT naming `flag`, the
// text and, for enums, the choices.
absl::Status SetFieldFromText(google::protobuf::Message& message,
                              absl::string_view path, absl::string_view text,
                              absl::string_view flag);

// An enum value by name in any case, with the same errors; the zero
// ("..._UNSPECIFIED") value is not a choice.
absl::StatusOr<int> EnumFromText(const google::protobuf::EnumDescriptor& e,
                                 absl::string_view text,
                                 absl::string_view flag);

// The lower-case name of an enum value ("l2"), as the CLI prints it.
template <typename Enum>
std::string EnumText(Enum value) {
  const google::protobuf::EnumValueDescriptor* v =
      google::protobuf::GetEnumDescriptor<Enum>()->FindValueByNumber(value);
  std::string name = v == nullptr ? std::to_string(value) : v->name();
  for (char& c : name) c = static_cast<char>(std::tolower(c));
  return name;
}

}  // namespace engram::client

#endif  // ENGRAM_CLIENT_CLI_FIELDS_H_
