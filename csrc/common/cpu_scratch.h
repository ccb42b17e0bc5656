// Scratch memory for the internal buffers of a CPU kernel call, reused by the calling thread.
//
// Why: a kernel's scratch buffers are large (O(N d) per buffer) and short-lived. glibc serves such blocks
// from mmap or trims them back to the OS when they are freed, so every call page-faults its scratch in
// again; for GTA attention at N = 256 that was about 8% of the backward. A thread keeps its last block
// (grown as needed, at most PHASOR_CPU_SCRATCH_MB MiB, default 64; 0 disables) and lends it to the next
// call. A request that is larger, or made while the thread's block is lent, gets a block of its own.
#pragma once
#include <cstddef>
#include <initializer_list>
#include <vector>

namespace phasor {

class CpuScratch {
 public:
  // One region per entry of `bytes`, each 64-byte aligned, valid until destruction.
  explicit CpuScratch(std::initializer_list<size_t> bytes);
  ~CpuScratch();
  CpuScratch(const CpuScratch&) = delete;
  CpuScratch& operator=(const CpuScratch&) = delete;

  template <typename T>
  T* get(size_t region) const {
    return static_cast<T*>(regions_[region]);
  }

 private:
  void* block_ = nullptr;
  bool owned_ = false;  // a block of its own (freed here), not the thread's cached one
  std::vector<void*> regions_;
};

}  // namespace phasor
