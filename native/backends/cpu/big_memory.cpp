#include "backends/cpu/big_memory.h"

#include <cstdlib>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace llmcore::cpu {

namespace {
constexpr size_t kHuge = size_t(2) << 20;
size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }
}  // namespace

void* alloc_huge(size_t bytes) {
  const size_t len = round_up(bytes ? bytes : 1, kHuge);
  void* p = nullptr;
  if (posix_memalign(&p, kHuge, len) != 0) return nullptr;
#ifdef MADV_HUGEPAGE
  madvise(p, len, MADV_HUGEPAGE);  // advice only: without THP the buffer still works
#endif
  return p;
}

void* map_zeroed_huge(size_t bytes) {
  const size_t len = round_up(bytes ? bytes : 1, kHuge);
#ifdef __linux__
  // Map one huge page more than needed and trim both ends to a 2 MiB boundary.
  void* raw = mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHuge - 1) / kHuge * kHuge;
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t tail = start + len + kHuge - (aligned + len);
  if (tail > 0) munmap(reinterpret_cast<void*>(aligned + len), tail);
  void* p = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
  madvise(p, len, MADV_HUGEPAGE);  // advice only: without THP the mapping still works
#endif
  return p;
#else
  return std::calloc(1, len);
#endif
}

void unmap_zeroed_huge(void* p, size_t bytes) {
  if (!p) return;
#ifdef __linux__
  munmap(p, round_up(bytes ? bytes : 1, kHuge));
#else
  std::free(p);
#endif
}

void* WeightArena::take(size_t bytes, std::shared_ptr<void>& keep) {
  bytes = round_up(bytes ? bytes : 64, 64);
  if (bytes > kSlabBytes / 4) {  // big ones (the LM head) get huge pages of their own
    void* p = alloc_huge(bytes);
    if (p) keep = std::shared_ptr<void>(p, std::free);
    return p;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!slab_ || used_ + bytes > kSlabBytes) {
    // Pages of a slab are committed only when touched, so its unused tail costs address space
    // only; a full slab is dropped here and freed with its last weight.
    void* p = alloc_huge(kSlabBytes);
    if (!p) return nullptr;
    slab_ = std::shared_ptr<void>(p, std::free);
    base_ = static_cast<uint8_t*>(p);
    used_ = 0;
  }
  void* p = base_ + used_;
  used_ += bytes;
  keep = slab_;
  return p;
}

}  // namespace llmcore::cpu
