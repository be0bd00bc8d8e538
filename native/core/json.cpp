// Strict RFC 8259 reader. Recursive descent over a byte range; every error names the byte offset
// so a corrupt checkpoint header can be inspected with a hex dump.
#include "core/json.h"

#include <charconv>
#include <cstdio>
#include <unordered_set>

#include "core/errors.h"

namespace llmcore {

namespace {
constexpr int kMaxDepth = 64;
}

class JsonParser {
 public:
  JsonParser(const char* text, size_t size, const std::string& what, size_t max_values)
      : begin_(reinterpret_cast<const uint8_t*>(text)), p_(begin_), end_(begin_ + size), what_(what),
        max_values_(max_values), values_left_(max_values) {}

  JsonValue parse_document() {
    skip_ws();
    JsonValue v = parse_value(0);
    skip_ws();
    if (p_ != end_) fail("unexpected " + describe_here() + " after the document");
    return v;
  }

 private:
  const uint8_t* begin_;
  const uint8_t* p_;
  const uint8_t* end_;
  const std::string& what_;
  const size_t max_values_;
  size_t values_left_;

  [[noreturn]] void fail(const std::string& reason) const { fail_at(p_, reason); }
  [[noreturn]] void fail_at(const uint8_t* at, const std::string& reason) const {
    throw Error(E_MODEL_FORMAT, what_ + ": invalid JSON at byte " + std::to_string(at - begin_) +
                                    ": " + reason);
  }

  // "end of input", "'x'" or "byte 0x1f", for error messages.
  std::string describe_here() const {
    if (p_ == end_) return "end of input";
    char buf[32];
    if (*p_ >= 0x20 && *p_ < 0x7f)
      std::snprintf(buf, sizeof buf, "character '%c'", *p_);
    else
      std::snprintf(buf, sizeof buf, "byte 0x%02x", *p_);
    return buf;
  }

  void skip_ws() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }

  void expect_literal(const char* word) {
    const uint8_t* start = p_;
    for (const char* w = word; *w; ++w, ++p_)
      if (p_ == end_ || *p_ != uint8_t(*w)) fail_at(start, std::string("invalid literal, expected '") + word + "'");
  }

  JsonValue parse_value(int depth) {
    if (p_ == end_) fail("unexpected end of input, expected a value");
    if (values_left_-- == 0) fail("more than " + std::to_string(max_values_) + " values");
    JsonValue v;
    switch (*p_) {
      case '{': return parse_object(depth + 1);
      case '[': return parse_array(depth + 1);
      case '"':
        v.kind_ = JsonValue::Kind::String;
        v.string_ = parse_string();
        return v;
      case 't':
      case 'f':
        v.kind_ = JsonValue::Kind::Bool;
        v.bool_ = *p_ == 't';
        expect_literal(v.bool_ ? "true" : "false");
        return v;
      case 'n': expect_literal("null"); return v;
      default:
        if (*p_ == '-' || (*p_ >= '0' && *p_ <= '9')) return parse_number();
        fail("unexpected " + describe_here() + ", expected a value");
    }
  }

  JsonValue parse_object(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth));
    JsonValue v;
    v.kind_ = JsonValue::Kind::Object;
    ++p_;  // '{'
    skip_ws();
    if (p_ != end_ && *p_ == '}') {
      ++p_;
      return v;
    }
    std::unordered_set<std::string> keys;  // duplicate detection without O(n^2) scans
    for (;;) {
      skip_ws();
      if (p_ == end_ || *p_ != '"') fail("unexpected " + describe_here() + ", expected an object key");
      const uint8_t* key_at = p_;
      std::string key = parse_string();
      if (!keys.insert(key).second) fail_at(key_at, "duplicate object key \"" + key + "\"");
      skip_ws();
      if (p_ == end_ || *p_ != ':') fail("unexpected " + describe_here() + ", expected ':'");
      ++p_;
      skip_ws();
      JsonValue member = parse_value(depth);
      v.members_.emplace_back(std::move(key), std::move(member));
      skip_ws();
      if (p_ != end_ && *p_ == ',') {
        ++p_;
        continue;
      }
      if (p_ != end_ && *p_ == '}') {
        ++p_;
        return v;
      }
      fail("unexpected " + describe_here() + ", expected ',' or '}'");
    }
  }

  JsonValue parse_array(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth));
    JsonValue v;
    v.kind_ = JsonValue::Kind::Array;
    ++p_;  // '['
    skip_ws();
    if (p_ != end_ && *p_ == ']') {
      ++p_;
      return v;
    }
    for (;;) {
      skip_ws();
      v.items_.push_back(parse_value(depth));
      skip_ws();
      if (p_ != end_ && *p_ == ',') {
        ++p_;
        continue;
      }
      if (p_ != end_ && *p_ == ']') {
        ++p_;
        return v;
      }
      fail("unexpected " + describe_here() + ", expected ',' or ']'");
    }
  }

  // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?  -- no leading zeros, no NaN/Infinity, no '+'.
  JsonValue parse_number() {
    const uint8_t* start = p_;
    auto digit = [&] { return p_ != end_ && *p_ >= '0' && *p_ <= '9'; };
    bool integral = true;
    if (*p_ == '-') ++p_;
    if (!digit()) fail("expected a digit");
    if (*p_ == '0') {
      ++p_;
      if (digit()) fail_at(p_ - 1, "leading zero in a number");
    } else {
      while (digit()) ++p_;
    }
    if (p_ != end_ && *p_ == '.') {
      integral = false;
      ++p_;
      if (!digit()) fail("expected a digit after '.'");
      while (digit()) ++p_;
    }
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
      integral = false;
      ++p_;
      if (p_ != end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (!digit()) fail("expected a digit in the exponent");
      while (digit()) ++p_;
    }
    // from_chars is locale-independent, unlike strtod.
    const char* s = reinterpret_cast<const char*>(start);
    const char* e = reinterpret_cast<const char*>(p_);
    JsonValue v;
    v.kind_ = JsonValue::Kind::Number;
    auto r = std::from_chars(s, e, v.number_);
    if (r.ec != std::errc() || r.ptr != e) fail_at(start, "number out of range");
    if (integral) {
      auto ri = std::from_chars(s, e, v.int_);
      v.is_int_ = ri.ec == std::errc() && ri.ptr == e;
      if (!v.is_int_) v.int_ = 0;
    }
    return v;
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xc0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += char(0xe0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3f));
      out += char(0x80 | (cp & 0x3f));
    } else {
      out += char(0xf0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3f));
      out += char(0x80 | ((cp >> 6) & 0x3f));
      out += char(0x80 | (cp & 0x3f));
    }
  }

  // Four hex digits after "\u".
  uint32_t parse_hex4() {
    if (end_ - p_ < 4) fail("truncated \\u escape");
    uint32_t cp = 0;
    for (int i = 0; i < 4; ++i, ++p_) {
      const uint8_t c = *p_;
      uint32_t d;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      else fail("invalid hex digit in \\u escape");
      cp = cp * 16 + d;
    }
    return cp;
  }

  // One raw UTF-8 sequence starting at p_ (lead byte >= 0x80): rejects overlong forms,
  // surrogates (U+D800..DFFF) and code points above U+10FFFF.
  void copy_utf8(std::string& out) {
    const uint8_t* start = p_;
    const uint8_t c = *p_;
    int len;
    uint8_t lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c == 0xe0) len = 3, lo = 0xa0;
    else if (c >= 0xe1 && c <= 0xec) len = 3;
    else if (c == 0xed) len = 3, hi = 0x9f;
    else if (c >= 0xee && c <= 0xef) len = 3;
    else if (c == 0xf0) len = 4, lo = 0x90;
    else if (c >= 0xf1 && c <= 0xf3) len = 4;
    else if (c == 0xf4) len = 4, hi = 0x8f;
    else fail("invalid UTF-8 lead byte");
    if (end_ - p_ < len) fail("truncated UTF-8 sequence");
    for (int i = 1; i < len; ++i) {
      const uint8_t b = p_[i];
      if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xbf)) fail_at(p_ + i, "invalid UTF-8 sequence");
    }
    p_ += len;
    out.append(reinterpret_cast<const char*>(start), len);
  }

  std::string parse_string() {
    ++p_;  // opening quote
    std::string out;
    for (;;) {
      if (p_ == end_) fail("unterminated string");
      const uint8_t c = *p_;
      if (c == '"') {
        ++p_;
        return out;
      }
      if (c < 0x20) fail("control character in string (must be escaped)");
      if (c >= 0x80) {
        copy_utf8(out);
        continue;
      }
      if (c != '\\') {
        out += char(c);
        ++p_;
        continue;
      }
      const uint8_t* esc_at = p_;
      ++p_;
      if (p_ == end_) fail("unterminated escape");
      switch (*p_++) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = parse_hex4();
          if (cp >= 0xdc00 && cp <= 0xdfff) fail_at(esc_at, "lone low surrogate in \\u escape");
          if (cp >= 0xd800 && cp <= 0xdbff) {
            if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u')
              fail_at(esc_at, "high surrogate not followed by a low surrogate");
            p_ += 2;
            const uint32_t low = parse_hex4();
            if (low < 0xdc00 || low > 0xdfff) fail_at(esc_at, "high surrogate not followed by a low surrogate");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail_at(esc_at, "invalid escape");
      }
    }
  }
};

JsonValue parse_json(const char* text, size_t size, const std::string& what, size_t max_values) {
  return JsonParser(text, size, what, max_values).parse_document();
}

const JsonValue* JsonValue::find(const std::string& key) const {
  for (const auto& m : members_)
    if (m.first == key) return &m.second;
  return nullptr;
}

const char* JsonValue::kind_name() const {
  switch (kind_) {
    case Kind::Null: return "null";
    case Kind::Bool: return "boolean";
    case Kind::Number: return "number";
    case Kind::String: return "string";
    case Kind::Array: return "array";
    case Kind::Object: return "object";
  }
  return "?";
}

}  // namespace llmcore
