// Memory-mapped safetensors file (https://huggingface.co/docs/safetensors): an 8-byte little-
// endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, "__metadata__"},
// then the tensor bytes. Everything is validated at open(), so later reads cannot go out of
// bounds: header length bound, JSON well-formed, known dtype, shape product * dtype size equal to
// the byte range, every range inside the file, ranges not overlapping.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace llmcore {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data;  // into the mapping; valid while the SafetensorsFile lives
  size_t nbytes;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// "[50257, 768]" for messages; past 8 dimensions, "[d0, ..., d7, ... (n dims)]" (headers are
// the user's input: a message must not grow with them).
std::string shape_str(const std::vector<int64_t>& shape);

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws Error(E_IO) when the file cannot be opened or mapped and
  // Error(E_MODEL_FORMAT) for any format problem; messages start with "[safetensors] <path>: ".
  // Dtypes other than F32/F16/BF16 (e.g. I64, U8) are rejected naming the tensor, except for
  // tensors whose name ends in ".attn.bias" or ".attn.masked_bias" (GPT-2's constant buffers,
  // which the model ignores): those are listed in ignored() and not in tensors().
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::vector<std::string>& ignored() const { return ignored_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr when absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::vector<std::string> ignored_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace llmcore
