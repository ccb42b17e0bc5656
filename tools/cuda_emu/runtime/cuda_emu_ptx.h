// cuda_emu: the inline PTX that phasor's kernels use, as warp-collective C++ (translate.py maps
// each asm statement here by its instruction). Fragment layouts follow the PTX ISA's figures for
// ldmatrix and mma.sync (groupID = lane >> 2, threadID_in_group = lane % 4).
#pragma once

namespace cuda_emu::ptx {

// cp.async: the source is read at issue, but the bytes reach shared memory only when
// cp.async.wait_group retires their commit group (a read of the stage before its wait sees the
// 0xFF fill or the slot's previous contents). `src_bytes` < `bytes` zero-fills the rest, as the
// instruction's src-size operand does.
CUDA_EMU_UNINSTRUMENTED inline void cp_async(uint32_t dst, const void* src, int bytes, int src_bytes) {
  unsigned char* d = from_shared(dst, size_t(bytes));
  if (src_bytes > 0) CUDA_EMU_RECORD(src, src_bytes, profile::kLoad);
  CUDA_EMU_RECORD(d, bytes, profile::kStore);
  if (reinterpret_cast<uintptr_t>(src) % size_t(bytes) != 0 && src_bytes > 0) fail("cp.async: misaligned global source");
  if (dst % unsigned(bytes) != 0) fail("cp.async: misaligned shared destination");
  if (bytes > 16 || src_bytes > bytes) fail("cp.async: more than 16 bytes");
  CpAsyncCopy c{d, bytes, {}};
  if (src_bytes > 0) std::memcpy(c.data, src, size_t(src_bytes));
  if (src_bytes < bytes) std::memset(c.data + src_bytes, 0, size_t(bytes - src_bytes));
  tls_fiber->cp_open.push_back(c);
}
inline void cp_async_commit() {
  Fiber& f = *tls_fiber;
  f.cp_groups.push_back(std::move(f.cp_open));
  f.cp_open.clear();
}
CUDA_EMU_UNINSTRUMENTED inline void cp_async_wait(int n) { tls_fiber->cp_land(size_t(n)); }

template <int N>
CUDA_EMU_UNINSTRUMENTED inline void st_shared(uint32_t addr, const uint32_t (&v)[N]) {
  if (addr % (4 * N) != 0) fail("st.shared: misaligned vector store");
  CUDA_EMU_RECORD(from_shared(addr, 4 * N), 4 * N, profile::kStore);
  std::memcpy(from_shared(addr, 4 * N), v, 4 * N);
}
template <int N>
CUDA_EMU_UNINSTRUMENTED inline void ld_shared(uint32_t addr, uint32_t (&v)[N]) {
  if (addr % (4 * N) != 0) fail("ld.shared: misaligned vector load");
  CUDA_EMU_RECORD(from_shared(addr, 4 * N), 4 * N, profile::kLoad);
  std::memcpy(v, from_shared(addr, 4 * N), 4 * N);
}

// ldmatrix .m8n8 .x4 .b16: lanes 8i..8i+7 give the row addresses of matrix i; register i of lane
// t holds matrix i's row t/4, elements 2(t%4) and 2(t%4)+1 (transposed: column t/4, rows 2(t%4), +1).
// (Profiled as each lane reading its own 16-byte row: lanes 8i..8i+7 form phase i, matrix i.)
CUDA_EMU_UNINSTRUMENTED inline void ldmatrix_x4(uint32_t addr, uint32_t (&r)[4], bool trans) {
  if (addr % 16 != 0) fail("ldmatrix: row address not 16-byte aligned");
  CUDA_EMU_RECORD(from_shared(addr, 16), 16, profile::kLoad);
  const auto rows = warp_exchange(addr, [&](auto lane_addr, int) {
    std::array<uint32_t, 32> a{};
    for (int l = 0; l < 32; ++l) a[l] = lane_addr(l);
    return a;
  });
  const int t = ctx().lane;
  for (int m = 0; m < 4; ++m) {
    uint16_t e[2];
    for (int j = 0; j < 2; ++j) {
      const int row = trans ? 2 * (t % 4) + j : t / 4;
      const int col = trans ? t / 4 : 2 * (t % 4) + j;
      std::memcpy(&e[j], from_shared(rows[8 * m + row], 16) + 2 * col, 2);
    }
    r[m] = uint32_t(e[0]) | (uint32_t(e[1]) << 16);
  }
}

template <typename T>
inline float elem_to_float(uint16_t bits) {
  T v;
  std::memcpy(&v, &bits, 2);
  if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return __bfloat162float(v);
}

struct Frag16 {
  uint32_t a[4], b[2];
};

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: c (16x8, f32) += A (16x16) B (16x8).
// A: reg i holds rows g (i = 0, 2) / g + 8 (i = 1, 3), columns 2q, 2q+1 (+8 for i >= 2).
// B: reg j holds rows 2q, 2q+1 (+8 for j = 1) of column g. C: c0,c1 row g, c2,c3 row g + 8,
// columns 2q, 2q+1. Products are exact in float32; the sum is taken in double and rounded once
// (the hardware's internal order and rounding are unspecified; results agree to float32 rounding).
template <typename T>
inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  Frag16 mine;
  std::memcpy(mine.a, a, sizeof(mine.a));
  std::memcpy(mine.b, b, sizeof(mine.b));
  const int t = ctx().lane, g = t >> 2, q = t & 3;
  warp_exchange(mine, [&](auto lane_frag, int) {
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
      const Frag16 f = lane_frag(l);
      const int lg = l >> 2, lq = l & 3;
      for (int i = 0; i < 4; ++i)
        for (int h = 0; h < 2; ++h) {
          const int row = lg + 8 * (i & 1), col = 2 * lq + h + 8 * (i >> 1);
          A[row][col] = elem_to_float<T>(uint16_t(f.a[i] >> (16 * h)));
        }
      for (int j = 0; j < 2; ++j)
        for (int h = 0; h < 2; ++h) B[2 * lq + h + 8 * j][lg] = elem_to_float<T>(uint16_t(f.b[j] >> (16 * h)));
    }
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i >> 1), col = 2 * q + (i & 1);
      double s = c[i];
      for (int k = 0; k < 16; ++k) s += double(A[row][k]) * double(B[k][col]);
      c[i] = float(s);
    }
    return 0;
  });
}

struct Frag8 {
  uint32_t a[4], b[2];
};

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32: c (16x8, s32) += A (16x32, s8) B (32x8, s8).
// A: reg i holds rows g (i = 0, 2) / g + 8 (i = 1, 3), columns 4q..4q+3 (+16 for i >= 2).
// B: reg j holds rows 4q..4q+3 (+16 for j = 1) of column g. C as in the f32 shape.
inline void mma_m16n8k32_s8(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  Frag8 mine;
  std::memcpy(mine.a, a, sizeof(mine.a));
  std::memcpy(mine.b, b, sizeof(mine.b));
  const int t = ctx().lane, g = t >> 2, q = t & 3;
  warp_exchange(mine, [&](auto lane_frag, int) {
    int A[16][32], B[32][8];
    for (int l = 0; l < 32; ++l) {
      const Frag8 f = lane_frag(l);
      const int lg = l >> 2, lq = l & 3;
      for (int i = 0; i < 4; ++i)
        for (int h = 0; h < 4; ++h) A[lg + 8 * (i & 1)][4 * lq + h + 16 * (i >> 1)] = int8_t(f.a[i] >> (8 * h));
      for (int j = 0; j < 2; ++j)
        for (int h = 0; h < 4; ++h) B[4 * lq + h + 16 * j][lg] = int8_t(f.b[j] >> (8 * h));
    }
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i >> 1), col = 2 * q + (i & 1);
      int32_t s = c[i];
      for (int k = 0; k < 32; ++k) s += A[row][k] * B[k][col];
      c[i] = s;
    }
    return 0;
  });
}

}  // namespace cuda_emu::ptx
