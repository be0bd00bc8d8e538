// Standalone test of the strict JSON reader and the safetensors loader: valid files load, every
// kind of corrupt file is rejected with the right code and a message naming the problem, and
// random mutations of a valid file only ever throw llmcore::Error.
//   g++ -std=c++17 -O1 -g -fsanitize=address,undefined -Inative native/tests/safetensors_test.cpp
//       native/core/json.cpp native/core/safetensors.cpp native/core/dtype.cpp -o /tmp/st_test
//   /tmp/st_test [fuzz-iterations] [seed]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>

#include "core/errors.h"
#include "core/json.h"
#include "core/safetensors.h"

using namespace llmcore;

static int g_cases = 0, g_failed = 0;
static std::string g_dir;

static void report(const std::string& name, bool ok, const std::string& why = "") {
  ++g_cases;
  if (!ok) ++g_failed;
  std::printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", name.c_str(), ok ? "" : ": ", ok ? "" : why.c_str());
}

// ---- JSON --------------------------------------------------------------------------------------

static void json_ok(const std::string& name, const std::string& text,
                    const std::function<bool(const JsonValue&)>& check = nullptr) {
  try {
    JsonValue v = parse_json(text.data(), text.size(), "test");
    report("json ok: " + name, !check || check(v), "parsed but check failed");
  } catch (const Error& e) {
    report("json ok: " + name, false, e.what());
  }
}

static void json_err(const std::string& name, const std::string& text, const std::string& fragment) {
  try {
    parse_json(text.data(), text.size(), "test");
    report("json rejects: " + name, false, "accepted");
  } catch (const Error& e) {
    const std::string msg = e.what();
    const bool ok = std::strcmp(e.code(), E_MODEL_FORMAT) == 0 && msg.rfind("test: invalid JSON at byte ", 0) == 0 &&
                    msg.find(fragment) != std::string::npos;
    report("json rejects: " + name, ok, "message \"" + msg + "\" lacks \"" + fragment + "\"");
  }
}

static void json_cases() {
  json_ok("nested", R"( {"a": [1, 2, {"b": null}], "c": true, "d": false} )", [](const JsonValue& v) {
    return v.is_object() && v.members().size() == 3 && v.find("a")->items().size() == 3 &&
           v.find("a")->items()[2].find("b")->is_null() && v.find("c")->as_bool() && !v.find("d")->as_bool() &&
           v.find("zz") == nullptr && std::strcmp(v.kind_name(), "object") == 0;
  });
  json_ok("member order kept", R"({"z":1,"a":2})",
          [](const JsonValue& v) { return v.members()[0].first == "z" && v.members()[1].first == "a"; });
  json_ok("zero", "0", [](const JsonValue& v) { return v.is_integer() && v.as_int() == 0; });
  json_ok("minus zero", "-0", [](const JsonValue& v) { return v.is_integer() && v.as_int() == 0; });
  json_ok("int64 max", "9223372036854775807",
          [](const JsonValue& v) { return v.is_integer() && v.as_int() == INT64_MAX; });
  json_ok("int64 min", "-9223372036854775808",
          [](const JsonValue& v) { return v.is_integer() && v.as_int() == INT64_MIN; });
  json_ok("beyond int64 is a plain number", "9223372036854775808",
          [](const JsonValue& v) { return v.is_number() && !v.is_integer() && v.as_number() > 9e18; });
  json_ok("fraction", "-1.5", [](const JsonValue& v) { return !v.is_integer() && v.as_number() == -1.5; });
  json_ok("exponent", "1E+3", [](const JsonValue& v) { return !v.is_integer() && v.as_number() == 1000; });
  json_ok("escapes", R"("\"\\\/\b\f\n\r\t\u00e9\u20ac\ud83d\ude00\u0000")", [](const JsonValue& v) {
    return v.as_string() == std::string("\"\\/\b\f\n\r\t\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80") + '\0';
  });
  json_ok("raw UTF-8", "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\"",
          [](const JsonValue& v) { return v.as_string().size() == 13; });
  json_ok("depth 64", std::string(64, '[') + std::string(64, ']'));
  json_ok("empty containers", "[{}, [], \"\"]", [](const JsonValue& v) { return v.items().size() == 3; });

  json_err("empty input", "", "byte 0: unexpected end of input");
  json_err("only whitespace", "  \n", "byte 3:");
  json_err("trailing garbage", "{}x", "byte 2: unexpected character 'x' after the document");
  json_err("two documents", "{} {}", "after the document");
  json_err("trailing comma in array", "[1,]", "byte 3:");
  json_err("trailing comma in object", R"({"a":1,})", "expected an object key");
  json_err("missing comma", "[1 2]", "expected ',' or ']'");
  json_err("missing colon", R"({"a" 1})", "expected ':'");
  json_err("non-string key", "{1:2}", "expected an object key");
  json_err("single quotes", "['a']", "unexpected character");
  json_err("leading zero", "01", "leading zero");
  json_err("negative leading zero", "-012", "leading zero");
  json_err("bare dot", "1.", "after '.'");
  json_err("leading dot", ".5", "expected a value");
  json_err("plus sign", "+1", "expected a value");
  json_err("lone minus", "-", "expected a digit");
  json_err("empty exponent", "1e", "exponent");
  json_err("NaN", "NaN", "expected a value");
  json_err("Infinity", "Infinity", "expected a value");
  json_err("-Infinity", "-Infinity", "expected a digit");
  json_err("overflowing double", "1e400", "out of range");
  json_err("bad literal", "tru", "expected 'true'");
  json_err("bad literal null", "nul", "expected 'null'");
  json_err("invalid escape", R"("\x")", "invalid escape");
  json_err("short \\u", R"("\u12")", "\\u escape");
  json_err("non-hex \\u", R"("\u12g4")", "invalid hex digit");
  json_err("lone high surrogate", R"("\ud800")", "high surrogate");
  json_err("lone low surrogate", R"("\udc00")", "lone low surrogate");
  json_err("high surrogate then BMP", R"("\ud800\u0041")", "high surrogate");
  json_err("unterminated string", "\"abc", "unterminated string");
  json_err("raw control char", "\"a\x01\"", "byte 2: control character");
  json_err("raw tab", "\"a\tb\"", "control character");
  json_err("raw newline", "\"a\nb\"", "control character");
  json_err("NUL outside string", std::string("[1,\0]", 5), "byte 0x00");
  json_err("invalid UTF-8 lead byte", "\"\xff\"", "invalid UTF-8 lead");
  json_err("continuation byte alone", "\"\x80\"", "invalid UTF-8 lead");
  json_err("overlong 2-byte", "\"\xc0\xaf\"", "invalid UTF-8 lead");
  json_err("overlong 3-byte", "\"\xe0\x80\xaf\"", "invalid UTF-8 sequence");
  json_err("UTF-8 surrogate", "\"\xed\xa0\x80\"", "invalid UTF-8 sequence");
  json_err("above U+10FFFF", "\"\xf4\x90\x80\x80\"", "invalid UTF-8 sequence");
  json_err("truncated UTF-8", "\"\xe2\x82", "truncated UTF-8");
  json_err("bad continuation", "\"\xe2\x28\xa1\"", "invalid UTF-8 sequence");
  json_err("depth 65", std::string(65, '[') + std::string(65, ']'), "nesting deeper than 64");
  json_err("depth 65 objects", [] {
    std::string s;
    for (int i = 0; i < 65; ++i) s += "{\"a\":";
    return s + "1" + std::string(65, '}');
  }(), "nesting deeper than 64");
  json_err("very deep (no stack overflow)", std::string(100000, '['), "nesting deeper");
  json_err("duplicate key", R"({"a":1,"b":2,"a":3})", "byte 13: duplicate object key \"a\"");
  json_err("duplicate key after escape", R"({"a":1,"\u0061":2})", "duplicate object key");
}

// ---- safetensors -------------------------------------------------------------------------------

static std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char((n >> (8 * i)) & 0xff);
  return s;
}
static std::string st_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}
static std::string write_file(const std::string& bytes) {
  static int counter = 0;
  const std::string path = g_dir + "/f" + std::to_string(counter++) + ".safetensors";
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
  return path;
}

static void st_ok(const std::string& name, const std::string& bytes,
                  const std::function<bool(const SafetensorsFile&)>& check = nullptr) {
  try {
    auto f = SafetensorsFile::open(write_file(bytes));
    report("st ok: " + name, !check || check(*f), "opened but check failed");
  } catch (const Error& e) {
    report("st ok: " + name, false, e.what());
  }
}

static void st_err_path(const std::string& name, const std::string& path, const char* code,
                        const std::string& fragment) {
  try {
    SafetensorsFile::open(path);
    report("st rejects: " + name, false, "accepted");
  } catch (const Error& e) {
    const std::string msg = e.what();
    const bool ok = std::strcmp(e.code(), code) == 0 && msg.rfind("[safetensors] " + path + ": ", 0) == 0 &&
                    msg.find(fragment) != std::string::npos;
    report("st rejects: " + name, ok,
           std::string(e.code()) + " \"" + msg + "\"; wanted " + code + " with \"" + fragment + "\"");
  }
}
static void st_err(const std::string& name, const std::string& bytes, const std::string& fragment) {
  st_err_path(name, write_file(bytes), E_MODEL_FORMAT, fragment);
}

// Header with one tensor entry `t` (the JSON object text) named `name`.
static std::string one(const std::string& name, const std::string& t) { return "{\"" + name + "\":" + t + "}"; }

static float f32_at(const TensorInfo& t, size_t i) {
  float v;
  std::memcpy(&v, t.data + 4 * i, 4);  // the data may be unaligned
  return v;
}

// A small GPT-2-like file: F32 [2,3], F16 [4], and a U8 causal-mask buffer to be ignored.
static std::string valid_header() {
  return R"({"__metadata__":{"format":"pt"},)"
         R"("wte.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
         R"("h.0.ln_1.weight":{"dtype":"F16","shape":[4],"data_offsets":[24,32]},)"
         R"("h.0.attn.bias":{"dtype":"U8","shape":[1,1,2,2],"data_offsets":[32,36]}})";
}
static std::string valid_data() {
  std::string d(36, '\0');
  for (int i = 0; i < 6; ++i) {
    const float v = float(i) + 0.5f;
    std::memcpy(&d[4 * i], &v, 4);
  }
  const uint16_t one_f16 = 0x3c00;
  for (int i = 0; i < 4; ++i) std::memcpy(&d[24 + 2 * i], &one_f16, 2);
  return d;
}

static void safetensors_cases() {
  const std::string data = valid_data();
  st_ok("GPT-2-like file", st_bytes(valid_header(), data), [](const SafetensorsFile& f) {
    const TensorInfo* w = f.find("wte.weight");
    const TensorInfo* ln = f.find("h.0.ln_1.weight");
    return f.tensors().size() == 2 && f.ignored().size() == 1 && f.ignored()[0] == "h.0.attn.bias" &&
           f.find("h.0.attn.bias") == nullptr && f.find("nope") == nullptr && w && ln &&
           w->dtype == DType::F32 && w->shape == std::vector<int64_t>{2, 3} && w->nbytes == 24 &&
           w->numel() == 6 && f32_at(*w, 5) == 5.5f && ln->dtype == DType::F16 && ln->nbytes == 8 &&
           ln->data == w->data + 24 && f.metadata().at("format") == "pt";
  });
  // Pad the header to an odd length so the tensor data starts at an odd address.
  st_ok("unaligned data", st_bytes(valid_header() + "   ", data), [](const SafetensorsFile& f) {
    const TensorInfo* w = f.find("wte.weight");
    return (reinterpret_cast<uintptr_t>(w->data) & 1) == 1 && f32_at(*w, 1) == 1.5f;
  });
  st_ok("BF16, hole between tensors, trailing bytes",
        st_bytes(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},)"
                 R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                 std::string(20, '\0')),
        [](const SafetensorsFile& f) { return f.tensors().size() == 2 && f.find("a")->dtype == DType::BF16; });
  st_ok("scalar and empty tensors",
        st_bytes(R"({"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},)"
                 R"("e":{"dtype":"F16","shape":[0,5],"data_offsets":[4,4]},)"
                 R"("z":{"dtype":"F16","shape":[3,0],"data_offsets":[2,2]}})",
                 std::string(4, '\0')),
        [](const SafetensorsFile& f) {
          return f.find("s")->numel() == 1 && f.find("e")->numel() == 0 && f.find("e")->nbytes == 0;
        });
  st_ok("no tensors", st_bytes("{}", ""), [](const SafetensorsFile& f) { return f.tensors().empty(); });
  st_ok("ignored I64 masked_bias and unknown-dtype bias",
        st_bytes(R"({"h.0.attn.masked_bias":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
                 R"("h.1.attn.bias":{"dtype":"Q9","shape":[7],"data_offsets":[8,9]}})",
                 std::string(9, '\0')),
        [](const SafetensorsFile& f) { return f.tensors().empty() && f.ignored().size() == 2; });

  // File and header length.
  st_err("empty file", "", "file is 0 bytes, shorter than the 8-byte");
  st_err("7-byte file", std::string(7, '\0'), "file is 7 bytes");
  st_err("header length 0", le64(0) + "{}", "header length is 0");
  st_err("header length over 100 MiB", le64((100ull << 20) + 1) + "{}", "exceeds the limit");
  st_err("header length 2^64-1", le64(~0ull) + "{}", "exceeds the limit");
  // A header of more values than any checkpoint has (a 2 MB array of zeros, 1M values):
  // refused while parsing, before it costs ~110 bytes a value.
  {
    std::string many = "{\"x\":{\"dtype\":\"F32\",\"shape\":[";
    for (size_t i = 0; i < (size_t(1) << 20); ++i) many += "0,";
    many += "0],\"data_offsets\":[0,0]}}";
    st_err("a header of 1M values", st_bytes(many, ""), "more than 1048576 values");
  }
  {
    std::string rank17 = "[";
    for (int i = 0; i < 17; ++i) rank17 += i ? ",1" : "1";
    st_err("a shape of 17 dimensions", st_bytes(one("x", R"({"dtype":"F32","shape":)" + rank17 + R"(],"data_offsets":[0,4]})"), std::string(4, '\0')),
           "shape has 17 dimensions, at most 16");
  }
  st_err("header length past EOF", le64(50) + "{}", "header length 50 exceeds file size 10");
  st_err("header length 1 past EOF", le64(3) + "{}", "header length 3 exceeds file size 10");

  // Header JSON shape.
  st_err("header not JSON", st_bytes("{\"a\":", ""), "header: invalid JSON at byte 5");
  st_err("header trailing garbage", st_bytes("{}}", ""), "invalid JSON at byte 2");
  st_err("header NUL padding", st_bytes(std::string("{}\0\0", 4), ""), "invalid JSON at byte 2");
  st_err("header is an array", st_bytes("[]", ""), "header is a JSON array, expected an object");
  st_err("duplicate tensor name",
         st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                  std::string(8, '\0')),
         "duplicate object key \"a\"");
  st_err("invalid UTF-8 name", st_bytes("{\"\xc3\":{}}", ""), "invalid UTF-8");
  st_err("metadata not an object", st_bytes(R"({"__metadata__":[]})", ""), "__metadata__ is a array");
  st_err("metadata value not a string", st_bytes(R"({"__metadata__":{"n":3}})", ""),
         "__metadata__ value for \"n\" is a number, expected a string");

  // Entry structure.
  const std::string d4(4, '\0');
  st_err("entry not an object", st_bytes(one("w", "7"), d4), "tensor \"w\" is a number, expected an object");
  st_err("missing dtype", st_bytes(one("w", R"({"shape":[1],"data_offsets":[0,4]})"), d4),
         "tensor \"w\" lacks \"dtype\"");
  st_err("missing shape", st_bytes(one("w", R"({"dtype":"F32","data_offsets":[0,4]})"), d4), "lacks \"shape\"");
  st_err("missing data_offsets", st_bytes(one("w", R"({"dtype":"F32","shape":[1]})"), d4),
         "lacks \"data_offsets\"");
  st_err("extra key", st_bytes(one("w", R"({"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1})"), d4),
         "tensor \"w\" has unexpected key \"x\"");
  st_err("dtype not a string", st_bytes(one("w", R"({"dtype":4,"shape":[1],"data_offsets":[0,4]})"), d4),
         "tensor \"w\" dtype is a number");
  for (const char* dt : {"F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "U16", "U32", "U64"})
    st_err(std::string("dtype ") + dt,
           st_bytes(one("h.0.mlp.c_fc.weight", std::string(R"({"dtype":")") + dt +
                                                   R"(","shape":[1],"data_offsets":[0,1]})"),
                    d4),
           std::string("tensor \"h.0.mlp.c_fc.weight\" has dtype ") + dt + "; llmcore reads F32, F16, BF16");
  st_err("unknown dtype", st_bytes(one("w", R"({"dtype":"Q4_0","shape":[1],"data_offsets":[0,4]})"), d4),
         "tensor \"w\" has unknown dtype \"Q4_0\"");
  st_err("lowercase dtype", st_bytes(one("w", R"({"dtype":"f32","shape":[1],"data_offsets":[0,4]})"), d4),
         "unknown dtype \"f32\"");
  st_err("name merely containing attn.bias",
         st_bytes(one("h.0.attn.bias.x", R"({"dtype":"U8","shape":[1],"data_offsets":[0,1]})"), d4),
         "has dtype U8");
  st_err("ignored buffer still bounds-checked",
         st_bytes(one("h.0.attn.bias", R"({"dtype":"U8","shape":[8],"data_offsets":[0,8]})"), d4),
         "tensor \"h.0.attn.bias\" data_offsets [0, 8] exceed the data size 4");

  // Shape.
  st_err("shape not an array", st_bytes(one("w", R"({"dtype":"F32","shape":4,"data_offsets":[0,4]})"), d4),
         "tensor \"w\" shape is a number, expected an array");
  st_err("negative dim", st_bytes(one("w", R"({"dtype":"F32","shape":[-1],"data_offsets":[0,4]})"), d4),
         "tensor \"w\" shape[0] is -1, expected a non-negative integer");
  st_err("fractional dim", st_bytes(one("w", R"({"dtype":"F32","shape":[1,1.0],"data_offsets":[0,4]})"), d4),
         "shape[1] is the non-integer number");
  st_err("string dim", st_bytes(one("w", R"({"dtype":"F32","shape":["1"],"data_offsets":[0,4]})"), d4),
         "shape[0] is a string");
  st_err("huge dim", st_bytes(one("w", R"({"dtype":"F32","shape":[1e30],"data_offsets":[0,4]})"), d4),
         "shape[0] is the non-integer number");
  st_err("element count overflows",
         st_bytes(one("w", R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]})"), d4),
         "has too many elements");
  st_err("numel would overflow before a zero dim",
         st_bytes(one("w", R"({"dtype":"F32","shape":[4611686018427387904,4,0],"data_offsets":[0,0]})"), d4),
         "has too many elements");
  st_err("bytes overflow", st_bytes(one("w", R"({"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,4]})"), d4),
         "= too many bytes, but data_offsets span 4 bytes");
  st_err("size mismatch", st_bytes(one("wpe.weight", R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,20]})"),
                                   std::string(24, '\0')),
         "tensor \"wpe.weight\" has shape [2, 3] and dtype F32 = 24 bytes, but data_offsets span 20 bytes");

  // Offsets.
  st_err("offsets not an array", st_bytes(one("w", R"({"dtype":"F32","shape":[1],"data_offsets":{}})"), d4),
         "data_offsets is a object");
  st_err("three offsets", st_bytes(one("w", R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,8]})"), d4),
         "data_offsets has 3 elements, expected 2");
  st_err("negative offset", st_bytes(one("w", R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})"), d4),
         "data_offsets[0] is -4");
  st_err("offset beyond int64", st_bytes(one("w", R"({"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551616]})"), d4),
         "data_offsets[1] is the non-integer number");
  st_err("begin > end", st_bytes(one("w", R"({"dtype":"F32","shape":[1],"data_offsets":[4,0]})"), d4),
         "data_offsets [4, 0] have begin > end");
  st_err("end past the data", st_bytes(one("w", R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), d4),
         "tensor \"w\" data_offsets [0, 8] exceed the data size 4");
  st_err("huge offsets", st_bytes(one("w", R"({"dtype":"F32","shape":[1],"data_offsets":[9223372036854775803,9223372036854775807]})"), d4),
         "exceed the data size");
  st_err("overlap",
         st_bytes(R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
                  R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                  std::string(12, '\0')),
         "tensor \"b\" bytes [4, 12) overlap tensor \"a\" bytes [0, 8)");
  st_err("identical ranges",
         st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("b":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})",
                  d4),
         "overlap");
  st_err("overlap with an ignored buffer",
         st_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("h.0.attn.bias":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})",
                  std::string(5, '\0')),
         "overlap");

  // Files that cannot be read.
  st_err_path("missing file", g_dir + "/does-not-exist.safetensors", E_IO, "cannot open: No such file or directory");
  st_err_path("directory", g_dir, E_IO, "is a directory");
}

// ---- mutation fuzz -----------------------------------------------------------------------------

// Each mutation of the valid file must either open (with self-consistent tensors whose bytes can
// all be read) or throw llmcore::Error; anything else, or a sanitizer report, is a failure.
static void fuzz(int iterations, uint32_t seed) {
  const std::string base = st_bytes(valid_header(), valid_data());
  const size_t header_end = 8 + valid_header().size();
  const char interesting[] = "{}[]\",:-.eE0123456789 \\u\x80\xff";
  std::mt19937 rng(seed);
  auto pick = [&](size_t n) { return n ? size_t(rng() % n) : 0; };
  int opened = 0, rejected = 0, bad = 0;
  std::string first_bad;
  for (int it = 0; it < iterations; ++it) {
    std::string b = base;
    const int n_mut = 1 + int(pick(3));
    for (int m = 0; m < n_mut; ++m) {
      const size_t at_header = 8 + pick(header_end - 8);
      switch (pick(8)) {
        case 0: if (!b.empty()) b[pick(b.size())] ^= char(1u << pick(8)); break;
        case 1: if (!b.empty()) b[pick(b.size())] = char(rng()); break;
        case 2: if (at_header < b.size()) b[at_header] = interesting[pick(sizeof interesting - 1)]; break;
        case 3: b.resize(pick(b.size() + 1)); break;
        case 4: b.erase(std::min(at_header, b.size()), 1); break;
        case 5: b.insert(std::min(at_header, b.size()), 1, interesting[pick(sizeof interesting - 1)]); break;
        case 6: {  // a nearby or random header length
          const uint64_t len = pick(2) ? uint64_t(int64_t(valid_header().size()) + int64_t(pick(9)) - 4)
                                       : (uint64_t(rng()) << 32 | rng());
          if (b.size() >= 8) b.replace(0, 8, le64(len));
          break;
        }
        case 7: b += std::string(pick(16), char(rng())); break;
      }
    }
    const std::string path = g_dir + "/fuzz.safetensors";
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(b.data(), std::streamsize(b.size()));
    try {
      auto f = SafetensorsFile::open(path);
      unsigned sum = 0;
      for (const TensorInfo& t : f->tensors()) {
        if (t.numel() * int64_t(dtype_size(t.dtype)) != int64_t(t.nbytes) || t.nbytes > b.size()) {
          ++bad;
          if (first_bad.empty()) first_bad = "inconsistent tensor " + t.name;
        }
        for (size_t i = 0; i < t.nbytes; ++i) sum += t.data[i];
      }
      (void)sum;
      ++opened;
    } catch (const Error& e) {
      ++rejected;
    } catch (const std::exception& e) {
      ++bad;
      if (first_bad.empty()) first_bad = std::string("non-llmcore exception: ") + e.what();
    }
  }
  report("fuzz: " + std::to_string(iterations) + " file mutations (seed " + std::to_string(seed) + "): " +
             std::to_string(opened) + " opened, " + std::to_string(rejected) + " rejected",
         bad == 0, first_bad);

  // The JSON reader on its own: random mutations of a header, many more of them since it is cheap.
  const std::string text = valid_header();
  int json_bad = 0;
  const int json_iterations = iterations * 10;
  for (int it = 0; it < json_iterations; ++it) {
    std::string t = text;
    for (int m = 0, n = 1 + int(pick(4)); m < n; ++m) {
      const size_t at = pick(t.size() + 1);
      switch (pick(4)) {
        case 0: if (at < t.size()) t[at] = interesting[pick(sizeof interesting - 1)]; break;
        case 1: if (at < t.size()) t[at] = char(rng()); break;
        case 2: t.insert(at, 1, interesting[pick(sizeof interesting - 1)]); break;
        case 3: t.resize(at); break;
      }
    }
    try {
      parse_json(t.data(), t.size(), "fuzz");
    } catch (const Error&) {
    } catch (...) {
      ++json_bad;
    }
  }
  report("fuzz: " + std::to_string(json_iterations) + " JSON mutations", json_bad == 0,
         std::to_string(json_bad) + " threw something other than llmcore::Error");
}

int main(int argc, char** argv) {
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 2000;
  const uint32_t seed = argc > 2 ? uint32_t(std::strtoul(argv[2], nullptr, 10)) : 12345u;
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/llmcore_st_XXXXXX";
  if (!mkdtemp(&templ[0])) {
    std::perror("mkdtemp");
    return 2;
  }
  g_dir = templ;

  json_cases();
  safetensors_cases();
  fuzz(iterations, seed);

  std::error_code ec;
  std::filesystem::remove_all(g_dir, ec);
  std::printf("%d cases, %d failed\n", g_cases, g_failed);
  return g_failed == 0 ? 0 : 1;
}
