#include "client/cli/fields.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"

namespace engram::client {

namespace {

using google::protobuf::FieldDescriptor;

absl::Status Bad(absl::string_view flag, absl::string_view text,
                 absl::string_view expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("--", flag, "=", text, " is not ", expected));
}

template <typename T>
absl::StatusOr<T> Number(absl::string_view flag, absl::string_view text,
                         absl::string_view expected) {
  T value{};
  bool ok = false;
  if constexpr (std::is_same_v<T, float>) {
    ok = absl::SimpleAtof(text, &value);
  } else if constexpr (std::is_same_v<T, double>) {
    ok = absl::SimpleAtod(text, &value);
  } else if constexpr (std::is_same_v<T, bool>) {
    ok = absl::SimpleAtob(text, &value);
  } else {
    ok = absl::SimpleAtoi(text, &value);
  }
  if (!ok) return Bad(flag, text, expected);
  return value;
}

}  // namespace

absl::StatusOr<int> EnumFromText(const google::protobuf::EnumDescriptor& e,
                                 absl::string_view text,
                                 absl::string_view flag) {
  const google::protobuf::EnumValueDescriptor* v =
      e.FindValueByName(absl::AsciiStrToUpper(text));
  if (v != nullptr && v->number() != 0) return v->number();
  std::vector<std::string> choices;
  for (int i = 0; i < e.value_count(); ++i) {
    if (e.value(i)->number() != 0) {
      choices.push_back(absl::AsciiStrToLower(e.value(i)->name()));
    }
  }
  return Bad(flag, text, absl::StrCat("one of ", absl::StrJoin(choices, ", ")));
}

absl::Status SetFieldFromText(google::protobuf::Message& message,
                              absl::string_view path, absl::string_view text,
                              absl::string_view flag) {
  google::protobuf::Message* target = &message;
  const FieldDescriptor* field = nullptr;
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    if (field != nullptr) {
      target = target->GetReflection()->MutableMessage(target, field);
    }
    field = target->GetDescriptor()->FindFieldByName(std::string(part));
    if (field == nullptr) {
      return absl::InternalError(absl::StrCat("--", flag, ": no field ", path));
    }
  }
  const google::protobuf::Reflection* r = target->GetReflection();
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_UINT32: {
      absl::StatusOr<uint32_t> v =
          Number<uint32_t>(flag, text, "a whole number >= 0");
      if (!v.ok()) return v.status();
      r->SetUInt32(target, field, *v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      absl::StatusOr<uint64_t> v =
          Number<uint64_t>(flag, text, "a whole number >= 0");
      if (!v.ok()) return v.status();
      r->SetUInt64(target, field, *v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_FLOAT: {
      absl::StatusOr<float> v = Number<float>(flag, text, "a number");
      if (!v.ok()) return v.status();
      r->SetFloat(target, field, *v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_DOUBLE: {
      absl::StatusOr<double> v = Number<double>(flag, text, "a number");
      if (!v.ok()) return v.status();
      r->SetDouble(target, field, *v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      absl::StatusOr<bool> v = Number<bool>(flag, text, "true or false");
      if (!v.ok()) return v.status();
      r->SetBool(target, field, *v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
      absl::StatusOr<int> v = EnumFromText(*field->enum_type(), text, flag);
      if (!v.ok()) return v.status();
      r->SetEnumValue(target, field, *v);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_MESSAGE: {
      if (field->message_type()->full_name() != "google.protobuf.Duration") {
        break;
      }
      absl::Duration d;
      if (!absl::ParseDuration(text, &d) || d < absl::ZeroDuration()) {
        return Bad(flag, text, "a duration such as 90s, 30m, 24h or 0");
      }
      google::protobuf::Message* duration = r->MutableMessage(target, field);
      const google::protobuf::Reflection* dr = duration->GetReflection();
      const google::protobuf::Descriptor* dd = duration->GetDescriptor();
      const int64_t nanos = absl::ToInt64Nanoseconds(d);
      dr->SetInt64(duration, dd->FindFieldByName("seconds"),
                   nanos / 1000000000);
      dr->SetInt32(duration, dd->FindFieldByName("nanos"),
                   static_cast<int32_t>(nanos % 1000000000));
      return absl::OkStatus();
    }
    default:
      break;
  }
  return absl::InternalError(
      absl::StrCat("--", flag, ": field ", path, " has no text form"));
}

}  // namespace engram::client
