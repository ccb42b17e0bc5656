// CpuScratch (cpu_scratch.h). Compiled once, with the base flags: it holds no kernel code.
#include "common/cpu_scratch.h"

#include <cstdlib>
#include <new>
#include <string>

namespace phasor {
namespace {

constexpr size_t kAlign = 64;

size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

size_t cache_limit_bytes() {
  static const size_t limit = [] {
    const char* env = std::getenv("PHASOR_CPU_SCRATCH_MB");
    long mb = 64;
    if (env && *env) {
      try {
        mb = std::stol(env);
      } catch (...) {
        mb = 64;  // an unreadable value keeps the default
      }
    }
    return mb > 0 ? size_t(mb) << 20 : size_t(0);
  }();
  return limit;
}

// The calling thread's cached block (freed when the thread exits).
struct ThreadBlock {
  void* data = nullptr;
  size_t size = 0;
  bool lent = false;
  ~ThreadBlock() { std::free(data); }
};

ThreadBlock& thread_block() {
  thread_local ThreadBlock block;
  return block;
}

void* allocate(size_t bytes) {
  void* p = std::aligned_alloc(kAlign, round_up(bytes == 0 ? 1 : bytes));
  if (!p) throw std::bad_alloc();
  return p;
}

}  // namespace

CpuScratch::CpuScratch(std::initializer_list<size_t> bytes) {
  size_t total = 0;
  for (size_t b : bytes) total += round_up(b);
  ThreadBlock& tb = thread_block();
  if (!tb.lent && total <= cache_limit_bytes()) {
    if (tb.size < total) {
      std::free(tb.data);
      tb.data = nullptr, tb.size = 0;
      tb.data = allocate(total);
      tb.size = total;
    }
    tb.lent = true;
    block_ = tb.data;
  } else {
    block_ = allocate(total);
    owned_ = true;
  }
  char* p = static_cast<char*>(block_);
  for (size_t b : bytes) {
    regions_.push_back(p);
    p += round_up(b);
  }
}

CpuScratch::~CpuScratch() {
  if (owned_) std::free(block_);
  else thread_block().lent = false;
}

}  // namespace phasor
