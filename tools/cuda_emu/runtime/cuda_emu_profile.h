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
  for (const Block* b : mine->cluster->blocks) {
    if (a >= uintptr_t(b->arena) && a < uintptr_t(b->arena) + kArenaBytes) {
      space = b == mine ? kShared : kPeerShared;
      addr = a - uintptr_t(b->arena);
      keep = true;
      break;
    }
  }
  if (!keep) keep = in_device_memory(a);
  if (keep) {
    const uint32_t occ = f->prof_occ[uintptr_t(pc)]++;
    f->prof.push_back(ProfAccess{uintptr_t(pc), uintptr_t(via), addr, occ, uint16_t(f->ctx.warp_index),
                                 uint8_t(f->ctx.lane), uint8_t(std::min<size_t>(n, 255)), uint8_t(op),
                                 uint8_t(space)});
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

// 32-byte sectors one global request touches, and the fewest that hold its distinct bytes.
CUDA_EMU_UNINSTRUMENTED inline void global_cost(const ProfAccess* const* lanes, size_t n, SiteStats& s) {
  std::vector<std::pair<uint64_t, uint64_t>> iv;
  std::vector<uint64_t> sectors;
  for (size_t i = 0; i < n; ++i) {
    iv.emplace_back(lanes[i]->addr, lanes[i]->addr + lanes[i]->size);
    for (uint64_t sec = lanes[i]->addr >> 5; sec <= (lanes[i]->addr + lanes[i]->size - 1) >> 5; ++sec)
      sectors.push_back(sec);
  }
  std::sort(iv.begin(), iv.end());
  uint64_t distinct = 0, cur_end = 0;
  for (auto [b, e] : iv) {
    if (b > cur_end) cur_end = b;
    if (e > cur_end) distinct += e - cur_end, cur_end = e;
  }
  std::sort(sectors.begin(), sectors.end());
  s.units += uint64_t(std::unique(sectors.begin(), sectors.end()) - sectors.begin());
  s.ideal += (distinct + 31) / 32;
}

// Wavefronts of one shared request: per phase, the most distinct 4-byte words any bank serves.
CUDA_EMU_UNINSTRUMENTED inline void shared_cost(const ProfAccess* const* lanes, size_t n, SiteStats& s) {
  const int size = lanes[0]->size;
  const int lanes_per_phase = size >= 16 ? 8 : (size >= 8 ? 16 : 32);
  std::vector<std::pair<int, std::pair<int, uint64_t>>> words;  // (phase, (bank, word))
  for (size_t i = 0; i < n; ++i) {
    const int phase = lanes[i]->lane / lanes_per_phase;
    for (uint64_t w = lanes[i]->addr >> 2; w <= (lanes[i]->addr + lanes[i]->size - 1) >> 2; ++w)
      words.push_back({phase, {int(w % 32), w}});
  }
  std::sort(words.begin(), words.end());
  words.erase(std::unique(words.begin(), words.end()), words.end());
  for (size_t i = 0; i < words.size();) {
    const int phase = words[i].first;
    int worst = 0;
    while (i < words.size() && words[i].first == phase) {
      const int bank = words[i].second.first;
      int k = 0;
      while (i < words.size() && words[i].first == phase && words[i].second.first == bank) ++k, ++i;
      worst = std::max(worst, k);
    }
    s.units += uint64_t(worst);
    s.ideal += 1;
  }
}

// The statistics of one cluster group, fed while it runs: a long kernel (a recurrence over
// hundreds of steps) would otherwise hold every access of the group in memory.
class GroupAnalyzer {
 public:
  // Folds in every recorded access whose warp-level request is complete: each lane of its warp
  // that is still running has executed the site more often (a lane that never reaches a site
  // keeps that site's requests pending until the group ends). `all` = the group is finished.
  CUDA_EMU_UNINSTRUMENTED void flush(std::vector<std::unique_ptr<Fiber>>& fibers, bool all) {
    // (warp, pc) -> the fewest executions of pc among the warp's running lanes
    std::map<std::pair<uint16_t, uintptr_t>, uint32_t> done_upto;
    std::unordered_set<uint16_t> finished_warps;
    if (!all) {
      std::map<uint16_t, std::vector<const Fiber*>> warps;
      for (auto& f : fibers) warps[uint16_t(f->ctx.warp_index)].push_back(f.get());
      for (auto& [w, lanes] : warps) {
        const Fiber* first = nullptr;
        for (const Fiber* f : lanes)
          if (!f->done) first = f;
        if (!first) {  // the whole warp finished: its requests are all complete
          finished_warps.insert(w);
          continue;
        }
        for (const auto& [pc, n] : first->prof_occ) {
          uint32_t m = n;
          for (const Fiber* f : lanes) {
            if (f->done) continue;
            auto it = f->prof_occ.find(pc);
            m = std::min(m, it == f->prof_occ.end() ? 0u : it->second);
          }
          done_upto[{w, pc}] = m;
        }
      }
    }
    auto complete = [&](const ProfAccess& a) {
      if (all || finished_warps.count(a.warp)) return true;
      auto it = done_upto.find({a.warp, a.pc});
      return it != done_upto.end() && a.occ < it->second;  // absent: a running lane has not reached the site
    };
    if (all) mark_divergent(fibers);
    std::vector<ProfAccess> ready;
    for (auto& f : fibers) {
      auto keep = std::partition(f->prof.begin(), f->prof.end(), [&](const ProfAccess& a) { return !complete(a); });
      ready.insert(ready.end(), keep, f->prof.end());
      f->prof.erase(keep, f->prof.end());
      if (all) f->prof_occ.clear();
    }
    add(ready);
  }

  std::map<SiteKey, SiteStats> sites;
  std::unordered_set<uint64_t> footprint;  // distinct global sectors: traffic from L2 if L1 held everything
  // Sites that lanes of one warp executed unequal (nonzero) numbers of times: a branch inside a
  // loop. Grouping by occurrence then pairs different iterations, so their numbers are unreliable.
  std::unordered_set<uintptr_t> divergent;

 private:
  CUDA_EMU_UNINSTRUMENTED void mark_divergent(const std::vector<std::unique_ptr<Fiber>>& fibers) {
    std::map<std::pair<int, uintptr_t>, std::pair<uint32_t, uint32_t>> range;  // (warp, pc) -> (min, max) count
    for (auto& f : fibers)
      for (const auto& [pc, n] : f->prof_occ) {
        auto [it, fresh] = range.try_emplace({f->ctx.warp_index, pc}, n, n);
        if (!fresh) it->second = {std::min(it->second.first, n), std::max(it->second.second, n)};
      }
    for (const auto& [key, mm] : range)
      if (mm.first != mm.second) divergent.insert(key.second);
  }

  CUDA_EMU_UNINSTRUMENTED void add(std::vector<ProfAccess>& accesses) {
    for (const ProfAccess& a : accesses)
      if (a.space == kGlobal)
        for (uint64_t sec = a.addr >> 5; sec <= (a.addr + a.size - 1) >> 5; ++sec) footprint.insert(sec);
    auto request_key = [](const ProfAccess& a) { return std::make_tuple(a.warp, a.pc, a.occ, a.op, a.space); };
    std::sort(accesses.begin(), accesses.end(), [&](const ProfAccess& x, const ProfAccess& y) {
      return std::make_tuple(request_key(x), x.lane) < std::make_tuple(request_key(y), y.lane);
    });
    std::vector<const ProfAccess*> lanes;
    for (size_t i = 0; i < accesses.size();) {
      lanes.clear();
      size_t j = i;
      while (j < accesses.size() && request_key(accesses[j]) == request_key(accesses[i])) lanes.push_back(&accesses[j++]);
      const ProfAccess& a = accesses[i];
      SiteStats& s = sites[SiteKey{a.pc, a.via, a.op, a.space, a.size}];
      s.requests += 1;
      s.lanes += lanes.size();
      for (const ProfAccess* l : lanes) s.bytes += l->size;
      if (a.space == kGlobal) global_cost(lanes.data(), lanes.size(), s);
      else if (a.space == kShared) shared_cost(lanes.data(), lanes.size(), s);
      else s.units += 1, s.ideal += 1;  // distributed shared memory: counted, no bank model
      i = j;
    }
  }
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
