// Memory hints for the large outputs CPU kernels write once, front to back.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace phasor {

// Ask for transparent huge pages on a fresh output buffer before its first touch. Large buffers come
// straight from mmap, so every 4 KiB page faults on first write; with THP in "madvise" mode (the
// common default) that costs more than the kernel itself (measured: 13 ms of faults for a 33 MB
// wave-RNN state tensor, 2 ms with the hint). Only the 2 MiB-aligned interior is advised; it is a
// hint, so a failure or a kernel without THP changes nothing.
inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < 2 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// The same for a freshly allocated tensor (a no-op for tensors that are not on the CPU).
inline void advise_huge_pages(const at::Tensor& fresh) {
  if (fresh.defined() && fresh.is_cpu()) advise_huge_pages(fresh.data_ptr(), fresh.nbytes());
}

// The last-level cache size in bytes (32 MiB where the system does not say).
inline size_t last_level_cache_bytes() {
  static const size_t bytes = [] {
    long b = 0;
#if defined(__linux__) && defined(_SC_LEVEL3_CACHE_SIZE)
    b = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (b <= 0) b = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return b > 0 ? size_t(b) : size_t(32) << 20;
  }();
  return bytes;
}

// Whether a kernel should write its large outputs with streaming (non-temporal) stores: when what
// it reads and writes exceeds the last-level cache, a cached output line costs a read of the line
// before the write (read-for-ownership) and evicts input that a later pass reads again (measured on
// the rotating epilogue at 4Shapes size: forward about 4.1 -> 3.0 ms on one core).
// PHASOR_CPU_STREAM_STORES=0 or 1 forces the choice (the tests cover both paths with it).
inline bool use_streaming_stores(size_t footprint_bytes) {
  if (const char* env = std::getenv("PHASOR_CPU_STREAM_STORES")) {
    if (std::strcmp(env, "0") == 0) return false;
    if (std::strcmp(env, "1") == 0) return true;
  }
  return footprint_bytes >= last_level_cache_bytes();
}

}  // namespace phasor
