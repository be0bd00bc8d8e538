// safetensors reader: map the whole file read-only, then check every header claim against the
// mapping so that TensorInfo::data/nbytes can be trusted without further bounds checks.
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/errors.h"
#include "core/json.h"

namespace llmcore {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the reference implementation's limit
// A real header holds about 8 JSON values per tensor (gpt2: ~1200 in all); 1M values are 130k
// tensors. Bounded so that a hostile 100 MB header of tiny values cannot make the parser
// allocate gigabytes (~110 bytes a value: at most ~120 MB here). Shapes of more dimensions than
// any framework makes are refused too.
constexpr size_t kMaxHeaderValues = size_t(1) << 20;
constexpr size_t kMaxRank = 16;
constexpr const char* kReadable = "llmcore reads F32, F16, BF16";

[[noreturn]] void format_error(const std::string& path, const std::string& msg) {
  throw Error(E_MODEL_FORMAT, "[safetensors] " + path + ": " + msg);
}
[[noreturn]] void io_error(const std::string& path, const char* what, int err) {
  throw Error(E_IO, "[safetensors] " + path + ": " + what + ": " + std::strerror(err));
}

// Element size of every dtype the safetensors spec defines; 0 when unknown.
size_t spec_dtype_size(const std::string& s) {
  static const struct { const char* name; size_t size; } table[] = {
      {"F64", 8}, {"F32", 4}, {"F16", 2},  {"BF16", 2}, {"I64", 8},     {"I32", 4},     {"I16", 2},
      {"I8", 1},  {"U64", 8}, {"U32", 4},  {"U16", 2},  {"U8", 1},      {"BOOL", 1},    {"F8_E4M3", 1},
      {"F8_E5M2", 1}};
  for (const auto& t : table)
    if (s == t.name) return t.size;
  return 0;
}

bool readable_dtype(const std::string& s, DType* out) {
  if (s == "F32") *out = DType::F32;
  else if (s == "F16") *out = DType::F16;
  else if (s == "BF16") *out = DType::BF16;
  else return false;
  return true;
}

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// GPT-2's causal-mask buffers: constants the model recomputes, often stored as U8/BOOL.
bool is_ignored_buffer(const std::string& name) {
  return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias");
}

// What a JSON value that should have been a non-negative integer actually was.
std::string describe(const JsonValue& v) {
  if (v.is_integer()) return std::to_string(v.as_int());
  if (v.is_number()) return "the non-integer number " + std::to_string(v.as_number());
  return std::string("a ") + v.kind_name();
}

struct Range {
  uint64_t begin, end;
  const std::string* name;
};

}  // namespace

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;

  // O_NONBLOCK so that a FIFO path fails the regular-file check instead of blocking open().
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) io_error(path, "cannot open", errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    io_error(path, "cannot stat", err);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw Error(E_IO, "[safetensors] " + path + ": is a directory, expected a .safetensors file");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(E_IO, "[safetensors] " + path + ": not a regular file");
  }
  const uint64_t file_size = uint64_t(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    format_error(path, "file is " + std::to_string(file_size) +
                           " bytes, shorter than the 8-byte header length prefix");
  }
  void* map = ::mmap(nullptr, size_t(file_size), PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) io_error(path, "cannot mmap", map_err);
  f->map_ = map;  // from here on the destructor unmaps, also when a check below throws
  f->map_size_ = size_t(file_size);
  const uint8_t* base = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len == 0) format_error(path, "header length is 0");
  if (header_len > kMaxHeaderBytes)
    format_error(path, "header length " + std::to_string(header_len) + " exceeds the limit of " +
                           std::to_string(kMaxHeaderBytes) + " bytes (100 MiB)");
  if (header_len > file_size - 8)
    format_error(path, "header length " + std::to_string(header_len) + " exceeds file size " +
                           std::to_string(file_size));
  const uint8_t* data = base + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;

  const JsonValue header = parse_json(reinterpret_cast<const char*>(base + 8), size_t(header_len),
                                      "[safetensors] " + path + ": header", kMaxHeaderValues);
  if (!header.is_object())
    format_error(path, std::string("header is a JSON ") + header.kind_name() + ", expected an object");

  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.members()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        format_error(path, std::string("__metadata__ is a ") + entry.kind_name() + ", expected an object");
      for (const auto& [key, value] : entry.members()) {
        if (!value.is_string())
          format_error(path, "__metadata__ value for \"" + key + "\" is a " + value.kind_name() +
                                 ", expected a string");
        f->metadata_[key] = value.as_string();
      }
      continue;
    }
    const std::string tensor = "tensor \"" + name + "\"";
    if (!entry.is_object())
      format_error(path, tensor + " is a " + entry.kind_name() + ", expected an object");
    for (const auto& m : entry.members())
      if (m.first != "dtype" && m.first != "shape" && m.first != "data_offsets")
        format_error(path, tensor + " has unexpected key \"" + m.first +
                               "\"; expected only dtype, shape, data_offsets");
    const JsonValue* dtype_v = entry.find("dtype");
    const JsonValue* shape_v = entry.find("shape");
    const JsonValue* offsets_v = entry.find("data_offsets");
    if (!dtype_v || !shape_v || !offsets_v)
      format_error(path, tensor + " lacks \"" +
                             (!dtype_v ? "dtype" : !shape_v ? "shape" : "data_offsets") + "\"");

    if (!dtype_v->is_string())
      format_error(path, tensor + " dtype is a " + dtype_v->kind_name() + ", expected a string");
    const std::string& dtype_s = dtype_v->as_string();
    const size_t elem_size = spec_dtype_size(dtype_s);
    const bool ignored = is_ignored_buffer(name);
    DType dtype = DType::F32;
    if (!ignored && !readable_dtype(dtype_s, &dtype)) {
      if (elem_size) format_error(path, tensor + " has dtype " + dtype_s + "; " + kReadable);
      format_error(path, tensor + " has unknown dtype \"" + dtype_s + "\"; " + kReadable);
    }

    if (!shape_v->is_array())
      format_error(path, tensor + " shape is a " + shape_v->kind_name() + ", expected an array");
    if (shape_v->items().size() > kMaxRank)
      format_error(path, tensor + " shape has " + std::to_string(shape_v->items().size()) + " dimensions, at most " +
                             std::to_string(kMaxRank) + " are supported");
    std::vector<int64_t> shape;
    // Product of the non-zero dims must fit int64 so TensorInfo::numel() cannot overflow.
    uint64_t nonzero_product = 1;
    bool has_zero = false;
    for (const JsonValue& d : shape_v->items()) {
      if (!d.is_integer() || d.as_int() < 0)
        format_error(path, tensor + " shape[" + std::to_string(shape.size()) + "] is " + describe(d) +
                               ", expected a non-negative integer");
      shape.push_back(d.as_int());
      if (d.as_int() == 0) {
        has_zero = true;
      } else if (__builtin_mul_overflow(nonzero_product, uint64_t(d.as_int()), &nonzero_product) ||
                 nonzero_product > uint64_t(INT64_MAX)) {
        format_error(path, tensor + " shape " + shape_str(shape) + "... has too many elements");
      }
    }

    if (!offsets_v->is_array())
      format_error(path, tensor + " data_offsets is a " + offsets_v->kind_name() + ", expected an array of 2 integers");
    if (offsets_v->items().size() != 2)
      format_error(path, tensor + " data_offsets has " + std::to_string(offsets_v->items().size()) +
                             " elements, expected 2");
    for (int i = 0; i < 2; ++i) {
      const JsonValue& o = offsets_v->items()[i];
      if (!o.is_integer() || o.as_int() < 0)
        format_error(path, tensor + " data_offsets[" + std::to_string(i) + "] is " + describe(o) +
                               ", expected a non-negative integer");
    }
    const JsonValue& b = offsets_v->items()[0];
    const JsonValue& e = offsets_v->items()[1];
    const uint64_t begin = uint64_t(b.as_int()), end = uint64_t(e.as_int());
    if (begin > end)
      format_error(path, tensor + " data_offsets [" + std::to_string(begin) + ", " +
                             std::to_string(end) + "] have begin > end");
    if (end > data_size)
      format_error(path, tensor + " data_offsets [" + std::to_string(begin) + ", " +
                             std::to_string(end) + "] exceed the data size " + std::to_string(data_size) +
                             " (file size " + std::to_string(file_size) + ")");

    // An ignored buffer with a dtype the spec does not define cannot be size-checked; its range
    // is still bounded and takes part in the overlap check.
    if (elem_size) {
      uint64_t expected = 0;
      if (!has_zero && __builtin_mul_overflow(nonzero_product, uint64_t(elem_size), &expected))
        expected = UINT64_MAX;  // certainly not equal to a range inside the file
      if (expected != end - begin)
        format_error(path, tensor + " has shape " + shape_str(shape) + " and dtype " + dtype_s + " = " +
                               (expected == UINT64_MAX ? std::string("too many") : std::to_string(expected)) +
                               " bytes, but data_offsets span " + std::to_string(end - begin) + " bytes");
    }
    if (end > begin) ranges.push_back({begin, end, &name});  // empty tensors touch no bytes

    if (ignored) {
      f->ignored_.push_back(name);
      continue;
    }
    f->index_[name] = f->tensors_.size();
    f->tensors_.push_back({name, dtype, std::move(shape), data + begin, size_t(end - begin)});
  }

  std::sort(ranges.begin(), ranges.end(),
            [](const Range& x, const Range& y) { return x.begin != y.begin ? x.begin < y.begin : x.end < y.end; });
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].begin < ranges[i - 1].end)
      format_error(path, "tensor \"" + *ranges[i].name + "\" bytes [" + std::to_string(ranges[i].begin) +
                             ", " + std::to_string(ranges[i].end) + ") overlap tensor \"" +
                             *ranges[i - 1].name + "\" bytes [" + std::to_string(ranges[i - 1].begin) +
                             ", " + std::to_string(ranges[i - 1].end) + ")");
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  const size_t shown = std::min<size_t>(shape.size(), 8);
  for (size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shown < shape.size()) s += ", ... (" + std::to_string(shape.size()) + " dims)";
  return s + "]";
}

}  // namespace llmcore
