#include "core/kv_cache.h"

#include <string>

#include "core/errors.h"

namespace llmcore {

namespace {
DType checked(DType dtype) {
  if (dtype != DType::F32 && dtype != DType::F16)
    throw Error(E_OPTION, std::string("[kv-cache] dtype ") + dtype_name(dtype) + ": expected f32 or f16");
  return dtype;
}
}  // namespace

KvCache::KvCache(Backend& backend, int n_layer, int64_t C, int NH, DType dtype)
    : backend_(backend), C_(C), NH_(NH), dtype_(checked(dtype)),
      // 2 * 16 * C elements per layer: a whole number of floats for f16 too.
      block_floats_(size_t(n_layer) * 2 * kBlockTokens * size_t(C) * dtype_size(dtype) / sizeof(float)) {}

KvCache::~KvCache() {
  for (float* c : chunks_) backend_.release_cache(c, block_floats_ * kBlocksPerChunk);
}

int32_t KvCache::allocate() {
  if (free_.empty()) {
    // Zero-filled: attention kernels read whole slot groups of a sequence's last block, past
    // its end (and discard those lanes), so those slots are never indeterminate memory.
    float* chunk = backend_.alloc_cache(block_floats_ * kBlocksPerChunk);
    chunks_.push_back(chunk);
    // Hand out low ids first: push in reverse so pop_back yields ascending ids.
    const size_t first = ptrs_.size();
    for (int i = 0; i < kBlocksPerChunk; i++) {
      ptrs_.push_back(chunk + size_t(i) * block_floats_);
      refs_.push_back(0);
    }
    for (int i = kBlocksPerChunk - 1; i >= 0; i--) free_.push_back(int32_t(first + size_t(i)));
  }
  const int32_t b = free_.back();
  free_.pop_back();
  refs_[size_t(b)] = 1;
  return b;
}

void KvCache::retain(int32_t block) { refs_[size_t(block)]++; }

void KvCache::release(int32_t block) {
  if (refs_[size_t(block)] <= 0) throw Error(E_INTERNAL, "[kv-cache] block released twice");
  if (--refs_[size_t(block)] == 0) free_.push_back(block);
}

void KvCache::copy_block(int32_t dst, int32_t src) {
  backend_.copy(static_cast<float*>(ptrs_[size_t(dst)]), static_cast<const float*>(ptrs_[size_t(src)]),
                block_floats_);
}

}  // namespace llmcore
