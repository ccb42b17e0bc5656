// cuda_emu profile: how the emulated kernels touch memory, per source line (build.py builds this
// flavour when PHASOR_CUDA_EMU_PROFILE names an output file).
//
// The translated sources are compiled with GCC's kernel-address instrumentation in call mode, so
// every load and store in them calls __asan_{load,store}N_noabort(addr); the definitions below
// record it instead of checking it. An access counts when it lands in a torch CPU allocation (the
// emulated device memory: a wrapper around torch's CPU allocator tracks them) or in a block's
// shared arena; stack, runtime and host accesses are dropped. cp.async, ldmatrix, ld/st.shared
// and atomics are recorded by the emulated instructions themselves.
//
// A lane's n-th execution of one access site and the other lanes' n-th executions of it form one
// warp-level request (as the hardware issues them when the warp runs converged). Per request:
//   global: 32-byte sectors touched, against the fewest that could hold the bytes requested;
//   shared: wavefronts under the bank model (32 banks of 4 bytes; 8- and 16-byte accesses split
//           the warp into 2 and 4 phases of 128 bytes; lanes reading the same word share it),
//           against one wavefront per phase.
// Only a few thread-block clusters per launch are recorded (PHASOR_CUDA_EMU_PROFILE_GROUPS,
// spread from the first to the last); with PHASOR_CUDA_EMU_PROFILE_SKIP=1 the others do not run at
// all (their outputs are garbage: for measuring access patterns at full problem sizes only).
#pragma once

#include <c10/core/CPUAllocator.h>
#include <dlfcn.h>

#include <shared_mutex>
#include <unordered_map>
#include <unordered_set>

namespace cuda_emu::profile {

enum Op : uint8_t { kLoad, kStore, kAtomic };
enum Space : uint8_t { kGlobal, kShared, kPeerShared };

inline const char* env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
inline const std::string& output_path() {
  static const std::string p = env_or("PHASOR_CUDA_EMU_PROFILE", "");
  return p;
}
inline int groups_to_record() {
  static const int n = std::max(1, std::atoi(env_or("PHASOR_CUDA_EMU_PROFILE_GROUPS", "3")));
  return n;
}
// Logged accesses of a group above which the finished requests are folded in while it runs.
inline size_t flush_above() {
  static const size_t n = size_t(std::max(1L, std::atol(env_or("PHASOR_CUDA_EMU_PROFILE_FLUSH", "4194304"))));
  return n;
}
inline bool skip_unrecorded() {
  static const bool s = std::string(env_or("PHASOR_CUDA_EMU_PROFILE_SKIP", "0")) == "1";
  return s;
}
// Is cluster group g of `groups` one of the recorded ones (evenly spread, first and last included)?
inline bool recorded(int64_t g, int64_t groups) {
  const int64_t n = std::min<int64_t>(groups_to_record(), groups);
  if (n == 1) return g == 0;
  for (int64_t i = 0; i < n; ++i)
    if (g == (i * (groups - 1) + (n - 1) / 2) / (n - 1)) return true;
  return false;
}

// Everything from here to the hooks is compiled at -O2 although the rest of the build is -O0:
// recording and sorting millions of accesses at -O0 cost more than emulating the kernel.
#pragma GCC push_options
#pragma GCC optimize("O2")

// ---------------------------------------------------------------- emulated device memory

// Live allocations: begin -> (end, the base allocator's DataPtr that owns the memory).
struct Ranges {
  std::shared_mutex mu;
  std::map<uintptr_t, std::pair<uintptr_t, std::unique_ptr<c10::DataPtr>>> live;
};
inline Ranges& ranges() {
  static Ranges r;
  return r;
}
CUDA_EMU_UNINSTRUMENTED inline bool in_device_memory(uintptr_t a) {
  Ranges& r = ranges();
  std::shared_lock<std::shared_mutex> lk(r.mu);
  auto it = r.live.upper_bound(a);
  if (it == r.live.begin()) return false;
  --it;
  return a < it->second.first;
}

// torch's CPU allocator, with every live allocation's range recorded. Its DataPtrs are simple
// (context == data), as raw_allocate requires; the deleter finds the owning DataPtr by address.
class TrackingAllocator final : public c10::Allocator {
 public:
  explicit TrackingAllocator(c10::Allocator* base) : base_(base) {}
  c10::DataPtr allocate(size_t n) override {
    auto inner = std::make_unique<c10::DataPtr>(base_->allocate(n));
    void* p = inner->get();
    const c10::Device device = inner->device();
    if (!p) return c10::DataPtr(nullptr, nullptr, &release, device);
    {
      std::unique_lock<std::shared_mutex> lk(ranges().mu);
      ranges().live[uintptr_t(p)] = {uintptr_t(p) + n, std::move(inner)};
    }
    return c10::DataPtr(p, p, &release, device);
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dst, const void* src, std::size_t n) const override { default_copy_data(dst, src, n); }

 private:
  static void release(void* p) {
    if (!p) return;
    std::unique_ptr<c10::DataPtr> owner;
    {
      std::unique_lock<std::shared_mutex> lk(ranges().mu);
      auto it = ranges().live.find(uintptr_t(p));
      if (it == ranges().live.end()) return;
      owner = std::move(it->second.second);
      ranges().live.erase(it);
    }
  }  // the owning DataPtr frees the memory here, outside the lock
  c10::Allocator* base_;
};
// Installed when the library loads, before the caller creates the tensors it passes in.
inline const bool kAllocatorInstalled = [] {
  if (output_path().empty()) return false;
  static TrackingAllocator tracking(c10::GetCPUAllocator());
  c10::SetCPUAllocator(&tracking, /*priority=*/200);
  return true;
}();

// ---------------------------------------------------------------- recording

// (initial-exec: read by every instrumented access; the general TLS model would call __tls_get_addr)
inline thread_local bool tls_recording __attribute__((tls_model("initial-exec"))) = false;  // this OS thread runs a recorded cluster group
inline thread_local bool tls_in_hook __attribute__((tls_model("initial-exec"))) = false;

CUDA_EMU_UNINSTRUMENTED inline void record(uintptr_t a, size_t n, Op op, void* pc, void* via) {
  Fiber* f = tls_fiber;
  if (!f || tls_in_hook || n == 0) return;
  if (a >= uintptr_t(f->stack) && a < uintptr_t(f->stack) + kFiberStack) return;  // registers, locals
  tls_in_hook = true;
  Space space = kGlobal;
  uint64_t addr = a;
  bool keep = false;
  const Block* mine = f->ctx.block;
  Block* const* blocks = mine->cluster->blocks.data();
  const size_t nblocks = mine->cluster->blocks.size();
  for (size_t i = 0; i < nblocks; ++i) {
    const Block* b = blocks[i];
    if (a >= uintptr_t(b->arena) && a < uintptr_t(b->arena) + kArenaBytes) {
      space = b == mine ? kShared : kPeerShared;
      addr = a - uintptr_t(b->arena);
      keep = true;
      break;
    }
  }
  if (!keep) keep = in_device_memory(a);
  if (keep) {
    const uint32_t occ = f->prof_occ.bump(uintptr_t(pc));
    f->prof.push(ProfAccess{uintptr_t(pc), uintptr_t(via), addr, occ, uint16_t(f->ctx.warp_index),
                            uint8_t(f->ctx.lane), uint8_t(n < 255 ? n : 255), uint8_t(op), uint8_t(space)});
  }
  tls_in_hook = false;
}
// For the emulated instructions: `pc` and `via` are their caller's call site and its caller's.
#define CUDA_EMU_RECORD(ptr, n, op)                                                                          \
  do {                                                                                                         \
    if (::cuda_emu::profile::tls_recording)                                                                    \
      ::cuda_emu::profile::record(uintptr_t(ptr), size_t(n), op, __builtin_return_address(0),                 \
                                  __builtin_return_address(1));                                                \
  } while (0)

// ---------------------------------------------------------------- analysis

struct SiteKey {
  uintptr_t pc, via;
  uint8_t op, space, size;
  bool operator<(const SiteKey& o) const {
    return std::tie(pc, via, op, space, size) < std::tie(o.pc, o.via, o.op, o.space, o.size);
  }
};
struct SiteStats {
  uint64_t requests = 0, lanes = 0, bytes = 0, units = 0, ideal = 0;  // units: sectors or wavefronts
};

// (Raw arrays and qsort below: std algorithms and containers would run at -O0, see RawLog.)
template <typename T>
CUDA_EMU_UNINSTRUMENTED inline int cmp3(T a, T b) {
  return a < b ? -1 : (a > b ? 1 : 0);
}
CUDA_EMU_UNINSTRUMENTED inline int cmp_u64(const void* x, const void* y) {
  return cmp3(*static_cast<const uint64_t*>(x), *static_cast<const uint64_t*>(y));
}
// Sorts v[0..n) and returns how many distinct values it holds (moved to the front).
CUDA_EMU_UNINSTRUMENTED inline size_t sort_unique(uint64_t* v, size_t n) {
  if (n == 0) return 0;
  std::qsort(v, n, sizeof(uint64_t), cmp_u64);
  size_t k = 1;
  for (size_t i = 1; i < n; ++i)
    if (v[i] != v[k - 1]) v[k++] = v[i];
  return k;
}

// 32-byte sectors one global request touches, and the fewest that hold its distinct bytes.
CUDA_EMU_UNINSTRUMENTED inline void global_cost(const ProfAccess* const* lanes, size_t n, SiteStats& s) {
  uint64_t sectors[32 * 9], bytes_lo[32], bytes_hi[32];  // <= 255 bytes per access: <= 9 sectors
  size_t ns = 0;
  for (size_t i = 0; i < n; ++i) {
    bytes_lo[i] = lanes[i]->addr, bytes_hi[i] = lanes[i]->addr + lanes[i]->size;
    for (uint64_t sec = lanes[i]->addr >> 5; sec <= (lanes[i]->addr + lanes[i]->size - 1) >> 5; ++sec)
      sectors[ns++] = sec;
  }
  // distinct bytes: the union of the lanes' intervals (insertion sort by start: n <= 32)
  for (size_t i = 1; i < n; ++i)
    for (size_t j = i; j > 0 && bytes_lo[j] < bytes_lo[j - 1]; --j) {
      const uint64_t lo = bytes_lo[j], hi = bytes_hi[j];
      bytes_lo[j] = bytes_lo[j - 1], bytes_hi[j] = bytes_hi[j - 1];
      bytes_lo[j - 1] = lo, bytes_hi[j - 1] = hi;
    }
  uint64_t distinct = 0, cur_end = 0;
  for (size_t i = 0; i < n; ++i) {
    if (bytes_lo[i] > cur_end) cur_end = bytes_lo[i];
    if (bytes_hi[i] > cur_end) distinct += bytes_hi[i] - cur_end, cur_end = bytes_hi[i];
  }
  s.units += sort_unique(sectors, ns);
  s.ideal += (distinct + 31) / 32;
}

// Wavefronts of one shared request: per phase, the most distinct 4-byte words any bank serves.
CUDA_EMU_UNINSTRUMENTED inline void shared_cost(const ProfAccess* const* lanes, size_t n, SiteStats& s) {
  const int size = lanes[0]->size;
  const int lanes_per_phase = size >= 16 ? 8 : (size >= 8 ? 16 : 32);
  uint64_t words[32 * 65];  // (phase, bank, word) packed: <= 255 bytes per access
  size_t nw = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t phase = uint64_t(lanes[i]->lane / lanes_per_phase);
    for (uint64_t w = lanes[i]->addr >> 2; w <= (lanes[i]->addr + lanes[i]->size - 1) >> 2; ++w)
      words[nw++] = (phase << 58) | ((w % 32) << 52) | (w & ((uint64_t(1) << 52) - 1));
  }
  nw = sort_unique(words, nw);
  for (size_t i = 0; i < nw;) {
    const uint64_t phase = words[i] >> 58;
    uint64_t worst = 0;
    while (i < nw && (words[i] >> 58) == phase) {
      const uint64_t bank = words[i] >> 52;
      uint64_t k = 0;
      while (i < nw && (words[i] >> 52) == bank) ++k, ++i;
      worst = k > worst ? k : worst;
    }
    s.units += worst;
    s.ideal += 1;
  }
}

// An access's request key and lane, for sorting with qsort.
struct RequestKey {
  uint64_t k1, k2;  // (warp, pc), (occ, op, space, lane)
  uint32_t index;
};
CUDA_EMU_UNINSTRUMENTED inline int cmp_request(const void* x, const void* y) {
  const auto* a = static_cast<const RequestKey*>(x);
  const auto* b = static_cast<const RequestKey*>(y);
  return a->k1 != b->k1 ? cmp3(a->k1, b->k1) : cmp3(a->k2, b->k2);
}
// pc -> the fewest executions among a warp's running lanes.
struct PcBound {
  uint64_t pc, upto;
};
CUDA_EMU_UNINSTRUMENTED inline int cmp_bound(const void* x, const void* y) {
  return cmp3(static_cast<const PcBound*>(x)->pc, static_cast<const PcBound*>(y)->pc);
}

// The statistics of one cluster group, fed while it runs: a long kernel (a recurrence over
// hundreds of steps) would otherwise hold every access of the group in memory.
class GroupAnalyzer {
 public:
  // Folds in every recorded access whose warp-level request is complete: each lane of its warp
  // that is still running has executed the site more often (a lane that never reaches a site
  // keeps that site's requests pending until the group ends). `all` = the group is finished.
  CUDA_EMU_UNINSTRUMENTED void flush(std::vector<std::unique_ptr<Fiber>>& fibers, bool all) {
    const size_t nf = fibers.size();
    RawLog<Fiber*> fs;
    for (size_t i = 0; i < nf; ++i) fs.push(fibers[i].get());
    ready_.clear();
    RawLog<PcBound> bounds;
    // the fibers of one warp are contiguous (thread order within each block)
    for (size_t w0 = 0; w0 < nf;) {
      size_t w1 = w0;
      while (w1 < nf && fs.data[w1]->ctx.warp_index == fs.data[w0]->ctx.warp_index) ++w1;
      Fiber* running = nullptr;
      for (size_t i = w0; i < w1; ++i)
        if (!fs.data[i]->done) running = fs.data[i];
      if (all) mark_divergent(fs.data + w0, w1 - w0);
      bounds.clear();
      if (!all && running) {
        const PcCounts& t = running->prof_occ;
        for (size_t k = 0; k < t.cap; ++k) {
          if (!t.slots[k].pc) continue;
          uint64_t m = t.slots[k].count;
          for (size_t i = w0; i < w1; ++i)
            if (!fs.data[i]->done) {
              const uint64_t c = fs.data[i]->prof_occ.get(t.slots[k].pc);
              m = c < m ? c : m;
            }
          bounds.push(PcBound{t.slots[k].pc, m});
        }
        std::qsort(bounds.data, bounds.n, sizeof(PcBound), cmp_bound);
      }
      const bool warp_done = all || !running;
      for (size_t i = w0; i < w1; ++i) {
        RawLog<ProfAccess>& log = fs.data[i]->prof;
        size_t kept = 0;
        for (size_t k = 0; k < log.n; ++k) {
          const ProfAccess& a = log.data[k];
          bool complete = warp_done;
          if (!complete) {  // a site absent from the bounds: a running lane has not reached it
            const PcBound key{a.pc, 0};
            const auto* b = static_cast<const PcBound*>(std::bsearch(&key, bounds.data, bounds.n, sizeof(PcBound), cmp_bound));
            complete = b && a.occ < b->upto;
          }
          if (complete) ready_.push(a);
          else log.data[kept++] = a;
        }
        log.n = kept;
        if (all) fs.data[i]->prof_occ.clear();
      }
      w0 = w1;
    }
    add();
  }

  // Distinct global sectors the group touched: its traffic from L2 if its L1 held everything.
  CUDA_EMU_UNINSTRUMENTED uint64_t distinct_sectors() {
    footprint_.n = sort_unique(footprint_.data, footprint_.n);
    return footprint_.n;
  }

  std::map<SiteKey, SiteStats> sites;
  // Sites that lanes of one warp executed unequal (nonzero) numbers of times: a branch inside a
  // loop. Grouping by occurrence then pairs different iterations, so their numbers are unreliable.
  std::unordered_set<uintptr_t> divergent;

 private:
  CUDA_EMU_UNINSTRUMENTED void mark_divergent(Fiber* const* lanes, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      const PcCounts& t = lanes[i]->prof_occ;
      for (size_t k = 0; k < t.cap; ++k) {
        if (!t.slots[k].pc) continue;
        for (size_t j = 0; j < n; ++j) {
          const uint32_t c = lanes[j]->prof_occ.get(t.slots[k].pc);
          if (c != 0 && c != t.slots[k].count) {
            divergent.insert(t.slots[k].pc);
            break;
          }
        }
      }
    }
  }

  CUDA_EMU_UNINSTRUMENTED void add() {
    const size_t n = ready_.n;
    const ProfAccess* acc = ready_.data;
    RawLog<RequestKey> keys;
    for (size_t i = 0; i < n; ++i) {
      const ProfAccess& a = acc[i];
      if (a.space == kGlobal)
        for (uint64_t sec = a.addr >> 5; sec <= (a.addr + a.size - 1) >> 5; ++sec) footprint_.push(sec);
      keys.push(RequestKey{(uint64_t(a.warp) << 48) | (uint64_t(a.pc) & ((uint64_t(1) << 48) - 1)),
                           (uint64_t(a.occ) << 32) | (uint64_t(a.op) << 24) | (uint64_t(a.space) << 16) | a.lane,
                           uint32_t(i)});
    }
    if (footprint_.n > (size_t(1) << 24)) footprint_.n = sort_unique(footprint_.data, footprint_.n);
    std::qsort(keys.data, keys.n, sizeof(RequestKey), cmp_request);
    const ProfAccess* lanes[32];
    for (size_t i = 0; i < keys.n;) {
      size_t m = 0, j = i;
      while (j < keys.n && keys.data[j].k1 == keys.data[i].k1 && (keys.data[j].k2 >> 8) == (keys.data[i].k2 >> 8)) {
        if (m < 32) lanes[m++] = &acc[keys.data[j].index];
        ++j;
      }
      const ProfAccess& a = *lanes[0];
      SiteStats& s = sites[SiteKey{a.pc, a.via, a.op, a.space, a.size}];
      s.requests += 1;
      s.lanes += m;
      for (size_t k = 0; k < m; ++k) s.bytes += lanes[k]->size;
      if (a.space == kGlobal) global_cost(lanes, m, s);
      else if (a.space == kShared) shared_cost(lanes, m, s);
      else s.units += 1, s.ideal += 1;  // distributed shared memory: counted, no bank model
      i = j;
    }
    ready_.clear();
  }

  RawLog<ProfAccess> ready_;
  RawLog<uint64_t> footprint_;
};

#pragma GCC pop_options

// One launch's statistics, written as a JSON line when the launch ends.
struct LaunchProfile {
  std::mutex mu;
  std::map<SiteKey, SiteStats> sites;
  int64_t recorded_groups = 0;
  uint64_t distinct_sectors = 0;  // summed over the recorded groups
  std::unordered_set<uintptr_t> divergent;
};

inline void write(const LaunchConfig& cfg, const void* kernel, int64_t groups, const LaunchProfile& p) {
  static std::mutex file_mu;
  Dl_info info{};
  const bool known = kernel && dladdr(kernel, &info) != 0;
  const uintptr_t base = known ? uintptr_t(info.dli_fbase) : 0;
  std::lock_guard<std::mutex> lk(file_mu);
  FILE* out = std::fopen(output_path().c_str(), "a");
  if (!out) fail("cannot append to PHASOR_CUDA_EMU_PROFILE=" + output_path());
  std::fprintf(out,
               "{\"launch\": {\"library\": \"%s\", \"kernel\": %lu, \"grid\": [%u, %u, %u], \"block\": [%u, %u, %u], "
               "\"smem\": %zu, \"cluster\": %d, \"groups\": %ld, \"recorded_groups\": %ld, \"distinct_sectors\": %lu}, \"sites\": [",
               known ? info.dli_fname : "", (unsigned long)(uintptr_t(kernel) - base), cfg.grid.x, cfg.grid.y,
               cfg.grid.z, cfg.block.x, cfg.block.y, cfg.block.z, cfg.smem, cfg.cluster, long(groups),
               long(p.recorded_groups), (unsigned long)p.distinct_sectors);
  bool first = true;
  for (const auto& [k, s] : p.sites) {
    std::fprintf(out,
                 "%s{\"pc\": %lu, \"via\": %lu, \"op\": %d, \"space\": %d, \"size\": %d, \"requests\": %lu, "
                 "\"lanes\": %lu, \"bytes\": %lu, \"units\": %lu, \"ideal\": %lu, \"divergent\": %d}",
                 first ? "" : ", ", (unsigned long)(k.pc - base), (unsigned long)(k.via - base), k.op, k.space,
                 k.size, (unsigned long)s.requests, (unsigned long)s.lanes, (unsigned long)s.bytes,
                 (unsigned long)s.units, (unsigned long)s.ideal, int(p.divergent.count(k.pc)));
    first = false;
  }
  std::fprintf(out, "]}\n");
  std::fclose(out);
}

}  // namespace cuda_emu::profile

// The instrumentation's entry points (GCC -fsanitize=kernel-address, call mode). Weak: every
// translated file of a library defines them.
#define CUDA_EMU_ACCESS_HOOKS(N)                                                                            \
  extern "C" __attribute__((weak, noinline)) CUDA_EMU_UNINSTRUMENTED void __asan_load##N##_noabort(uintptr_t a) { \
    if (::cuda_emu::profile::tls_recording)                                                                   \
      ::cuda_emu::profile::record(a, N, ::cuda_emu::profile::kLoad, __builtin_return_address(0),              \
                                  __builtin_return_address(1));                                               \
  }                                                                                                           \
  extern "C" __attribute__((weak, noinline)) CUDA_EMU_UNINSTRUMENTED void __asan_store##N##_noabort(uintptr_t a) { \
    if (::cuda_emu::profile::tls_recording)                                                                   \
      ::cuda_emu::profile::record(a, N, ::cuda_emu::profile::kStore, __builtin_return_address(0),             \
                                  __builtin_return_address(1));                                               \
  }
CUDA_EMU_ACCESS_HOOKS(1)
CUDA_EMU_ACCESS_HOOKS(2)
CUDA_EMU_ACCESS_HOOKS(4)
CUDA_EMU_ACCESS_HOOKS(8)
CUDA_EMU_ACCESS_HOOKS(16)
#undef CUDA_EMU_ACCESS_HOOKS
extern "C" __attribute__((weak, noinline)) CUDA_EMU_UNINSTRUMENTED void __asan_loadN_noabort(uintptr_t a, size_t n) {
  if (::cuda_emu::profile::tls_recording)
    ::cuda_emu::profile::record(a, n, ::cuda_emu::profile::kLoad, __builtin_return_address(0),
                                __builtin_return_address(1));
}
extern "C" __attribute__((weak, noinline)) CUDA_EMU_UNINSTRUMENTED void __asan_storeN_noabort(uintptr_t a, size_t n) {
  if (::cuda_emu::profile::tls_recording)
    ::cuda_emu::profile::record(a, n, ::cuda_emu::profile::kStore, __builtin_return_address(0),
                                __builtin_return_address(1));
}
extern "C" __attribute__((weak)) CUDA_EMU_UNINSTRUMENTED void __asan_handle_no_return() {}
extern "C" __attribute__((weak)) CUDA_EMU_UNINSTRUMENTED void __asan_before_dynamic_init(const char*) {}
extern "C" __attribute__((weak)) CUDA_EMU_UNINSTRUMENTED void __asan_after_dynamic_init() {}
