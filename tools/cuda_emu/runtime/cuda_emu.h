// cuda_emu: runs phasor's CUDA kernels, from their own source, on the CPU.
//
// tools/cuda_emu/translate.py rewrites each .cu file into C++ that includes this header first:
// kernel launches call cuda_emu::launch, __shared__ variables live in a per-block arena,
// inline PTX becomes calls into cuda_emu::ptx, and CUDA runtime calls go to cuda_emu::api.
// Every CUDA thread is a fiber with its own stack; __syncthreads, warp shuffles, ldmatrix and
// mma.sync are collective operations among them (a fiber waiting at a barrier yields to the
// next). The blocks of one cluster run together and can reach each other's shared memory;
// clusters are spread over PHASOR_CUDA_EMU_THREADS OS threads (default: all cores).
//
// What the emulation checks: index math, bounds (fresh shared memory is filled with 0xFF bytes,
// NaN for floats, and tests/helpers.py runs the ops with at::empty NaN-filled, so a read before a
// write shows up in the results; an AddressSanitizer build also catches reads past a tensor or a
// shared buffer), barrier structure (a thread
// waiting at a barrier its block never reaches is reported as a deadlock), fragment
// layouts of ldmatrix / mma (implemented from the PTX ISA's figures), and the epilogues' math.
// Errors (a deadlock, a misaligned cp.async, __trap) raise a RuntimeError from the op.
// What it does not check: timing, occupancy, and races (a missing barrier may go unnoticed because
// the threads happen to run in a benign order). Bank conflicts and coalescing are measured by the
// profiling flavour (cuda_emu_profile.h).
#pragma once

#include <cuda_runtime.h>  // host declarations only: dim3, uint3, float4, cudaStream_t, enums
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <random>
#include <atomic>
#include <bit>
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
#include <unordered_map>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>

// (The profile flavour's kernel-address instrumentation defines __SANITIZE_ADDRESS__ too.)
#if defined(__SANITIZE_ADDRESS__) && !defined(CUDA_EMU_PROFILE)
#define CUDA_EMU_ASAN 1
#endif
#if defined(CUDA_EMU_ASAN)
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
#if defined(CUDA_EMU_PROFILE)
#define __forceinline__ inline __attribute__((always_inline))  // accesses count at the call site, as nvcc inlines
#define CUDA_EMU_UNINSTRUMENTED __attribute__((no_sanitize_address))
#else
#define __forceinline__ inline
#define CUDA_EMU_UNINSTRUMENTED
#endif
#ifndef __CUDACC__
#define PHASOR_CUDA_EMU 1
#endif
#define PHASOR_EMU_CUDA_ARCH 900  // translate.py maps __CUDA_ARCH__ in phasor's sources to this

// The built-in variables: set by the launch for each emulated thread (thread_local, so member
// names like cudaLaunchConfig_t::blockDim stay untouched).
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

namespace cuda_emu {

// An error in emulated code: thrown, caught where the thread (fiber) started, and raised by the
// launch as a RuntimeError in Python.
[[noreturn]] inline void fail(const std::string& what) { throw std::runtime_error(what); }

// Every CUDA thread is a fiber (ucontext) with its own stack; the fibers of one cluster of blocks
// run cooperatively on one OS thread, switching only at barriers and warp collectives. Clusters
// are spread over a few OS threads. A barrier that can never complete (some threads wait, the
// others have finished or wait elsewhere) is reported at once as a deadlock.
struct Fiber;
struct Scheduler;
inline thread_local Scheduler* tls_sched = nullptr;
inline thread_local Fiber* tls_fiber = nullptr;
inline void yield_to_scheduler();

// A reusable barrier whose participants can leave (a thread that returns from the kernel).
class Barrier {
 public:
  void reset(int n) {
    expected_ = n;
    arrived_ = 0;
  }
  void arrive_and_wait();
  void drop() {
    --expected_;
    if (arrived_ > 0 && arrived_ >= expected_) release();
  }
  uint64_t generation() const { return gen_; }
  const char* name = "barrier";

 private:
  void release() {
    arrived_ = 0;
    ++gen_;
  }
  int expected_ = 0, arrived_ = 0;
  uint64_t gen_ = 0;
};

constexpr int kWarp = 32;
constexpr size_t kSlotBytes = 64;          // per-lane exchange space (mma fragments, ldmatrix addresses)
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
  unsigned char* arena = nullptr;  // kArenaBytes + redzone, 128-byte aligned
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
  int warp_index;  // in the cluster group: rank * warps per block + warp
};

// One recorded memory access of a profiled launch (cuda_emu_profile.h).
struct ProfAccess {
  uintptr_t pc, via;  // the access site, and the call site of the function containing it
  uint64_t addr;      // global: the address; shared: the offset in the block's arena
  uint32_t occ;       // this lane's n-th execution of the site
  uint16_t warp;
  uint8_t lane, size, op, space;
};

// The profile's per-lane containers: plain arrays in -O2 code. The profile flavour builds
// everything else at -O0, where std containers' member calls are not inlined and cost more than
// emulating the kernel they record.
#pragma GCC push_options
#pragma GCC optimize("O2")
// A growable array of trivially copyable T.
template <typename T>
struct RawLog {
  T* data = nullptr;
  size_t n = 0, cap = 0;
  RawLog() = default;
  RawLog(const RawLog&) = delete;
  RawLog& operator=(const RawLog&) = delete;
  ~RawLog() { std::free(data); }
  CUDA_EMU_UNINSTRUMENTED void push(const T& v) {
    if (n == cap) {
      cap = cap ? 2 * cap : 1024;
      data = static_cast<T*>(std::realloc(data, cap * sizeof(T)));
      if (!data) fail("out of memory for the access profile");
    }
    data[n++] = v;
  }
  CUDA_EMU_UNINSTRUMENTED void clear() { n = 0; }
};
// pc -> executions so far, open addressing (pc 0 marks an empty slot).
struct PcCounts {
  struct Slot {
    uintptr_t pc;
    uint32_t count;
  };
  Slot* slots = nullptr;
  size_t cap = 0, used = 0;
  PcCounts() = default;
  PcCounts(const PcCounts&) = delete;
  PcCounts& operator=(const PcCounts&) = delete;
  ~PcCounts() { std::free(slots); }
  CUDA_EMU_UNINSTRUMENTED size_t find(uintptr_t pc) const {  // its slot, or the empty one where it would go
    size_t i = (pc * 0x9E3779B97F4A7C15ull >> 20) & (cap - 1);
    while (slots[i].pc != 0 && slots[i].pc != pc) i = (i + 1) & (cap - 1);
    return i;
  }
  CUDA_EMU_UNINSTRUMENTED uint32_t get(uintptr_t pc) const { return cap ? slots[find(pc)].count : 0u; }
  CUDA_EMU_UNINSTRUMENTED uint32_t bump(uintptr_t pc) {  // the count before this execution
    if (2 * (used + 1) > cap) grow();
    Slot& s = slots[find(pc)];
    if (s.pc == 0) s.pc = pc, s.count = 0, ++used;
    return s.count++;
  }
  CUDA_EMU_UNINSTRUMENTED void clear() {
    if (slots) std::memset(slots, 0, cap * sizeof(Slot));
    used = 0;
  }
  CUDA_EMU_UNINSTRUMENTED void grow() {
    Slot* old = slots;
    const size_t old_cap = cap;
    cap = cap ? 2 * cap : 256;
    slots = static_cast<Slot*>(std::calloc(cap, sizeof(Slot)));
    if (!slots) fail("out of memory for the access profile");
    used = 0;
    for (size_t i = 0; i < old_cap; ++i)
      if (old[i].pc) {
        Slot& s = slots[find(old[i].pc)];
        s = old[i];
        ++used;
      }
    std::free(old);
  }
};
#pragma GCC pop_options

// One cp.async in flight: its source bytes (read at issue) land in shared memory only when a
// cp.async.wait_group retires its group (or the thread exits), as on the GPU.
struct CpAsyncCopy {
  unsigned char* dst;
  int bytes;
  unsigned char data[16];
};

struct Fiber {
  ucontext_t uc;
  unsigned char* stack = nullptr;
  ThreadCtx ctx{};
  bool done = false;
  const Barrier* waiting_on = nullptr;
  uint64_t waiting_gen = 0;
  std::vector<CpAsyncCopy> cp_open;                 // issued since the last commit_group
  std::vector<std::vector<CpAsyncCopy>> cp_groups;  // committed, oldest first
  RawLog<ProfAccess> prof;  // profiled launches only
  PcCounts prof_occ;
  // Lands every committed group but the `keep` most recent (cp.async.wait_group keep).
  CUDA_EMU_UNINSTRUMENTED void cp_land(size_t keep) {
    while (cp_groups.size() > keep) {
      for (const CpAsyncCopy& c : cp_groups.front()) std::memcpy(c.dst, c.data, size_t(c.bytes));
      cp_groups.erase(cp_groups.begin());
    }
  }
  bool runnable() const { return !done && (!waiting_on || waiting_on->generation() != waiting_gen); }
};

constexpr size_t kFiberStack = 256 << 10;

struct Scheduler {
  ucontext_t main;
  std::vector<std::unique_ptr<Fiber>> fibers;
  const std::function<void()>* body = nullptr;
  std::string error;
#if defined(CUDA_EMU_ASAN)
  void* fake_stack = nullptr;
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
#endif
};

inline ThreadCtx& ctx() {
  if (!tls_fiber) fail("device code called outside a kernel launch");
  return tls_fiber->ctx;
}

inline void set_builtins(const ThreadCtx& c) {
  ::threadIdx = c.tid;
  ::blockIdx = c.bid;
  ::blockDim = c.bdim;
  ::gridDim = c.gdim;
}

inline void yield_to_scheduler() {
  Scheduler& s = *tls_sched;
  Fiber* me = tls_fiber;
#if defined(CUDA_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, s.main_stack_bottom, s.main_stack_size);
#endif
  swapcontext(&me->uc, &s.main);
#if defined(CUDA_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  tls_fiber = me;
  set_builtins(me->ctx);
}

inline void Barrier::arrive_and_wait() {
  if (++arrived_ >= expected_) {
    release();
    return;
  }
  Fiber* f = tls_fiber;
  f->waiting_on = this;
  f->waiting_gen = gen_;
  yield_to_scheduler();
  f->waiting_on = nullptr;
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
  const void* kernel = nullptr;  // for the profile's kernel names
};

}  // namespace cuda_emu
#if defined(CUDA_EMU_PROFILE)
#include "cuda_emu_profile.h"
#else
#define CUDA_EMU_RECORD(ptr, n, op) ((void)0)
#endif
namespace cuda_emu {

enum class Schedule { kForward, kReverse, kShuffle };
// PHASOR_CUDA_EMU_SCHEDULE=forward (default) | reverse | shuffle, read at each launch.
inline Schedule schedule() {
  const char* v = std::getenv("PHASOR_CUDA_EMU_SCHEDULE");
  const std::string name = v ? v : "forward";
  if (name == "reverse") return Schedule::kReverse;
  if (name == "shuffle") return Schedule::kShuffle;
  if (name != "forward") fail("PHASOR_CUDA_EMU_SCHEDULE must be forward, reverse or shuffle");
  return Schedule::kForward;
}

inline int worker_threads() {
  static const int n = [] {
    const char* v = std::getenv("PHASOR_CUDA_EMU_THREADS");
    const int hw = int(std::thread::hardware_concurrency());
    return std::max(1, v ? std::atoi(v) : (hw > 0 ? hw : 1));
  }();
  return n;
}

inline void fiber_entry(unsigned lo, unsigned hi) {
  auto* f = reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo));
  Scheduler& s = *tls_sched;
#if defined(CUDA_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &s.main_stack_bottom, &s.main_stack_size);
#endif
  tls_fiber = f;
  set_builtins(f->ctx);
  f->cp_open.clear();
  f->cp_groups.clear();
  try {
    (*s.body)();
  } catch (const std::exception& e) {
    if (s.error.empty()) s.error = e.what();
  }
  f->cp_groups.push_back(std::move(f->cp_open));  // copies still in flight land after the thread exits
  f->cp_land(0);
  f->cp_open.clear();
  f->done = true;
  f->ctx.warp->bar.drop();
  f->ctx.block->bar.drop();
  f->ctx.block->cluster->bar.drop();
#if defined(CUDA_EMU_ASAN)
  __sanitizer_start_switch_fiber(nullptr, s.main_stack_bottom, s.main_stack_size);
#endif
  // returning resumes uc_link (the scheduler)
}

// One OS worker: runs whole clusters, one at a time, each as a set of fibers.
class ClusterRunner {
 public:
  ClusterRunner(const LaunchConfig& cfg, const std::function<void()>& body) : cfg_(cfg) {
    threads_ = int(cfg.block.x * cfg.block.y * cfg.block.z);
    warps_ = (threads_ + kWarp - 1) / kWarp;
    sched_.body = &body;
    for (int r = 0; r < cfg.cluster; ++r) {
      auto b = std::make_unique<Block>();
      b->rank = r;
      b->cluster = &cluster_;
      void* p = nullptr;
      if (posix_memalign(&p, 128, kArenaBytes + kRedzone) != 0) fail("out of memory for a shared arena");
      b->arena = static_cast<unsigned char*>(p);
      for (int w = 0; w < warps_; ++w) b->warps.push_back(std::make_unique<Warp>());
      cluster_.blocks.push_back(b.get());
      blocks_.push_back(std::move(b));
    }
    const int P = cfg.cluster * threads_;
    for (int i = 0; i < P; ++i) {
      auto f = std::make_unique<Fiber>();
      void* st = mmap(nullptr, kFiberStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (st == MAP_FAILED) fail("out of memory for fiber stacks");
      f->stack = static_cast<unsigned char*>(st);
      sched_.fibers.push_back(std::move(f));
    }
  }
  ~ClusterRunner() {
    for (auto& b : blocks_) {
      CUDA_EMU_UNPOISON(b->arena, kArenaBytes + kRedzone);
      std::free(b->arena);
    }
    for (auto& f : sched_.fibers) munmap(f->stack, kFiberStack);
  }

  // Runs cluster group g (blocks g*C .. g*C+C-1 in linear block order) of `groups`. Returns an error or "".
  std::string run(int64_t g, int64_t groups) {
    const int C = cfg_.cluster;
#if defined(CUDA_EMU_PROFILE)
    const bool recorded = profile::recorded(g, groups);
    if (!recorded && profile::skip_unrecorded()) return "";
#else
    (void)groups;
#endif
    cluster_.bar.reset(C * threads_);
    cluster_.bar.name = "cluster barrier";
    for (int r = 0; r < C; ++r) {
      Block& b = *blocks_[r];
      const int64_t lin = g * C + r;
      b.idx = uint3{unsigned(lin % cfg_.grid.x), unsigned((lin / cfg_.grid.x) % cfg_.grid.y),
                    unsigned(lin / (int64_t(cfg_.grid.x) * cfg_.grid.y))};
      b.bar.reset(threads_);
      b.bar.name = "__syncthreads";
      for (int w = 0; w < warps_; ++w) {
        b.warps[w]->lanes = std::min(kWarp, threads_ - w * kWarp);
        b.warps[w]->bar.reset(b.warps[w]->lanes);
        b.warps[w]->bar.name = "warp collective";
      }
      // Fresh shared memory reads as 0xFF bytes (NaN as float), so a read before a write shows.
      CUDA_EMU_UNPOISON(b.arena, kArenaBytes + kRedzone);
      std::memset(b.arena, 0xFF, kArenaBytes);
      b.dynamic_bytes = cfg_.smem;
      b.static_top = cfg_.smem + kRedzone;
      b.statics.clear();
      CUDA_EMU_POISON(b.arena + cfg_.smem, kArenaBytes + kRedzone - cfg_.smem);
    }
    auto& fibers = sched_.fibers;
    for (size_t i = 0; i < fibers.size(); ++i) {
      Fiber& f = *fibers[i];
      const int r = int(i) / threads_, t = int(i) % threads_;
      Block& b = *blocks_[r];
      f.done = false;
      f.waiting_on = nullptr;
      f.ctx.bdim = cfg_.block;
      f.ctx.gdim = cfg_.grid;
      f.ctx.tid = uint3{unsigned(t % cfg_.block.x), unsigned((t / cfg_.block.x) % cfg_.block.y),
                        unsigned(t / (cfg_.block.x * cfg_.block.y))};
      f.ctx.bid = b.idx;
      f.ctx.block = &b;
      f.ctx.warp = b.warps[t / kWarp].get();
      f.ctx.lane = t % kWarp;
      f.ctx.warp_index = r * warps_ + t / kWarp;
      getcontext(&f.uc);
      f.uc.uc_stack.ss_sp = f.stack;
      f.uc.uc_stack.ss_size = kFiberStack;
      f.uc.uc_link = &sched_.main;
      const auto addr = reinterpret_cast<uintptr_t>(&f);
      makecontext(&f.uc, reinterpret_cast<void (*)()>(&fiber_entry), 2, unsigned(addr & 0xffffffffu), unsigned(addr >> 32));
    }
    tls_sched = &sched_;
    sched_.error.clear();
#if defined(CUDA_EMU_PROFILE)
    profile::tls_recording = recorded;
    struct StopRecording {
      ~StopRecording() { profile::tls_recording = false; }
    } stop_recording;
#endif
    // The order fibers run in, each from one barrier to the next: forward (thread 0 first),
    // reverse, or shuffled per pass. A missing barrier shows up as wrong results in one of them
    // (a reader running ahead of its writer, or a writer overwriting what a reader still needs).
    const Schedule sched = schedule();
    std::vector<size_t> order(fibers.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = sched == Schedule::kReverse ? order.size() - 1 - i : i;
    std::mt19937_64 rng(uint64_t(g) * 0x9E3779B97F4A7C15ull + 1);
    size_t finished = 0;
#if defined(CUDA_EMU_PROFILE)
    profile::GroupAnalyzer analyzer;
    for (auto& f : fibers) f->prof.clear(), f->prof_occ.clear();  // (an earlier launch's failed group)
    size_t flush_at = profile::flush_above();
#endif
    while (finished < fibers.size()) {
#if defined(CUDA_EMU_PROFILE)
      if (recorded) {  // fold in the finished requests once the logs grow large
        size_t logged = 0;
        for (auto& f : fibers) logged += f->prof.n;
        if (logged > flush_at) {
          profile::tls_recording = false;  // (the analysis's own accesses are not the kernel's)
          analyzer.flush(fibers, /*all=*/false);
          profile::tls_recording = true;
          size_t pending = 0;
          for (auto& f : fibers) pending += f->prof.n;
          flush_at = std::max(profile::flush_above(), 2 * pending);  // requests that stay pending: no rescans
        }
      }
#endif
      bool progressed = false;
      finished = 0;
      if (sched == Schedule::kShuffle) std::shuffle(order.begin(), order.end(), rng);
      for (size_t idx : order) {
        Fiber& f = *fibers[idx];
        if (f.done) {
          ++finished;
          continue;
        }
        if (!f.runnable()) continue;
        progressed = true;
        tls_fiber = &f;
#if defined(CUDA_EMU_ASAN)
        void* fake = nullptr;
        __sanitizer_start_switch_fiber(&fake, f.stack, kFiberStack);
#endif
        swapcontext(&sched_.main, &f.uc);
#if defined(CUDA_EMU_ASAN)
        // (its out-parameters would give the fiber's stack, not this one's: not wanted here)
        __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
        tls_fiber = nullptr;
        if (f.done) ++finished;
      }
      if (!progressed && finished < fibers.size()) {
        std::string where;
        for (auto& fp : fibers)
          if (!fp->done && fp->waiting_on) {
            where = fp->waiting_on->name;
            break;
          }
        tls_sched = nullptr;
        if (!sched_.error.empty()) return sched_.error;
        return "deadlock: threads wait at a " + where + " that the rest of their block never reaches";
      }
    }
    tls_sched = nullptr;
#if defined(CUDA_EMU_PROFILE)
    profile::tls_recording = false;
    if (recorded && sched_.error.empty() && profile_) {
      analyzer.flush(fibers, /*all=*/true);
      std::lock_guard<std::mutex> lk(profile_->mu);
      profile_->distinct_sectors += analyzer.distinct_sectors();
      profile_->divergent.insert(analyzer.divergent.begin(), analyzer.divergent.end());
      for (const auto& [k, v] : analyzer.sites) {
        profile::SiteStats& s = profile_->sites[k];
        s.requests += v.requests, s.lanes += v.lanes, s.bytes += v.bytes, s.units += v.units, s.ideal += v.ideal;
      }
      profile_->recorded_groups += 1;
    }
#endif
    return sched_.error;
  }
#if defined(CUDA_EMU_PROFILE)
  profile::LaunchProfile* profile_ = nullptr;
#endif

 private:
  LaunchConfig cfg_;
  int threads_ = 0, warps_ = 0;
  Cluster cluster_;
  std::vector<std::unique_ptr<Block>> blocks_;
  Scheduler sched_;
};

// Runs body() once per CUDA thread of every block. Synchronous: when it returns, the grid is done.
inline void launch(const LaunchConfig& cfg, const std::function<void()>& body) {
  const int64_t nblocks = int64_t(cfg.grid.x) * cfg.grid.y * cfg.grid.z;
  const int threads = int(cfg.block.x * cfg.block.y * cfg.block.z);
  if (nblocks == 0) return;
  if (threads <= 0 || threads > 1024) fail("launch with " + std::to_string(threads) + " threads per block");
  if (cfg.smem > 232448) fail("dynamic shared memory above the device limit (227 KB)");
  if (cfg.cluster < 1 || cfg.grid.x % unsigned(cfg.cluster) != 0) fail("grid.x is not a multiple of the cluster size");
  (void)schedule();  // a bad PHASOR_CUDA_EMU_SCHEDULE raises here, not in a worker thread (std::terminate)
  const int64_t groups = nblocks / cfg.cluster;
  const int W = int(std::min<int64_t>(worker_threads(), groups));
  std::atomic<int64_t> next{0};
  std::mutex err_mu;
  std::string error;
#if defined(CUDA_EMU_PROFILE)
  profile::LaunchProfile prof;
#endif
  auto work = [&] {
    ClusterRunner runner(cfg, body);
#if defined(CUDA_EMU_PROFILE)
    runner.profile_ = &prof;
#endif
    for (int64_t g; (g = next.fetch_add(1)) < groups;) {
      std::string e = runner.run(g, groups);
      if (!e.empty()) {
        std::lock_guard<std::mutex> lk(err_mu);
        if (error.empty()) error = e;
        next = groups;  // stop handing out work
      }
    }
  };
  if (W <= 1) {
    work();
  } else {
    std::vector<std::thread> pool;
    for (int i = 0; i < W; ++i) pool.emplace_back(work);
    for (auto& t : pool) t.join();
  }
  if (!error.empty()) throw std::runtime_error("cuda_emu: " + error);
#if defined(CUDA_EMU_PROFILE)
  profile::write(cfg, cfg.kernel, groups, prof);
#endif
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
    LaunchConfig c = cfg;
    c.kernel = reinterpret_cast<const void*>(kernel);
    // Each CUDA thread gets its own copies of the arguments, as a kernel's by-value parameters.
    launch(c, [&] { kernel(args...); });
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

#if defined(CUDA_EMU_PROFILE)
#define CUDA_EMU_RECORD_ATOMIC(p) CUDA_EMU_RECORD(p, sizeof(*p), ::cuda_emu::profile::kAtomic)
#define CUDA_EMU_AT_CALL_SITE __attribute__((always_inline))
#else
#define CUDA_EMU_RECORD_ATOMIC(p) ((void)0)
#define CUDA_EMU_AT_CALL_SITE
#endif
// GCC's atomic builtins, not std::atomic_ref: its member functions would be compiled (and, in the
// profile flavour, recorded) as separate instrumented code.
template <typename T>
CUDA_EMU_UNINSTRUMENTED T atomicAdd(T* p, T v) {
  CUDA_EMU_RECORD_ATOMIC(p);
  if constexpr (std::is_integral_v<T>) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
  } else {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomicAdd: float or double");
    using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    U* const bits = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(bits, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(bits, &old, std::bit_cast<U>(T(std::bit_cast<T>(old) + v)), false,
                                        __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    return std::bit_cast<T>(old);
  }
}
template <typename T>
inline CUDA_EMU_AT_CALL_SITE T __ldg(const T* p) {
  return *p;
}

// CUDA's math library overloads these for float in the global namespace (device code calls
// nearbyint(x) on a float and gets a float); <cmath> puts those overloads in std only.
using std::abs, std::acos, std::asin, std::atan, std::atan2, std::ceil, std::cos, std::cosh, std::erf, std::exp,
    std::exp2, std::expm1, std::fabs, std::floor, std::fma, std::fmax, std::fmin, std::fmod, std::hypot, std::isfinite,
    std::isinf, std::isnan, std::log, std::log1p, std::log2, std::lrint, std::nearbyint, std::pow, std::rint,
    std::round, std::signbit, std::sin, std::sinh, std::sqrt, std::tan, std::tanh, std::trunc, std::copysign;

// CUDA's global min / max for arithmetic types (mixed types promote as CUDA's overloads do).
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmax(C(a), C(b));  // fmaxf: NaN-ignoring
  else return C(a) < C(b) ? C(b) : C(a);
}
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmin(C(a), C(b));
  else return C(b) < C(a) ? C(b) : C(a);
}

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }
inline long long __double_as_longlong(double d) { return std::bit_cast<long long>(d); }
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __uint_as_float(unsigned v) { return std::bit_cast<float>(v); }
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
