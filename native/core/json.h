// A small strict JSON reader (RFC 8259) for safetensors headers. Rejects trailing garbage,
// nesting deeper than 64, invalid escapes and invalid UTF-8, and duplicate object keys.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace llmcore {

class JsonValue {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::Null; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_number() const { return kind_ == Kind::Number; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_array() const { return kind_ == Kind::Array; }
  bool is_object() const { return kind_ == Kind::Object; }

  bool as_bool() const { return bool_; }
  double as_number() const { return number_; }
  // True when the number was written as an integer literal (no '.', no exponent) that fits int64.
  bool is_integer() const { return kind_ == Kind::Number && is_int_; }
  int64_t as_int() const { return int_; }
  const std::string& as_string() const { return string_; }
  const std::vector<JsonValue>& items() const { return items_; }
  // Members in document order.
  const std::vector<std::pair<std::string, JsonValue>>& members() const { return members_; }
  // Member by key, or nullptr.
  const JsonValue* find(const std::string& key) const;

  const char* kind_name() const;

 private:
  friend class JsonParser;
  Kind kind_ = Kind::Null;
  bool bool_ = false;
  bool is_int_ = false;
  double number_ = 0;
  int64_t int_ = 0;
  std::string string_;
  std::vector<JsonValue> items_;
  std::vector<std::pair<std::string, JsonValue>> members_;
};

// Parses `text` (exactly `size` bytes). On failure throws llmcore::Error(E_MODEL_FORMAT,
// "<what>: invalid JSON at byte N: <reason>") where <what> names the document. A document of
// more than `max_values` values (each string, number, array, ... counts one) is refused.
JsonValue parse_json(const char* text, size_t size, const std::string& what, size_t max_values = SIZE_MAX);

}  // namespace llmcore
