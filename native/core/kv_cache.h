// Paged KV cache: fixed-size blocks of kBlockTokens positions (all layers' K and V, layout in
// core/backend.h), handed out from a free list and shared between sequences by refcount, so a
// forked sequence (numReturnSequences) shares its prompt's blocks instead of recomputing them.
// Storage grows in chunks of backend memory and is never moved, so block pointers stay valid.
#pragma once
#include <cstdint>
#include <vector>

#include "core/backend.h"

namespace llmcore {

class KvCache {
 public:
  // dtype: F32 or F16 (see KvView in backend.h); Error(E_OPTION) otherwise.
  KvCache(Backend& backend, int n_layer, int64_t C, int NH, DType dtype);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  int32_t allocate();            // a block with refcount 1
  void retain(int32_t block);
  void release(int32_t block);   // back to the free list at refcount 0
  int32_t refcount(int32_t block) const { return refs_[size_t(block)]; }
  void copy_block(int32_t dst, int32_t src);

  KvView view() const { return KvView{ptrs_.data(), C_, NH_, dtype_}; }
  DType dtype() const { return dtype_; }
  size_t block_bytes() const { return block_floats_ * sizeof(float); }
  size_t blocks_in_use() const { return ptrs_.size() - free_.size(); }
  size_t blocks_total() const { return ptrs_.size(); }

 private:
  static constexpr int kBlocksPerChunk = 32;
  Backend& backend_;
  int64_t C_;
  int NH_;
  DType dtype_;
  size_t block_floats_;  // a block's size in floats (backend memory is allocated in floats)
  std::vector<float*> chunks_;
  std::vector<void*> ptrs_;
  std::vector<int32_t> refs_;
  std::vector<int32_t> free_;
};

}  // namespace llmcore
