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
  KvCache(Backend& backend, int n_layer, int64_t C, int NH);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  int32_t allocate();            // a block with refcount 1
  void retain(int32_t block);
  void release(int32_t block);   // back to the free list at refcount 0
  int32_t refcount(int32_t block) const { return refs_[size_t(block)]; }
  void copy_block(int32_t dst, int32_t src);

  KvView view() const { return KvView{ptrs_.data(), C_, NH_}; }
  size_t block_floats() const { return block_floats_; }
  size_t blocks_in_use() const { return ptrs_.size() - free_.size(); }
  size_t blocks_total() const { return ptrs_.size(); }

 private:
  static constexpr int kBlocksPerChunk = 32;
  Backend& backend_;
  int64_t C_;
  int NH_;
  size_t block_floats_;
  std::vector<float*> chunks_;
  std::vector<float*> ptrs_;
  std::vector<int32_t> refs_;
  std::vector<int32_t> free_;
};

}  // namespace llmcore
