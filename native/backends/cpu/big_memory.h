// Memory for the packed weights, which the GEMMs stream from DRAM every step. They go on
// transparent huge pages (2 MiB, where the kernel grants them): with 4 KiB pages a GEMM over
// weights read once per step pays a TLB miss every 4 KiB, and the interleaved A/B of the
// M = 32 decode GEMMs measured 3-8% slower than on huge pages. The KV cache chunks get huge
// pages too (map_zeroed_huge): batch-32 decode attention + kv_store took ~1.3 ms less per step
// (of ~10.5) once the cache reuses its blocks; a chunk's first use costs more page-fault time.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

namespace llmcore::cpu {

// `bytes` (rounded up to 2 MiB), 2 MiB aligned, offered to transparent huge pages; std::free
// releases it. nullptr when out of memory.
void* alloc_huge(size_t bytes);

// Fresh zero-filled pages for `bytes` (rounded up to 2 MiB), 2 MiB aligned, offered to
// transparent huge pages; unmap_zeroed_huge(p, bytes) releases it. nullptr when out of memory.
// For the KV cache: the kernel's zero pages need no memset, and huge pages spare the decode
// attention, which reads the whole cache from DRAM every step, a TLB miss and a prefetcher
// restart every 4 KiB.
void* map_zeroed_huge(size_t bytes);
void unmap_zeroed_huge(void* p, size_t bytes);

// Sub-allocates weights from slabs of huge pages, so the model's many small matrices (1-10 MiB
// each) share huge pages instead of each rounding up to whole 2 MiB pages of its own (5-12% of
// the model's memory). A slab lives while any weight taken from it does.
class WeightArena {
 public:
  // 64-byte aligned storage for `bytes`, valid while `keep` (set here) is held; nullptr when
  // out of memory. Thread-safe.
  void* take(size_t bytes, std::shared_ptr<void>& keep);

 private:
  static constexpr size_t kSlabBytes = size_t(64) << 20;
  std::mutex mu_;
  std::shared_ptr<void> slab_;
  uint8_t* base_ = nullptr;
  size_t used_ = 0;
};

}  // namespace llmcore::cpu
