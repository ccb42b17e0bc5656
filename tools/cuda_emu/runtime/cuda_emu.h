// cuda_emu: runs phasor's CUDA kernels, from their own source, on the CPU.
//
// tools/cuda_emu/translate.py rewrites each .cu file into C++ that includes this header first:
// kernel launches call cuda_emu::launch, __shared__ variables live in a per-block arena,
// inline PTX becomes calls into cuda_emu::ptx, and CUDA runtime calls go to cuda_emu::api.
// Every CUDA thread is a real OS thread, so __syncthreads, warp shuffles, ldmatrix and mma.sync
// are collective operations among threads that really run concurrently (blocking barriers, not
// spinning: a block of 256 threads works on a 2-core machine). Blocks of a grid run one cluster
// at a time; the blocks of one cluster run together and can reach each other's shared memory.
//
// What the emulation checks: index math, bounds (fresh shared memory and torch.empty outputs are
// filled with 0xFF bytes, NaN for floats, so a read before a write shows up in the results; an
// AddressSanitizer build also catches reads past a shared buffer), barrier structure (a thread
// waiting at a barrier its block never reaches hangs: the launch has a watchdog), fragment
// layouts of ldmatrix / mma (implemented from the PTX ISA's figures), and the epilogues' math.
// What it does not check: timing, occupancy, bank conflicts, and races (a missing barrier may go
// unnoticed because the threads happen to run in a benign order).
#pragma once

#include <cuda_runtime.h>  // host declarations only: dim3, uint3, float4, cudaStream_t, enums
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <pthread.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define CUDA_EMU_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define CUDA_EMU_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define CUDA_EMU_POISON(p, n) ((void)(p), (void)(n))
#define CUDA_EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#undef __forceinline__
#define __forceinline__ inline
#ifndef __CUDACC__
#define PHASOR_CUDA_EMU 1
#endif
#define PHASOR_EMU_CUDA_ARCH 900  // translate.py maps __CUDA_ARCH__ in phasor's sources to this

// The built-in variables: set by the launch for each emulated thread (thread_local, so member
// names like cudaLaunchConfig_t::blockDim stay untouched).
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

namespace cuda_emu {

[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "cuda_emu: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

// A reusable barrier whose participants can leave (a thread that returns from the kernel).
class Barrier {
 public:
  void reset(int n) {
    std::lock_guard<std::mutex> lk(mu_);
    expected_ = n;
    arrived_ = 0;
  }
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lk(mu_);
    const uint64_t gen = gen_;
    if (++arrived_ >= expected_) {
      release();
      return;
    }
    cv_.wait(lk, [&] { return gen_ != gen; });
  }
  void drop() {
    std::lock_guard<std::mutex> lk(mu_);
    --expected_;
    if (arrived_ > 0 && arrived_ >= expected_) release();
  }

 private:
  void release() {
    arrived_ = 0;
    ++gen_;
    cv_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  int expected_ = 0, arrived_ = 0;
  uint64_t gen_ = 0;
};

constexpr int kWarp = 32;
constexpr size_t kSlotBytes = 64;       // per-lane exchange space (mma fragments, ldmatrix addresses)
constexpr size_t kArenaBytes = 320 << 10;  // shared memory per block: dynamic first (<= 227 KB), then the statics
constexpr size_t kRedzone = 64;

struct Warp {
  Barrier bar;
  alignas(16) unsigned char slots[kWarp][kSlotBytes];
  int lanes = 0;  // threads of the block in this warp
};

struct Cluster;

struct Block {
  uint3 idx{};
  int rank = 0;  // in the cluster
  Cluster* cluster = nullptr;
  Barrier bar;
  std::vector<std::unique_ptr<Warp>> warps;
  unsigned char* arena = nullptr;  // kArenaBytes + redzones, 128-byte aligned
  size_t dynamic_bytes = 0, static_top = 0;
  std::mutex statics_mu;
  std::map<std::pair<const void*, int>, size_t> statics;  // (instantiation, site) -> arena offset
};

struct Cluster {
  Barrier bar;
  std::vector<Block*> blocks;
};

struct ThreadCtx {
  uint3 tid, bid;
  dim3 bdim, gdim;
  Block* block;
  Warp* warp;
  int lane;
};

inline thread_local ThreadCtx* tls_ctx = nullptr;
inline ThreadCtx& ctx() {
  if (!tls_ctx) fail("device code called outside a kernel launch");
  return *tls_ctx;
}

// ---------------------------------------------------------------- shared memory

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(ctx().block->arena);
}

// A __shared__ variable: one per (function instantiation, declaration site) per block, like CUDA's.
template <typename T>
T& static_shared(const char* instantiation, int site) {
  Block& b = *ctx().block;
  std::lock_guard<std::mutex> lk(b.statics_mu);
  const auto key = std::make_pair(static_cast<const void*>(instantiation), site);
  auto it = b.statics.find(key);
  if (it == b.statics.end()) {
    size_t off = (b.static_top + 127) / 128 * 128;
    if (off + sizeof(T) > kArenaBytes) fail("shared memory arena exhausted");
    CUDA_EMU_UNPOISON(b.arena + off, sizeof(T));
    b.static_top = off + sizeof(T) + kRedzone;
    it = b.statics.emplace(key, off).first;
  }
  return *reinterpret_cast<T*>(b.arena + it->second);
}

// A 32-bit shared-window address (what __cvta_generic_to_shared gives) and back.
inline uint32_t to_shared(const void* p) {
  const Block& b = *ctx().block;
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < b.arena || c >= b.arena + kArenaBytes) fail("__cvta_generic_to_shared of a non-shared pointer");
  return static_cast<uint32_t>(c - b.arena);
}
inline unsigned char* from_shared(uint32_t addr, size_t bytes) {
  const Block& b = *ctx().block;
  if (size_t(addr) + bytes > kArenaBytes) fail("shared address out of the window");
  return b.arena + addr;
}

// ---------------------------------------------------------------- warp collectives

// Every lane of the warp publishes `v` and gets all lanes' values (indexed by lane).
template <typename T, typename F>
auto warp_exchange(const T& v, F&& read) {
  static_assert(sizeof(T) <= kSlotBytes && std::is_trivially_copyable_v<T>, "warp_exchange: value too large");
  ThreadCtx& c = ctx();
  std::memcpy(c.warp->slots[c.lane], &v, sizeof(T));
  c.warp->bar.arrive_and_wait();
  auto lane_value = [&](int lane) {
    if (lane < 0 || lane >= c.warp->lanes) fail("warp collective reads a lane that does not exist");
    T r;
    std::memcpy(&r, c.warp->slots[lane], sizeof(T));
    return r;
  };
  auto result = read(lane_value, c.lane);
  c.warp->bar.arrive_and_wait();
  return result;
}

inline void check_full_mask(unsigned mask) {
  const ThreadCtx& c = ctx();
  const unsigned full = c.warp->lanes == 32 ? 0xffffffffu : ((1u << c.warp->lanes) - 1u);
  if (mask != full && mask != 0xffffffffu)
    fail("warp collective with a partial mask (the emulation runs full-warp collectives only)");
}

// ---------------------------------------------------------------- launches

struct LaunchConfig {
  dim3 grid, block;
  size_t smem = 0;
  int cluster = 1;
};

inline void* alloc_arena() {
  void* p = nullptr;
  if (posix_memalign(&p, 128, kArenaBytes + kRedzone) != 0) fail("out of memory for a shared arena");
  return p;
}

// Runs body() once per CUDA thread of every block. Synchronous: when it returns, the grid is done.
inline void launch(const LaunchConfig& cfg, const std::function<void()>& body) {
  const int64_t nblocks = int64_t(cfg.grid.x) * cfg.grid.y * cfg.grid.z;
  const int threads = int(cfg.block.x * cfg.block.y * cfg.block.z);
  if (nblocks == 0) return;
  if (threads <= 0 || threads > 1024) fail("launch with " + std::to_string(threads) + " threads per block");
  if (cfg.smem > 232448) fail("dynamic shared memory above the device limit (227 KB)");
  const int C = cfg.cluster;
  if (C < 1 || cfg.grid.x % C != 0) fail("grid.x is not a multiple of the cluster size");
  const int warps = (threads + kWarp - 1) / kWarp;

  Cluster cluster;
  std::vector<std::unique_ptr<Block>> blocks;
  for (int r = 0; r < C; ++r) {
    auto b = std::make_unique<Block>();
    b->rank = r;
    b->cluster = &cluster;
    b->arena = static_cast<unsigned char*>(alloc_arena());
    for (int w = 0; w < warps; ++w) b->warps.push_back(std::make_unique<Warp>());
    cluster.blocks.push_back(b.get());
    blocks.push_back(std::move(b));
  }
  const int P = C * threads;
  Barrier start, end;
  start.reset(P);
  end.reset(P);

  // Prepares cluster group g (blocks g*C .. g*C+C-1 in linear order): fresh poisoned shared memory.
  auto prepare = [&](int64_t g) {
    cluster.bar.reset(P);
    for (int r = 0; r < C; ++r) {
      Block& b = *blocks[r];
      const int64_t lin = g * C + r;
      b.idx = uint3{unsigned(lin % cfg.grid.x), unsigned((lin / cfg.grid.x) % cfg.grid.y),
                    unsigned(lin / (int64_t(cfg.grid.x) * cfg.grid.y))};
      b.bar.reset(threads);
      for (int w = 0; w < warps; ++w) {
        b.warps[w]->lanes = std::min(kWarp, threads - w * kWarp);
        b.warps[w]->bar.reset(b.warps[w]->lanes);
      }
      CUDA_EMU_UNPOISON(b.arena, kArenaBytes + kRedzone);
      std::memset(b.arena, 0xFF, kArenaBytes);
      b.dynamic_bytes = cfg.smem;
      b.static_top = cfg.smem + kRedzone;
      b.statics.clear();
      CUDA_EMU_POISON(b.arena + cfg.smem, kArenaBytes + kRedzone - cfg.smem);
    }
  };
  prepare(0);
  const int64_t groups = nblocks / C;
  std::atomic<bool> failed{false};
  std::string failure;
  std::mutex failure_mu;

  auto worker = [&](int slot) {
    const int r = slot / threads, t = slot % threads;
    ThreadCtx c{};
    c.bdim = cfg.block;
    c.gdim = cfg.grid;
    c.tid = uint3{unsigned(t % cfg.block.x), unsigned((t / cfg.block.x) % cfg.block.y),
                  unsigned(t / (cfg.block.x * cfg.block.y))};
    c.lane = t % kWarp;
    tls_ctx = &c;
    for (int64_t g = 0; g < groups; ++g) {
      start.arrive_and_wait();
      Block& b = *blocks[r];
      c.block = &b;
      c.bid = b.idx;
      ::threadIdx = c.tid;
      ::blockIdx = c.bid;
      ::blockDim = c.bdim;
      ::gridDim = c.gdim;
      c.warp = b.warps[t / kWarp].get();
      try {
        body();
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lk(failure_mu);
        failed = true;
        failure = e.what();
      }
      c.warp->bar.drop();
      b.bar.drop();
      cluster.bar.drop();
      end.arrive_and_wait();
      if (slot == 0 && g + 1 < groups) prepare(g + 1);
    }
    tls_ctx = nullptr;
  };

  std::vector<pthread_t> ids(P);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, size_t(4) << 20);
  struct Arg {
    decltype(worker)* w;
    int slot;
  };
  std::vector<Arg> args(P);
  for (int s = 0; s < P; ++s) {
    args[s] = Arg{&worker, s};
    const int rc = pthread_create(&ids[s], &attr, [](void* p) -> void* {
      auto* a = static_cast<Arg*>(p);
      (*a->w)(a->slot);
      return nullptr;
    }, &args[s]);
    if (rc != 0) fail("pthread_create failed (" + std::to_string(P) + " threads)");
  }
  pthread_attr_destroy(&attr);
  for (auto& id : ids) pthread_join(id, nullptr);
  for (auto& b : blocks) {
    CUDA_EMU_UNPOISON(b->arena, kArenaBytes + kRedzone);
    std::free(b->arena);
  }
  if (failed) throw std::runtime_error("cuda_emu: exception in a kernel: " + failure);
}

// Dynamic shared memory opt-in per kernel (cudaFuncSetAttribute), checked at launch as the driver does.
inline std::mutex& attr_mu() {
  static std::mutex m;
  return m;
}
inline std::map<const void*, int>& max_dynamic_smem() {
  static std::map<const void*, int> m;
  return m;
}
inline void check_smem(const void* kernel, size_t bytes) {
  if (bytes <= 49152) return;
  std::lock_guard<std::mutex> lk(attr_mu());
  auto it = max_dynamic_smem().find(kernel);
  if (it == max_dynamic_smem().end() || size_t(it->second) < bytes)
    fail("launch with " + std::to_string(bytes) +
         " dynamic shared bytes, above 48 KB without cudaFuncSetAttribute(MaxDynamicSharedMemorySize) for that kernel");
}

// `kernel<<<grid, block, smem, stream>>>(args...)` after translation.
struct Launch {
  LaunchConfig cfg;
  Launch(dim3 g, dim3 b, size_t smem = 0, cudaStream_t = nullptr) : cfg{g, b, smem, 1} {}
  template <typename K, typename... A>
  void operator()(K* kernel, A&&... args) const {
    check_smem(reinterpret_cast<const void*>(kernel), cfg.smem);
    // Each CUDA thread gets its own copies of the arguments, as a kernel's by-value parameters.
    launch(cfg, [&] { kernel(args...); });
  }
};

}  // namespace cuda_emu

// ---------------------------------------------------------------- device built-ins

constexpr int warpSize = 32;

inline void __syncthreads() { ::cuda_emu::ctx().block->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::cuda_emu::check_full_mask(mask);
  ::cuda_emu::ctx().warp->bar.arrive_and_wait();
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap() { ::cuda_emu::fail("__trap() in a kernel"); }

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  ::cuda_emu::check_full_mask(mask);
  return ::cuda_emu::warp_exchange(v, [&](auto lane_value, int lane) {
    return lane_value((lane & ~(width - 1)) + (src & (width - 1)));
  });
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32) {
  ::cuda_emu::check_full_mask(mask);
  return ::cuda_emu::warp_exchange(v, [&](auto lane_value, int lane) {
    const int src = lane ^ m;
    return (src & ~(width - 1)) == (lane & ~(width - 1)) ? lane_value(src) : lane_value(lane);
  });
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
  ::cuda_emu::check_full_mask(mask);
  return ::cuda_emu::warp_exchange(v, [&](auto lane_value, int lane) {
    const int src = lane + int(d);
    return (src & ~(width - 1)) == (lane & ~(width - 1)) ? lane_value(src) : lane_value(lane);
  });
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
  ::cuda_emu::check_full_mask(mask);
  return ::cuda_emu::warp_exchange(v, [&](auto lane_value, int lane) {
    const int src = lane - int(d);
    return src >= (lane & ~(width - 1)) ? lane_value(src) : lane_value(lane);
  });
}

template <typename T>
T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}
template <typename T>
T __ldg(const T* p) {
  return *p;
}

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline double __longlong_as_double(long long v) {
  double d;
  std::memcpy(&d, &v, 8);
  return d;
}
inline long long __double_as_longlong(double d) {
  long long v;
  std::memcpy(&v, &d, 8);
  return v;
}
inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
inline int __float_as_int(float f) {
  int v;
  std::memcpy(&v, &f, 4);
  return v;
}
inline unsigned __float_as_uint(float f) {
  unsigned v;
  std::memcpy(&v, &f, 4);
  return v;
}
inline float __uint_as_float(unsigned v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(unsigned(v)); }
inline int __ffs(int v) { return __builtin_ffs(v); }

// PTX prmt (default mode): byte i of the result is byte (s >> 4i) & 7 of the 8-byte value {y, x}.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = (uint64_t(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= unsigned((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
}
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) c += int(int8_t(a >> (8 * i))) * int(int8_t(b >> (8 * i)));
  return c;
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
  for (int i = 0; i < 4; ++i) c += ((a >> (8 * i)) & 0xFF) * ((b >> (8 * i)) & 0xFF);
  return c;
}
inline size_t __cvta_generic_to_shared(const void* p) { return ::cuda_emu::to_shared(p); }

#include "cuda_emu_ptx.h"
#include "cuda_emu_api.h"
