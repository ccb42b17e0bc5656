// phasor::int8_conv2d on int8 tensor cores: an implicit GEMM with mma.sync m16n8k32 s8 x s8 -> s32
// (sm_80+; inline PTX), the fused dequantise / bias / activation / requantise epilogue, NCHW output.
// 1x1 stride-1 unpadded convs have their own kernel further down (int8_conv1x1_kernel), which
// reads NCHW directly, and so do 3x3 stride-1 padding-1 convs (int8_conv3x3_kernel: no activation
// prep pass, only a per-call weight repack); what follows describes the general path.
//
// GEMM view: rows m = output pixels (n, oh, ow) in NCHW order (M = N Ho Wo), columns = output
// channels (Co), reduction k = (tap (r, q), channel c) with the channels innermost, padded to
// Cp = round_up(Ci, 32), so every 32-wide k chunk is one tap and 32 consecutive channels.
//
// Two launches per call:
//  1. prep: the input as NHWC int8 with Cp channels (extra channels 0), so one k chunk of one
//     pixel is 32 contiguous bytes; the weights as [Co_pad][Kpad] in the same k order (0 where
//     c >= Ci, co >= Co or k >= taps Cp), and per output channel the zero-point correction
//     x_zp * sum(w), the multiplier float(x_scale) * w_scale and the bias (0 without one).
//  2. GEMM: 128 pixels x 64 channels per block, 4 warps of 64 x 32, 64 k per stage in a 3-stage
//     cp.async pipeline. A padded tap (outside the input) stores the zero point into shared memory
//     instead of loading, so acc - x_zp * sum(w) = sum (x - x_zp) w exactly, as on the CPU.
//     The epilogue stages the tile through shared memory as [channel][pixel], so the NCHW writes
//     run along the pixels (16-byte stores where the pixel count per image allows).
//
// Fragment layouts (PTX ISA, mma.m16n8k32 with .s8; g = lane / 4, t = lane % 4; each 32-bit
// register holds 4 consecutive k of one row or column):
//   A (16 x 32, row-major): a0 = A[g][4t..4t+3], a1 = A[g+8][4t..], a2 = A[g][16+4t..], a3 = A[g+8][16+4t..]
//   B (32 x 8, "col": k contiguous per column n): b0 = B[4t..4t+3][g], b1 = B[16+4t..16+4t+3][g]
//   C (16 x 8 int32): c0, c1 = C[g][2t, 2t+1], c2, c3 = C[g+8][2t, 2t+1]
// Viewing 16 bytes of a row as eight b16 values, each register is the (row g, word t) element of an
// 8 x 8 b16 matrix, which is what ldmatrix.m8n8.b16 hands lane g*4+t. So one ldmatrix.x4 gives
//   A: matrices (rows 0-7, k 0-15), (rows 8-15, k 0-15), (rows 0-7, k 16-31), (rows 8-15, k 16-31)
//      = a0..a3; lane l points at row l % 16, k byte 16 (l / 16);
//   B (stored [n][k]): (n 0-7, k 0-15), (n 0-7, k 16-31), (n 8-15, k 0-15), (n 8-15, k 16-31)
//      = b0, b1 of n tile 0, then of n tile 1; lane l points at row 8 (l / 16) + l % 8, k byte 16 ((l / 8) % 2).
//
// Shared memory: a stage holds A [128 rows][64 B] and B [64 rows][64 B]; the 16-byte chunk c of
// row r sits at chunk c ^ ((r >> 1) & 3), so the 8 rows one ldmatrix phase reads (and the 8
// chunks a quarter-warp's cp.async writes) fall into 8 different 16-byte bank groups.
#include "quantized_pde/qpde_int8_conv_cuda.h"

#include "common/cuda_utils.cuh"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <limits>

namespace phasor::qpde {
namespace {

constexpr int kBM = 128;              // pixels per block
constexpr int kBN = 64;               // output channels per block
constexpr int kBK = 64;               // k per pipeline stage (two 32-wide chunks)
constexpr int kStages = 3;
constexpr int kThreads = 128;         // 4 warps, 2 (pixels) x 2 (channels), 64 x 32 each
constexpr int kStageA = kBM * kBK;    // bytes
constexpr int kStageB = kBN * kBK;
constexpr int kStageBytes = kStageA + kStageB;
constexpr int kPipeBytes = kStages * kStageBytes;
constexpr int kStg8 = kBM + 16;       // int8 staging row ([channel][pixel]); 16-byte aligned rows
constexpr int kStgF = kBM + 4;        // float staging row; 16-byte aligned, c0/c1 stores conflict-free
constexpr int kSmemBytes = kPipeBytes > kBN * kStgF * 4 ? kPipeBytes : kBN * kStgF * 4;
static_assert(kSmemBytes <= 48 * 1024, "static shared memory above 48 KB needs the dynamic opt-in");
static_assert(kBN * kStg8 <= kSmemBytes, "int8 staging must fit");

constexpr int kPrepThreads = 256;
constexpr int kPrepPix = 128;  // pixels per transpose tile (x 32 channels)

// ---------------------------------------------------------------------------------- PTX helpers
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, cached in L1 too: neighbouring taps of a 3x3 conv reread the same rows.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void st_shared_fill16(uint32_t dst, uint32_t v) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};\n" ::"r"(dst), "r"(v) : "memory");
}

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void mma_s8(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Same formulas as the CPU epilogue (qpde_cpu_kernels.h). y = float(acc - corr) * mult + bias is one
// fmaf here; GCC contracts the CPU line to the same FMA in its AVX2/AVX-512 builds (-std=gnu++20).
__device__ __forceinline__ float epilogue_value(int32_t acc, int32_t corr, float mult, float bias, Act act) {
  float y = fmaf(static_cast<float>(acc - corr), mult, bias);
  if (act == Act::Relu) y = y > 0.f ? y : 0.f;
  else if (act == Act::Gelu) y = 0.5f * y * (1.f + erff(y * 0.70710678118654752f));
  return y;
}

__device__ __forceinline__ int8_t requantise(float y, float inv_out, float out_zp) {
  const float q = nearbyintf(y * inv_out) + out_zp;
  return static_cast<int8_t>(fminf(fmaxf(q, -128.f), 127.f));
}

// 16 consecutive outputs of one channel, from registers (the direct kernels' epilogue). kVec: one
// 16-byte int8 store or four float4 stores (the host picks it only when all 16 fit and are aligned);
// otherwise byte/word stores of the first `valid` outputs. Nothing is stored when valid <= 0.
template <bool kInt8Out, bool kVec>
__device__ __forceinline__ void store_outputs16(void* out_base, int64_t o, const float (&y)[16], int valid,
                                                float inv_out, float out_zp) {
  if (valid <= 0) return;
  if constexpr (kInt8Out) {
    int8_t* out = static_cast<int8_t*>(out_base) + o;
    if constexpr (kVec) {
      uint32_t v[4] = {0u, 0u, 0u, 0u};
#pragma unroll
      for (int b = 0; b < 16; ++b)
        v[b >> 2] |= static_cast<uint32_t>(static_cast<uint8_t>(requantise(y[b], inv_out, out_zp))) << (8 * (b & 3));
      *reinterpret_cast<uint4*>(out) = make_uint4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
      for (int b = 0; b < 16; ++b)
        if (b < valid) out[b] = requantise(y[b], inv_out, out_zp);
    }
  } else {
    float* out = static_cast<float*>(out_base) + o;
    if constexpr (kVec) {
#pragma unroll
      for (int q = 0; q < 4; ++q)
        reinterpret_cast<float4*>(out)[q] = make_float4(y[4 * q], y[4 * q + 1], y[4 * q + 2], y[4 * q + 3]);
    } else {
#pragma unroll
      for (int b = 0; b < 16; ++b)
        if (b < valid) out[b] = y[b];
    }
  }
}

// ------------------------------------------------------------------------------------ prep kernel
struct PrepArgs {
  const int8_t* x;      // [N][Ci][HW]
  int8_t* xh;           // [N][HW][Cp]
  const int8_t* w;      // [Co][Ci][taps]
  int8_t* wp;           // [Co_pad][Kpad]
  const float* w_scale;
  const float* bias;    // nullptr: none
  int32_t* corr;        // [Co_pad] x_zp * sum(w)
  float* mult;          // [Co_pad] float(x_scale) * w_scale
  float* bias_out;      // [Co_pad]
  int Ci, HW, Cp, C32, tilesP, nT, Co, taps, Kpad, x_zp;
  float x_scale;
  bool vec_in;          // HW % 16 == 0 and x 16-byte aligned
};

// 4 x 4 byte transpose: w[j] holds byte i of row j -> o[i] holds byte j of row i... i.e. rows of
// channels (4 pixels each) become 4-channel words of single pixels.
__device__ __forceinline__ void transpose4x4(uint32_t w0, uint32_t w1, uint32_t w2, uint32_t w3, uint32_t (&o)[4]) {
  const uint32_t t0 = __byte_perm(w0, w1, 0x5140), t1 = __byte_perm(w0, w1, 0x7362);
  const uint32_t t2 = __byte_perm(w2, w3, 0x5140), t3 = __byte_perm(w2, w3, 0x7362);
  o[0] = __byte_perm(t0, t2, 0x5410);
  o[1] = __byte_perm(t0, t2, 0x7632);
  o[2] = __byte_perm(t1, t3, 0x5410);
  o[3] = __byte_perm(t1, t3, 0x7632);
}

// Blocks [0, nT): one (image, 128-pixel tile, 32-channel chunk) of the NCHW -> NHWC transpose.
// Blocks [nT, ...): 8 output channels each (one per warp): weight repack, row sums, constants.
__global__ void __launch_bounds__(kPrepThreads) int8_conv_prep_kernel(const PrepArgs a) {
  __shared__ uint32_t tile[32][33];  // [channel][pixel / 4]; 33 words: conflict-free both ways
  const int tid = threadIdx.x;
  const int b = blockIdx.x;
  if (b < a.nT) {
    const int c32 = b % a.C32, rest = b / a.C32, pt = rest % a.tilesP, n = rest / a.tilesP;
    const int c0 = c32 * 32, p0 = pt * kPrepPix;
    if (a.vec_in) {
      const int c = tid >> 3, j = tid & 7, ci = c0 + c, p = p0 + 16 * j;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (ci < a.Ci && p < a.HW)  // HW % 16 == 0: the 16 pixels are all inside
        v = *reinterpret_cast<const uint4*>(a.x + (static_cast<int64_t>(n) * a.Ci + ci) * a.HW + p);
      tile[c][4 * j + 0] = v.x;
      tile[c][4 * j + 1] = v.y;
      tile[c][4 * j + 2] = v.z;
      tile[c][4 * j + 3] = v.w;
    } else {
      unsigned char* t8 = reinterpret_cast<unsigned char*>(&tile[0][0]);
      for (int e = tid; e < 32 * kPrepPix; e += kPrepThreads) {
        const int c = e / kPrepPix, pp = e % kPrepPix, ci = c0 + c, p = p0 + pp;
        const int8_t v = (ci < a.Ci && p < a.HW) ? a.x[(static_cast<int64_t>(n) * a.Ci + ci) * a.HW + p] : int8_t(0);
        t8[c * 33 * 4 + pp] = static_cast<unsigned char>(v);
      }
    }
    __syncthreads();
    const int cq = tid & 7, pg = tid >> 3;  // channels 4cq..4cq+3 of pixels 4pg..4pg+3
    uint32_t o[4];
    transpose4x4(tile[4 * cq + 0][pg], tile[4 * cq + 1][pg], tile[4 * cq + 2][pg], tile[4 * cq + 3][pg], o);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int p = p0 + 4 * pg + i;
      if (p < a.HW)
        *reinterpret_cast<uint32_t*>(a.xh + (static_cast<int64_t>(n) * a.HW + p) * a.Cp + c0 + 4 * cq) = o[i];
    }
    return;
  }
  const int lane = tid & 31;
  const int co = (b - a.nT) * (kPrepThreads / 32) + (tid >> 5);  // < Co_pad by the grid size
  int32_t s = 0;
  for (int k = lane; k < a.Kpad; k += 32) {
    const int tap = k / a.Cp, c = k - tap * a.Cp;
    int8_t v = 0;
    if (co < a.Co && tap < a.taps && c < a.Ci) v = a.w[(static_cast<int64_t>(co) * a.Ci + c) * a.taps + tap];
    a.wp[static_cast<int64_t>(co) * a.Kpad + k] = v;
    s += v;
  }
  s = phasor::cuda::warp_reduce(s, phasor::cuda::Sum{});
  if (lane == 0) {
    const bool real = co < a.Co;
    a.corr[co] = real ? a.x_zp * s : 0;
    a.mult[co] = real ? a.x_scale * a.w_scale[co] : 0.f;
    a.bias_out[co] = real && a.bias != nullptr ? a.bias[co] : 0.f;
  }
}

// ------------------------------------------------------------------------------------ GEMM kernel
struct MmaArgs {
  const int8_t* xh;     // [N][H][W][Cp]
  const int8_t* wp;     // [Co_pad][Kpad]
  const int32_t* corr;  // [Co_pad]
  const float* mult;
  const float* bias;
  void* out;            // [N][Co][Ho][Wo]
  int H, W, Cp, C32, kh, kw, sh, sw, ph, pw, dh, dw, Wo, P, M, Co, nk, Kpad;
  uint32_t zp4;         // the input zero point in all 4 bytes
  float inv_out, out_zp;
  Act act;
  bool vec_out;         // 16-byte output stores (P % 16 == 0 for int8, % 4 for float; aligned out)
};

template <bool kInt8Out>
__global__ void __launch_bounds__(kThreads, 4) int8_conv_mma_kernel(const MmaArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  __shared__ __align__(128) unsigned char smem[kSmemBytes];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 1, wn = warp & 1;
  const int m0 = blockIdx.x * kBM, co0 = blockIdx.y * kBN;
  const uint32_t sbase = smem_addr(smem);

  // ---- A loader: this thread fills logical chunk ca (k bytes 16ca..16ca+15 of the stage) of rows
  // tid/4 + 32j. Chunk ca is half (ca & 1) of k chunk 2s + (ca >> 1) of stage s.
  const int ca = tid & 3;
  const int8_t* arow[4];
  int ih0[4], iw0[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int m = m0 + (tid >> 2) + 32 * j;
    if (m < a.M) {
      const int n = m / a.P, p = m - n * a.P, oh = p / a.Wo, ow = p - oh * a.Wo;
      arow[j] = a.xh + static_cast<int64_t>(n) * a.H * a.W * a.Cp + (ca & 1) * 16;
      ih0[j] = oh * a.sh - a.ph;
      iw0[j] = ow * a.sw - a.pw;
    } else {  // past the last pixel: always "padding" (the zero point; never stored)
      arow[j] = a.xh;
      ih0[j] = -(1 << 30);
      iw0[j] = -(1 << 30);
    }
  }
  // row r = tid/4 + 32j: (r >> 1) & 3 does not depend on j
  const uint32_t a_dst = static_cast<uint32_t>(((tid >> 2) * kBK) + ((ca ^ ((tid >> 3) & 3)) << 4));
  // k chunk of this thread's next A load, as (tap row r, tap column q, 32-channel group c32)
  int kc_c32, kc_q, kc_r;
  {
    const int kc0 = ca >> 1, tap = kc0 / a.C32;
    kc_c32 = kc0 - tap * a.C32;
    kc_q = tap % a.kw;
    kc_r = tap / a.kw;
  }
  auto load_a = [&](int slot) {
    const uint32_t dst0 = sbase + slot * kStageBytes + a_dst;
    const bool kin = kc_r < a.kh;  // false: the zero chunk past K (its weights are 0)
    const int dih = kc_r * a.dh, diw = kc_q * a.dw, coff = kc_c32 * 32;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int ih = ih0[j] + dih, iw = iw0[j] + diw;
      const uint32_t dst = dst0 + j * 32 * kBK;
      if (kin && static_cast<unsigned>(ih) < static_cast<unsigned>(a.H) && static_cast<unsigned>(iw) < static_cast<unsigned>(a.W))
        cp_async16(dst, arow[j] + (ih * a.W + iw) * a.Cp + coff);
      else
        st_shared_fill16(dst, a.zp4);
    }
    kc_c32 += 2;  // next stage: k chunk + 2
    while (kc_c32 >= a.C32) {
      kc_c32 -= a.C32;
      if (++kc_q == a.kw) {
        kc_q = 0;
        ++kc_r;
      }
    }
  };
  // ---- B loader: chunk cb of rows tid/4 and tid/4 + 32 (weights are padded: no bounds)
  const int cb = tid & 3;
  const uint32_t b_dst = static_cast<uint32_t>(kStageA + (tid >> 2) * kBK + ((cb ^ ((tid >> 3) & 3)) << 4));
  const int8_t* b_src = a.wp + static_cast<int64_t>(co0 + (tid >> 2)) * a.Kpad + cb * 16;
  auto load_b = [&](int slot, int s) {
    const uint32_t dst = sbase + slot * kStageBytes + b_dst;
    cp_async16(dst, b_src + s * kBK);
    cp_async16(dst + 32 * kBK, b_src + static_cast<int64_t>(32) * a.Kpad + s * kBK);
  };

  // ---- ldmatrix lane offsets (bytes within a stage) for k32 step ks; see the header comment
  const int swz = (lane >> 1) & 3;
  uint32_t a_off[2], b_off[2];
#pragma unroll
  for (int ks = 0; ks < 2; ++ks) {
    a_off[ks] = static_cast<uint32_t>((wm * 64 + (lane & 15)) * kBK + (((2 * ks + (lane >> 4)) ^ swz) << 4));
    b_off[ks] = static_cast<uint32_t>(kStageA + (wn * 32 + ((lane >> 4) << 3) + (lane & 7)) * kBK +
                                      (((2 * ks + ((lane >> 3) & 1)) ^ swz) << 4));
  }

  int32_t acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[i][j][k] = 0;

  // ---- pipeline: stage s lives in slot s % kStages; one commit group per stage (empty ones too,
  // so wait_group<kStages - 2> always means "stage kt has landed")
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < a.nk) {
      load_a(s);
      load_b(s, s);
    }
    cp_async_commit();
  }
  for (int kt = 0; kt < a.nk; ++kt) {
    cp_async_wait<kStages - 2>();
    // stage kt (cp.async and the zero-point stores) visible to all; every warp is done with kt - 1,
    // whose slot the next load overwrites
    __syncthreads();
    const int pf = kt + kStages - 1;
    if (pf < a.nk) {
      load_a(pf % kStages);
      load_b(pf % kStages, pf);
    }
    cp_async_commit();
    const uint32_t st = sbase + (kt % kStages) * kStageBytes;
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      uint32_t af[4][4], bf[4][2];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) ldsm_x4(st + a_off[ks] + mt * 16 * kBK, af[mt][0], af[mt][1], af[mt][2], af[mt][3]);
#pragma unroll
      for (int pp = 0; pp < 2; ++pp)
        ldsm_x4(st + b_off[ks] + pp * 16 * kBK, bf[2 * pp][0], bf[2 * pp][1], bf[2 * pp + 1][0], bf[2 * pp + 1][1]);
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) mma_s8(acc[mt][nt], af[mt], bf[nt]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the pipeline buffers become the staging tile

  // ---- epilogue: values into staging [channel][pixel] (this thread: pixels g, g+8 of each m tile,
  // channels 2t, 2t+1 of each n tile), then NCHW stores along the pixels
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int cl = wn * 32 + nt * 8 + 2 * t + e, co = co0 + cl;  // co < Co_pad: constants exist
      const int32_t corr = a.corr[co];
      const float mult = a.mult[co], bias = a.bias[co];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int rl = wm * 64 + mt * 16 + g + 8 * h;
          const float y = epilogue_value(acc[mt][nt][2 * h + e], corr, mult, bias, a.act);
          if constexpr (kInt8Out)
            reinterpret_cast<int8_t*>(smem)[cl * kStg8 + rl] = requantise(y, a.inv_out, a.out_zp);
          else
            reinterpret_cast<float*>(smem)[cl * kStgF + rl] = y;
        }
    }
  }
  __syncthreads();
  if constexpr (kInt8Out) {
    const int8_t* stg = reinterpret_cast<const int8_t*>(smem);
    int8_t* out = static_cast<int8_t*>(a.out);
    if (a.vec_out) {  // P % 16 == 0: a 16-pixel group lies in one image, and M % 16 == 0
      for (int i = tid; i < kBN * (kBM / 16); i += kThreads) {
        const int cl = i / (kBM / 16), grp = i % (kBM / 16), co = co0 + cl, m = m0 + grp * 16;
        if (co < a.Co && m < a.M) {
          const int n = m / a.P, p = m - n * a.P;
          *reinterpret_cast<uint4*>(out + (static_cast<int64_t>(n) * a.Co + co) * a.P + p) =
              *reinterpret_cast<const uint4*>(stg + cl * kStg8 + grp * 16);
        }
      }
    } else {
      for (int i = tid; i < kBN * kBM; i += kThreads) {
        const int cl = i / kBM, rl = i % kBM, co = co0 + cl, m = m0 + rl;
        if (co < a.Co && m < a.M) {
          const int n = m / a.P, p = m - n * a.P;
          out[(static_cast<int64_t>(n) * a.Co + co) * a.P + p] = stg[cl * kStg8 + rl];
        }
      }
    }
  } else {
    const float* stg = reinterpret_cast<const float*>(smem);
    float* out = static_cast<float*>(a.out);
    if (a.vec_out) {  // P % 4 == 0
      for (int i = tid; i < kBN * (kBM / 4); i += kThreads) {
        const int cl = i / (kBM / 4), quad = i % (kBM / 4), co = co0 + cl, m = m0 + quad * 4;
        if (co < a.Co && m < a.M) {
          const int n = m / a.P, p = m - n * a.P;
          *reinterpret_cast<float4*>(out + (static_cast<int64_t>(n) * a.Co + co) * a.P + p) =
              *reinterpret_cast<const float4*>(stg + cl * kStgF + quad * 4);
        }
      }
    } else {
      for (int i = tid; i < kBN * kBM; i += kThreads) {
        const int cl = i / kBM, rl = i % kBM, co = co0 + cl, m = m0 + rl;
        if (co < a.Co && m < a.M) {
          const int n = m / a.P, p = m - n * a.P;
          out[(static_cast<int64_t>(n) * a.Co + co) * a.P + p] = stg[cl * kStgF + rl];
        }
      }
    }
  }
#else
  __trap();  // the host only launches this on sm_80+
#endif
}

// ------------------------------------------------------------------- direct 1x1 kernel (no prep)
// A 1x1, stride-1, unpadded conv (dilation does nothing to it) is per image Y[Co][HW] = W[Co][Ci] X[Ci][HW], and NCHW already
// stores X as [channel][pixel]. This kernel reads it as it is, with no NHWC copy (the prep pass of
// the kernel above reads and writes the whole input once more: ~2x the traffic of a 1x1 conv).
//
// Roles: the weights are the mma A operand (rows = output channels, row-major, k contiguous as
// W[Co][Ci] already is), the pixels the B operand. m16n8k32 .s8 takes only .row.col, so B needs
// 4 consecutive k of one pixel per register, while NCHW gives 4 consecutive pixels of one k.
// ldmatrix.trans transposes 16-bit elements only, so the 8-bit transpose is done in registers:
// a lane reads 8 pixels (LDS.64) of each of its 4 k rows 4t..4t+3 and transpose4x4 (4+4 PRMT)
// turns them into the k quads of 8 pixels, i.e. the b register of 8 n tiles at once. A shared
// memory transpose pass would cost an extra store + load and a barrier per stage; this costs
// 8 PRMT per 4 B registers and no extra memory traffic.
//
// Tiles: 64 output channels x 128 pixels of one image per block, 4 warps of 32 x 64, 32 k per
// pipeline stage (one k chunk), kStages1 cp.async stages. N-tile jj of warp wn holds, in column g,
// pixel wn*64 + 8g + jj, so accumulator c[2h + e] of lane (g, t) is channel g + 8h and pixel
// wn*64 + 16t + 8e + jj: a lane owns 16 consecutive pixels of each of its 4 channels (2 m tiles x
// rows g, g + 8), and the epilogue stores them straight from registers (one 16-byte int8 store or
// four float4 per channel; no staging tile).
//
// Shared memory (dynamic, 16 KB + 2 KB per 32 input channels + 256 B):
//   X ring [kStages1][32 k][128 B]: 16-byte chunk ch of row k at ch ^ (2 ((k >> 2) & 3)). A half
//     warp's LDS.64 reads rows 4t + i (t = 0..3) x 32 bytes: the XOR by 2t puts the 4 rows' chunk
//     pairs on 8 different bank groups; the cp.async writes (8 chunks of one row per quarter warp)
//     stay a permutation of one row.
//   W [Cp / 32][64 rows][32 B], loaded once per block from W[Co][Ci] as it is (4-byte loads where
//     Ci % 4 == 0, else byte loads; channels >= Ci and rows >= Co are 0): half hf of row r at hf ^ ((r >> 2) & 1), so the 8 rows
//     of one ldmatrix phase cover 8 bank groups.
//   corr [64] int32: x_zp * sum(w) per row (the zero point is removed as in the kernel above).
constexpr int k1BP = 128;                 // pixels per block
constexpr int k1BC = 64;                  // output channels per block
constexpr int kStages1 = 4;
constexpr int k1StageBytes = 32 * k1BP;   // one 32-wide k chunk of 128 pixels
constexpr int k1RingBytes = kStages1 * k1StageBytes;
constexpr int k1WChunkBytes = k1BC * 32;  // one k chunk of the 64 weight rows
constexpr int k1MaxCp = 256;              // resident weights <= 16 KB: total <= 48 KB, no opt-in

__host__ __device__ constexpr int conv1x1_smem_bytes(int Cp) { return k1RingBytes + (Cp / 32) * k1WChunkBytes + k1BC * 4; }
static_assert(conv1x1_smem_bytes(k1MaxCp) <= 48 * 1024, "dynamic shared memory above 48 KB needs the opt-in");

struct Conv1x1Args {
  const int8_t* x;       // [N][Ci][HW]
  const int8_t* w;       // [Co][Ci]
  const float* w_scale;  // [Co]
  const float* bias;     // [Co] or nullptr
  void* out;             // [N][Co][HW]
  int Ci, Co, HW, nk, tilesP, x_zp;
  float x_scale, inv_out, out_zp;
  Act act;
  bool w4;               // Ci % 4 == 0 and w 4-byte aligned: weight words in one load
};

__device__ __forceinline__ void cp_async16_cg(uint32_t dst, const void* src) {  // streamed once: L2 only
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ uint2 lds64(uint32_t addr) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr) : "memory");
  return v;
}

__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}

__device__ __forceinline__ void sts128(uint32_t addr, uint4 v) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

// kVec: HW % 16 == 0 and x, out 16-byte aligned (cp.async and 16-byte stores); otherwise byte
// loads and stores with per-pixel bounds.
template <bool kVec, bool kInt8Out>
__global__ void __launch_bounds__(kThreads, 4) int8_conv1x1_kernel(const Conv1x1Args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem1[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 1, wn = warp & 1, g = lane >> 2, t = lane & 3;
  const int n = blockIdx.x / a.tilesP, p0 = (blockIdx.x - n * a.tilesP) * k1BP, co0 = blockIdx.y * k1BC;
  const uint32_t sbase = smem_addr(smem1);
  const uint32_t wbase = sbase + k1RingBytes;
  int32_t* s_corr = reinterpret_cast<int32_t*>(smem1 + k1RingBytes + a.nk * k1WChunkBytes);
  const int8_t* ximg = a.x + static_cast<int64_t>(n) * a.Ci * a.HW;

  // ---- X loader: chunks e = tid, tid + 128 of the stage: row e / 8 (channel 32 s + row), 16 pixels at 16 (e % 8)
  auto load_x = [&](int slot, int s) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int e = tid + kThreads * j, row = e >> 3, ch = e & 7;
      const uint32_t dst = sbase + slot * k1StageBytes + row * k1BP + ((ch ^ (((row >> 2) & 3) << 1)) << 4);
      const int c = s * 32 + row, p = p0 + ch * 16;
      const int8_t* src = ximg + static_cast<int64_t>(c) * a.HW + p;
      if constexpr (kVec) {
        if (c < a.Ci && p < a.HW)  // HW % 16 == 0: all 16 pixels inside
          cp_async16_cg(dst, src);
        else
          st_shared_fill16(dst, 0u);  // never read past x; channels >= Ci meet zero weights anyway
      } else {
        uint32_t v[4] = {0u, 0u, 0u, 0u};
        if (c < a.Ci) {
#pragma unroll
          for (int b = 0; b < 16; ++b)
            if (p + b < a.HW) v[b >> 2] |= static_cast<uint32_t>(static_cast<uint8_t>(src[b])) << (8 * (b & 3));
        }
        sts128(dst, make_uint4(v[0], v[1], v[2], v[3]));
      }
    }
  };

  // X first: the weight loads below overlap with it
#pragma unroll
  for (int s = 0; s < kStages1 - 1; ++s) {
    if (s < a.nk) load_x(s, s);
    cp_async_commit();
  }

  // ---- weights, once: word e = (k chunk kc, row r, k 4q..4q+3) of the block's 64 rows (0 past Ci or
  // Co), chunk-major so that a warp stores 4 whole rows of one chunk (128 contiguous bytes: no bank
  // conflict; row-major e put chunks 2 KB apart on the same banks). Plain (not asm volatile) shared
  // stores, so the compiler may batch the loads of several iterations.
  {
    for (int e = tid; e < a.nk * k1BC * 8; e += kThreads) {
      const int r = (e / 8) % k1BC, k = (e / (8 * k1BC)) * 32 + (e % 8) * 4, co = co0 + r;
      uint32_t v = 0;
      if (co < a.Co) {
        const int8_t* wr = a.w + static_cast<int64_t>(co) * a.Ci + k;
        if (a.w4) {  // Ci % 4 == 0, w 4-byte aligned: k < Ci means all 4 inside
          if (k < a.Ci) v = __ldg(reinterpret_cast<const unsigned int*>(wr));
        } else {
#pragma unroll
          for (int b = 0; b < 4; ++b)
            if (k + b < a.Ci) v |= static_cast<uint32_t>(static_cast<uint8_t>(__ldg(wr + b))) << (8 * b);
        }
      }
      const int kc = k >> 5, kin = k & 31;
      *reinterpret_cast<uint32_t*>(smem1 + k1RingBytes + kc * k1WChunkBytes + r * 32 +
                                   ((((kin >> 4) ^ ((r >> 2) & 1))) << 4) + (kin & 15)) = v;
    }
  }

  // ---- fragment addresses (bytes): A by ldmatrix.x4 (lane l: row l % 16 of the m tile, k half l / 16);
  // B by LDS.64 of row 4t + i (+16 for b1), pixels wn*64 + 8g .. +7
  uint32_t a_off[2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
    const int r = wm * 32 + mt * 16 + (lane & 15);
    a_off[mt] = static_cast<uint32_t>(r * 32 + (((lane >> 4) ^ ((r >> 2) & 1)) << 4));
  }
  const uint32_t b_off =
      static_cast<uint32_t>(4 * t * k1BP + (((wn * 4 + (g >> 1)) ^ (2 * t)) << 4) + 8 * (g & 1));

  int32_t acc[2][8][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[i][j][k] = 0;

  for (int kt = 0; kt < a.nk; ++kt) {
    cp_async_wait<kStages1 - 2>();
    // stage kt (and, at kt = 0, the weights) visible to all; every warp is done with kt - 1
    __syncthreads();
    const int pf = kt + kStages1 - 1;
    if (pf < a.nk) load_x(pf % kStages1, pf);
    cp_async_commit();
    const uint32_t xs = sbase + (kt % kStages1) * k1StageBytes + b_off;
    const uint32_t ws = wbase + kt * k1WChunkBytes;
    uint32_t af[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) ldsm_x4(ws + a_off[mt], af[mt][0], af[mt][1], af[mt][2], af[mt][3]);
    uint32_t bf[8][2];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      uint2 v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) v[i] = lds64(xs + (16 * hh + i) * k1BP);
      uint32_t lo[4], hi[4];
      transpose4x4(v[0].x, v[1].x, v[2].x, v[3].x, lo);  // lo[j]: k 16hh+4t..+3 of pixel 8g + j
      transpose4x4(v[0].y, v[1].y, v[2].y, v[3].y, hi);  // hi[j]: ... of pixel 8g + 4 + j
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        bf[j][hh] = lo[j];
        bf[4 + j][hh] = hi[j];
      }
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int jj = 0; jj < 8; ++jj) mma_s8(acc[mt][jj], af[mt], bf[jj]);
  }
  cp_async_wait<0>();  // only empty groups can remain; keeps the block's exit clean

  // row sums from the resident weights (visible since the loop's first barrier)
  if (tid < k1BC) {
    int32_t s = 0;
    for (int kc = 0; kc < a.nk; ++kc)
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        // word (q + tid / 4) % 8 of row tid: bank 8 (tid % 4) + that word, so a warp's 32 reads hit
        // 32 banks (the plain order q put every 4th row on one bank: 8-way conflicts)
        const int word = (q + (tid >> 2)) & 7;
        s = __dp4a(static_cast<int>(lds32(wbase + kc * k1WChunkBytes + tid * 32 + 4 * word)), 0x01010101, s);
      }
    s_corr[tid] = a.x_zp * s;
  }
  __syncthreads();

  // ---- epilogue: lane (g, t) holds channels wm*32 + mt*16 + g + 8h, pixels pb .. pb + 15 (byte 8e + jj)
  const int pb = p0 + wn * 64 + 16 * t;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int cl = wm * 32 + mt * 16 + g + 8 * h, co = co0 + cl;
      if (co >= a.Co) continue;
      const int32_t corr = s_corr[cl];
      const float mult = a.x_scale * a.w_scale[co], bias = a.bias != nullptr ? a.bias[co] : 0.f;
      float y[16];
#pragma unroll
      for (int e = 0; e < 2; ++e)
#pragma unroll
        for (int jj = 0; jj < 8; ++jj) y[8 * e + jj] = epilogue_value(acc[mt][jj][2 * h + e], corr, mult, bias, a.act);
      const int64_t o = (static_cast<int64_t>(n) * a.Co + co) * a.HW + pb;
      store_outputs16<kInt8Out, kVec>(a.out, o, y, a.HW - pb, a.inv_out, a.out_zp);
    }
#else
  __trap();  // the host only launches this on sm_80+
#endif
}

// ------------------------------------------------------------------- direct 3x3 kernel (no prep)
// A 3x3, stride-1, padding-1, undilated conv read from NCHW as it is, in the 1x1 kernel's roles:
// weights as A (ldmatrix.x4), pixels as B (LDS.64 + transpose4x4). Only the weights are repacked,
// per call, by the prep kernel's weight blocks (no activation blocks: [Co_pad][Kpad] with
// k = tap * Cp + c, zeros past Ci / Co, plus corr / mult / bias): 64 x 9 Cp bytes, ~1 us.
//
// Tile: 4 output rows x 32 columns of one image (128 pixels) x 64 output channels, 4 warps of
// 32 channels x 64 pixels (warp wn: rows 2wn, 2wn + 1). As in the 1x1 kernel, n tile jj of a warp
// holds in column n pixel 8n + jj, here tile row 2wn + (n >> 2), column 8 (n & 3) + jj.
// Per 32-channel k chunk a stage holds
//   X [32 channels][6 rows][48 B]: input rows y0 - 1 .. y0 + 4, columns x0 - 8 .. x0 + 39 (8-byte
//     chunks, cp.async where inside the image, else the input zero point, so padded taps hold
//     x_zp and acc - x_zp sum(w) stays exact). Channel stride 296 B (= 8 mod 32): the half warp's
//     LDS.64 of channels 4t + i fall into 4 different 32-byte bank windows.
//   W [9 taps][64 rows][32 B], the 1x1 kernel's swizzled chunk layout once per tap.
// B without alignment games: for tap row r, lane (g, t) loads, per k row 4t + i, the 24 bytes of
// columns 8c - 8 .. 8c + 15 (c = g & 3; three aligned LDS.64) and transposes the words of columns
// 8c - 4 .. 8c + 11 into k quads. Taps q = 0, 1, 2 then need columns 8c + jj + q - 1 of n tile
// jj: the same 10 registers X[jj + q] (columns 8c - 1 .. 8c + 8), so the column shift is a
// register renaming; 22 PRMT (unused transpose outputs are dead code) per 48 mma.
// Two stages (55.8 KB dynamic shared memory, opt-in): Ci <= 64 (the U-Net / ResNet widths) has
// one or two k chunks, so a deeper ring would only cost occupancy.
constexpr int k3TH = 4, k3TW = 32;          // output tile rows x columns
constexpr int k3BC = 64;                    // output channels per block (= kBN: the prep's Co_pad)
constexpr int k3Rows = k3TH + 2;            // input rows with the halo
constexpr int k3RowB = k3TW + 16;           // bytes per input row: 8 columns either side
constexpr int k3ChStride = k3Rows * k3RowB + 8;
constexpr int k3XBytes = 32 * k3ChStride;
constexpr int k3WTapBytes = k3BC * 32;
constexpr int k3StageBytes = k3XBytes + 9 * k3WTapBytes;
constexpr int k3Stages = 2;
constexpr int k3SmemBytes = k3Stages * k3StageBytes;
constexpr int k3XChunks = 32 * k3Rows * (k3RowB / 8);  // 8-byte X chunks per stage
static_assert(k3XChunks % kThreads == 0 && (9 * k3BC * 2) % kThreads == 0, "loaders: whole rounds");
static_assert(k3ChStride % 32 == 8 && k3XBytes % 16 == 0, "bank spread; W part 16-byte aligned");

struct Conv3x3Args {
  const int8_t* x;       // [N][Ci][H][W]
  const int8_t* wp;      // [Co_pad][Kpad], k = tap * Cp + c
  const int32_t* corr;   // [Co_pad]
  const float* mult;
  const float* bias;
  void* out;             // [N][Co][H][W]
  int Ci, Co, H, W, Cp, Kpad, nk, tilesH, tilesW;
  uint32_t zp4;          // the input zero point in all 4 bytes
  float inv_out, out_zp;
  Act act;
};

__device__ __forceinline__ void cp_async8(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void sts64(uint32_t addr, uint32_t v0, uint32_t v1) {
  asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" ::"r"(addr), "r"(v0), "r"(v1) : "memory");
}

// kVec: W % 16 == 0 and x, out 16-byte aligned (8-byte cp.async chunks all inside or all outside
// the image; 16-byte output stores); otherwise byte loads and stores with bounds.
template <bool kVec, bool kInt8Out>
__global__ void __launch_bounds__(kThreads, 3) int8_conv3x3_kernel(const Conv3x3Args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem3[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 1, wn = warp & 1, g = lane >> 2, t = lane & 3;
  const int tiles = a.tilesH * a.tilesW, n = blockIdx.x / tiles, tr = blockIdx.x - n * tiles;
  const int y0 = (tr / a.tilesW) * k3TH, x0 = (tr - (tr / a.tilesW) * a.tilesW) * k3TW, co0 = blockIdx.y * k3BC;
  const uint32_t sbase = smem_addr(smem3);
  const int8_t* ximg = a.x + static_cast<int64_t>(n) * a.Ci * a.H * a.W;

  // ---- stage loader: X chunks e = tid + 128 j (channel e / 36, row (e / 6) % 6, 8-byte chunk e % 6),
  // W chunks e = tid + 128 j (tap e / 128, row (e / 2) % 64, 16-byte half e % 2)
  auto load_stage = [&](int slot, int s) {
    const uint32_t st = sbase + slot * k3StageBytes;
#pragma unroll 1  // unrolled, the hoisted per-chunk addresses would cost ~30 registers (spills)
    for (int j = 0; j < k3XChunks / kThreads; ++j) {
      const int e = tid + kThreads * j, ch = e / (k3Rows * 6), rem = e - ch * (k3Rows * 6), row = rem / 6,
                ck = rem - row * 6;
      const uint32_t dst = st + ch * k3ChStride + row * k3RowB + 8 * ck;
      const int c = s * 32 + ch, iy = y0 - 1 + row, ix = x0 - 8 + 8 * ck;
      const bool in_cy = c < a.Ci && static_cast<unsigned>(iy) < static_cast<unsigned>(a.H);
      const int8_t* src = ximg + (static_cast<int64_t>(c) * a.H + iy) * a.W + ix;
      if constexpr (kVec) {
        if (in_cy && static_cast<unsigned>(ix) < static_cast<unsigned>(a.W))  // W % 8 == 0: all 8 inside
          cp_async8(dst, src);
        else
          sts64(dst, a.zp4, a.zp4);
      } else {
        uint32_t v[2] = {a.zp4, a.zp4};
        if (in_cy) {
#pragma unroll
          for (int b = 0; b < 8; ++b)
            if (static_cast<unsigned>(ix + b) < static_cast<unsigned>(a.W))
              v[b >> 2] = (v[b >> 2] & ~(0xffu << (8 * (b & 3)))) |
                          (static_cast<uint32_t>(static_cast<uint8_t>(src[b])) << (8 * (b & 3)));
        }
        sts64(dst, v[0], v[1]);
      }
    }
#pragma unroll 1
    for (int j = 0; j < 9 * k3BC * 2 / kThreads; ++j) {
      const int e = tid + kThreads * j, tap = e >> 7, r = (e >> 1) & 63, hf = e & 1;
      const uint32_t dst = st + k3XBytes + tap * k3WTapBytes + r * 32 + ((hf ^ ((r >> 2) & 1)) << 4);
      cp_async16(dst, a.wp + static_cast<int64_t>(co0 + r) * a.Kpad + tap * a.Cp + s * 32 + 16 * hf);
    }
  };

  load_stage(0, 0);
  cp_async_commit();

  // ---- fragment addresses (bytes within a stage): A as in the 1x1 kernel, per tap; B: channel 4t,
  // tile row 2wn + g / 4, columns 8 (g & 3) - 8 ..
  uint32_t a_off[2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
    const int r = wm * 32 + mt * 16 + (lane & 15);
    a_off[mt] = static_cast<uint32_t>(k3XBytes + r * 32 + (((lane >> 4) ^ ((r >> 2) & 1)) << 4));
  }
  const uint32_t b_off = static_cast<uint32_t>(4 * t * k3ChStride + (2 * wn + (g >> 2)) * k3RowB + 8 * (g & 3));

  int32_t acc[2][8][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[i][j][k] = 0;

  for (int kt = 0; kt < a.nk; ++kt) {
    cp_async_wait<0>();
    // stage kt (cp.async and zero-point stores) visible to all; every warp is done with kt - 1,
    // whose slot the next load overwrites
    __syncthreads();
    if (kt + 1 < a.nk) load_stage((kt + 1) & 1, kt + 1);
    cp_async_commit();
    const uint32_t st = sbase + (kt & 1) * k3StageBytes;
#pragma unroll
    for (int r = 0; r < 3; ++r) {
      uint32_t xb[10][2];  // k quads (16 hh + 4t ..) of columns 8c - 1 + idx, tap row r
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        uint2 u[3][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int m = 0; m < 3; ++m) u[m][i] = lds64(st + b_off + (16 * hh + i) * k3ChStride + r * k3RowB + 8 * m);
        uint32_t o0[4], o1[4], o2[4], o3[4];
        transpose4x4(u[0][0].y, u[0][1].y, u[0][2].y, u[0][3].y, o0);  // columns 8c - 4 .. 8c - 1
        transpose4x4(u[1][0].x, u[1][1].x, u[1][2].x, u[1][3].x, o1);  // 8c .. 8c + 3
        transpose4x4(u[1][0].y, u[1][1].y, u[1][2].y, u[1][3].y, o2);  // 8c + 4 .. 8c + 7
        transpose4x4(u[2][0].x, u[2][1].x, u[2][2].x, u[2][3].x, o3);  // 8c + 8 .. 8c + 11
        xb[0][hh] = o0[3];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          xb[1 + j][hh] = o1[j];
          xb[5 + j][hh] = o2[j];
        }
        xb[9][hh] = o3[0];
      }
#pragma unroll
      for (int q = 0; q < 3; ++q) {
        uint32_t af[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
          ldsm_x4(st + (3 * r + q) * k3WTapBytes + a_off[mt], af[mt][0], af[mt][1], af[mt][2], af[mt][3]);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int jj = 0; jj < 8; ++jj) {
            const uint32_t bf[2] = {xb[jj + q][0], xb[jj + q][1]};
            mma_s8(acc[mt][jj], af[mt], bf);
          }
      }
    }
  }
  cp_async_wait<0>();  // only an empty group can remain

  // ---- epilogue: lane (g, t) holds channels wm*32 + mt*16 + g + 8h, output row y0 + 2wn + t / 2,
  // columns xb .. xb + 15 (byte 8e + jj), straight from registers
  const int oy = y0 + 2 * wn + (t >> 1), xs = x0 + 16 * (t & 1);
  if (oy >= a.H) return;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int co = co0 + wm * 32 + mt * 16 + g + 8 * h;
      if (co >= a.Co) continue;
      const int32_t corr = a.corr[co];
      const float mult = a.mult[co], bias = a.bias[co];
      float y[16];
#pragma unroll
      for (int e = 0; e < 2; ++e)
#pragma unroll
        for (int jj = 0; jj < 8; ++jj) y[8 * e + jj] = epilogue_value(acc[mt][jj][2 * h + e], corr, mult, bias, a.act);
      const int64_t o = ((static_cast<int64_t>(n) * a.Co + co) * a.H + oy) * a.W + xs;
      store_outputs16<kInt8Out, kVec>(a.out, o, y, a.W - xs, a.inv_out, a.out_zp);
    }
#else
  __trap();  // the host only launches this on sm_80+
#endif
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

int compute_major(int device) {
  static std::atomic<int> cache[64];  // 0: not asked yet
  if (device < 0 || device >= 64) return 0;
  int v = cache[device].load(std::memory_order_relaxed);
  if (v == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, device));
    cache[device].store(v, std::memory_order_relaxed);
  }
  return v;
}

}  // namespace

bool int8_conv_mma_supported(const ConvGeom& g, int device) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  constexpr int64_t kSmall = int64_t(1) << 28;  // geometry terms, so ih0 + r dh etc. cannot overflow
  const int64_t Cp = round_up(g.Ci, 32), taps = g.kh * g.kw, Co_pad = round_up(g.Co, kBN);
  const int64_t Kpad = round_up(taps * Cp, kBK);
  for (int64_t v : {g.H, g.W, g.Ci, g.Co, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.Ho, g.Wo,
                    g.sh * g.Ho, g.sw * g.Wo, g.dh * g.kh, g.dw * g.kw})
    if (v >= kSmall) return false;
  return compute_major(device) >= 8 && g.H * g.W * Cp <= kMax &&  // NHWC offsets inside one image
         g.N * g.Ho * g.Wo <= kMax - kBM &&                         // M and m0 + 127
         g.N * g.H * g.W <= kMax && Co_pad * Kpad <= kMax &&
         (Co_pad / kBN) <= 65535 && Kpad <= kMax;
}

// The weight half of the prep kernel's arguments (repack to [Co_pad][Kpad], x_zp * row sums,
// x_scale * w_scale, bias), shared by the prep + GEMM path and the direct 3x3 path. `consts` holds
// corr, mult and bias, Co_pad entries each.
PrepArgs weight_prep_args(const at::Tensor& w, const at::Tensor& w_scale, const at::Tensor& bias, const ConvGeom& g,
                          const Int8ConvEpilogue& e, int64_t Cp, int64_t Kpad, int64_t Co_pad, int8_t* wp,
                          uint8_t* consts) {
  PrepArgs pa{};
  pa.w = w.const_data_ptr<int8_t>();
  pa.wp = wp;
  pa.w_scale = w_scale.const_data_ptr<float>();
  pa.bias = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  pa.corr = reinterpret_cast<int32_t*>(consts);
  pa.mult = reinterpret_cast<float*>(pa.corr + Co_pad);
  pa.bias_out = pa.mult + Co_pad;
  pa.Ci = static_cast<int>(g.Ci);
  pa.Cp = static_cast<int>(Cp);
  pa.C32 = static_cast<int>(Cp / 32);
  pa.Co = static_cast<int>(g.Co);
  pa.taps = static_cast<int>(g.kh * g.kw);
  pa.Kpad = static_cast<int>(Kpad);
  pa.x_zp = e.x_zp;
  pa.x_scale = e.x_scale;
  return pa;
}

void int8_conv_mma_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale, const at::Tensor& bias,
                        const ConvGeom& g, const Int8ConvEpilogue& e, at::Tensor& out) {
  const int64_t Cp = round_up(g.Ci, 32), C32 = Cp / 32, taps = g.kh * g.kw, HW = g.H * g.W;
  const int64_t KC = taps * C32, nk = (KC + 1) / 2, Kpad = nk * kBK, Co_pad = round_up(g.Co, kBN);
  const int64_t M = g.N * g.Ho * g.Wo, P = g.Ho * g.Wo;
  // one workspace: NHWC input, repacked weights, per-channel constants (256-byte aligned pieces)
  const int64_t xh_bytes = round_up(g.N * HW * Cp, 256), wp_bytes = round_up(Co_pad * Kpad, 256);
  at::Tensor ws = at::empty({xh_bytes + wp_bytes + 3 * Co_pad * 4}, x.options().dtype(at::kByte));
  auto* base = ws.mutable_data_ptr<uint8_t>();
  int8_t* xh = reinterpret_cast<int8_t*>(base);
  auto stream = c10::cuda::getCurrentCUDAStream();

  PrepArgs pa = weight_prep_args(w, w_scale, bias, g, e, Cp, Kpad, Co_pad, reinterpret_cast<int8_t*>(base + xh_bytes),
                                 base + xh_bytes + wp_bytes);
  pa.x = x.const_data_ptr<int8_t>();
  pa.xh = xh;
  pa.HW = static_cast<int>(HW);
  const int64_t tilesP = (HW + kPrepPix - 1) / kPrepPix, nT = g.N * tilesP * C32;
  const int64_t nW = Co_pad / (kPrepThreads / 32);
  TORCH_CHECK_VALUE(nT + nW <= std::numeric_limits<int32_t>::max(), "phasor::int8_conv2d: input too large for one grid");
  pa.tilesP = static_cast<int>(tilesP);
  pa.nT = static_cast<int>(nT);
  pa.vec_in = HW % 16 == 0 && reinterpret_cast<uintptr_t>(pa.x) % 16 == 0;
  int8_conv_prep_kernel<<<static_cast<unsigned>(nT + nW), kPrepThreads, 0, stream>>>(pa);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  MmaArgs ma{};
  ma.xh = xh;
  ma.wp = pa.wp;
  ma.corr = pa.corr;
  ma.mult = pa.mult;
  ma.bias = pa.bias_out;
  ma.out = out.mutable_data_ptr();
  ma.H = static_cast<int>(g.H);
  ma.W = static_cast<int>(g.W);
  ma.Cp = static_cast<int>(Cp);
  ma.C32 = static_cast<int>(C32);
  ma.kh = static_cast<int>(g.kh);
  ma.kw = static_cast<int>(g.kw);
  ma.sh = static_cast<int>(g.sh);
  ma.sw = static_cast<int>(g.sw);
  ma.ph = static_cast<int>(g.ph);
  ma.pw = static_cast<int>(g.pw);
  ma.dh = static_cast<int>(g.dh);
  ma.dw = static_cast<int>(g.dw);
  ma.Wo = static_cast<int>(g.Wo);
  ma.P = static_cast<int>(P);
  ma.M = static_cast<int>(M);
  ma.Co = static_cast<int>(g.Co);
  ma.nk = static_cast<int>(nk);
  ma.Kpad = static_cast<int>(Kpad);
  ma.zp4 = static_cast<uint32_t>(static_cast<uint8_t>(static_cast<int8_t>(e.x_zp))) * 0x01010101u;
  ma.inv_out = e.inv_out;
  ma.out_zp = static_cast<float>(e.out_zp);
  ma.act = e.act;
  const bool aligned = reinterpret_cast<uintptr_t>(ma.out) % 16 == 0;
  ma.vec_out = aligned && P % (e.int8_out ? 16 : 4) == 0;
  const dim3 grid(static_cast<unsigned>((M + kBM - 1) / kBM), static_cast<unsigned>(Co_pad / kBN));
  if (e.int8_out)
    int8_conv_mma_kernel<true><<<grid, kThreads, 0, stream>>>(ma);
  else
    int8_conv_mma_kernel<false><<<grid, kThreads, 0, stream>>>(ma);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool int8_conv_1x1_supported(const ConvGeom& g, int device) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (g.kh != 1 || g.kw != 1 || g.sh != 1 || g.sw != 1 || g.ph != 0 || g.pw != 0) return false;
  const int64_t HW = g.H * g.W, Cp = round_up(g.Ci, 32), tilesP = (HW + k1BP - 1) / k1BP;
  return g.Ci >= 1 && Cp <= k1MaxCp && compute_major(device) >= 8 && g.Ci * HW <= kMax &&  // offsets in one image
         HW <= kMax - k1BP && g.Co * g.Ci <= kMax && g.N * tilesP <= kMax && round_up(g.Co, k1BC) / k1BC <= 65535;
}

void int8_conv_1x1_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale, const at::Tensor& bias,
                        const ConvGeom& g, const Int8ConvEpilogue& e, at::Tensor& out) {
  const int64_t HW = g.H * g.W, Cp = round_up(g.Ci, 32), tilesP = (HW + k1BP - 1) / k1BP;
  Conv1x1Args a{};
  a.x = x.const_data_ptr<int8_t>();
  a.w = w.const_data_ptr<int8_t>();
  a.w_scale = w_scale.const_data_ptr<float>();
  a.bias = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  a.out = out.mutable_data_ptr();
  a.Ci = static_cast<int>(g.Ci);
  a.Co = static_cast<int>(g.Co);
  a.HW = static_cast<int>(HW);
  a.nk = static_cast<int>(Cp / 32);
  a.tilesP = static_cast<int>(tilesP);
  a.x_zp = e.x_zp;
  a.x_scale = e.x_scale;
  a.inv_out = e.inv_out;
  a.out_zp = static_cast<float>(e.out_zp);
  a.act = e.act;
  a.w4 = g.Ci % 4 == 0 && reinterpret_cast<uintptr_t>(a.w) % 4 == 0;
  const bool vec = HW % 16 == 0 && reinterpret_cast<uintptr_t>(a.x) % 16 == 0 && reinterpret_cast<uintptr_t>(a.out) % 16 == 0;
  const dim3 grid(static_cast<unsigned>(g.N * tilesP), static_cast<unsigned>(round_up(g.Co, k1BC) / k1BC));
  const int smem = conv1x1_smem_bytes(static_cast<int>(Cp));
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto launch = [&](auto kernel) { kernel<<<grid, kThreads, smem, stream>>>(a); };
  if (vec)
    e.int8_out ? launch(int8_conv1x1_kernel<true, true>) : launch(int8_conv1x1_kernel<true, false>);
  else
    e.int8_out ? launch(int8_conv1x1_kernel<false, true>) : launch(int8_conv1x1_kernel<false, false>);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool int8_conv_3x3_supported(const ConvGeom& g, int device) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (g.kh != 3 || g.kw != 3 || g.sh != 1 || g.sw != 1 || g.ph != 1 || g.pw != 1 || g.dh != 1 || g.dw != 1) return false;
  const int64_t Cp = round_up(g.Ci, 32), Co_pad = round_up(g.Co, k3BC), Kpad = round_up(9 * Cp, kBK);
  const int64_t tiles = ((g.H + k3TH - 1) / k3TH) * ((g.W + k3TW - 1) / k3TW);
  for (int64_t v : {g.H, g.W, g.Ci, g.Co})
    if (v >= (int64_t(1) << 28)) return false;  // y0 - 1 + row, x0 - 8 + 8 ck, Cp etc. stay far from overflow
  return g.Ci >= 1 && compute_major(device) >= 8 && Cp * g.H * g.W <= kMax &&  // (c H + iy) W + ix in one image
         g.N * tiles <= kMax && Co_pad * Kpad <= kMax && Co_pad / k3BC <= 65535;
}

void int8_conv_3x3_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale, const at::Tensor& bias,
                        const ConvGeom& g, const Int8ConvEpilogue& e, at::Tensor& out) {
  const int64_t Cp = round_up(g.Ci, 32), Co_pad = round_up(g.Co, k3BC), Kpad = round_up(9 * Cp, kBK);
  const int64_t wp_bytes = round_up(Co_pad * Kpad, 256);
  at::Tensor ws = at::empty({wp_bytes + 3 * Co_pad * 4}, x.options().dtype(at::kByte));
  auto* base = ws.mutable_data_ptr<uint8_t>();
  auto stream = c10::cuda::getCurrentCUDAStream();

  // the prep kernel's weight blocks only (nT = 0): the repack, row sums and per-channel constants
  PrepArgs pa = weight_prep_args(w, w_scale, bias, g, e, Cp, Kpad, Co_pad, reinterpret_cast<int8_t*>(base),
                                 base + wp_bytes);
  pa.nT = 0;
  int8_conv_prep_kernel<<<static_cast<unsigned>(Co_pad / (kPrepThreads / 32)), kPrepThreads, 0, stream>>>(pa);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  Conv3x3Args a{};
  a.x = x.const_data_ptr<int8_t>();
  a.wp = pa.wp;
  a.corr = pa.corr;
  a.mult = pa.mult;
  a.bias = pa.bias_out;
  a.out = out.mutable_data_ptr();
  a.Ci = static_cast<int>(g.Ci);
  a.Co = static_cast<int>(g.Co);
  a.H = static_cast<int>(g.H);
  a.W = static_cast<int>(g.W);
  a.Cp = static_cast<int>(Cp);
  a.Kpad = static_cast<int>(Kpad);
  a.nk = static_cast<int>(Cp / 32);
  a.tilesH = static_cast<int>((g.H + k3TH - 1) / k3TH);
  a.tilesW = static_cast<int>((g.W + k3TW - 1) / k3TW);
  a.zp4 = static_cast<uint32_t>(static_cast<uint8_t>(static_cast<int8_t>(e.x_zp))) * 0x01010101u;
  a.inv_out = e.inv_out;
  a.out_zp = static_cast<float>(e.out_zp);
  a.act = e.act;
  const bool vec = g.W % 16 == 0 && reinterpret_cast<uintptr_t>(a.x) % 16 == 0 && reinterpret_cast<uintptr_t>(a.out) % 16 == 0;
  const dim3 grid(static_cast<unsigned>(g.N * a.tilesH * a.tilesW), static_cast<unsigned>(Co_pad / k3BC));
  const int device = x.get_device();
  // 55.8 KB of dynamic shared memory needs the opt-in, once per device and instantiation (not a
  // stream operation: fine under graph capture too)
  static std::atomic<uint32_t> opted[64][4];
  auto launch = [&](auto kernel, int variant) {
    if (device >= 0 && device < 64 && !opted[device][variant].load(std::memory_order_relaxed)) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, k3SmemBytes));
      opted[device][variant].store(1, std::memory_order_relaxed);
    }
    kernel<<<grid, kThreads, k3SmemBytes, stream>>>(a);
  };
  if (vec)
    e.int8_out ? launch(int8_conv3x3_kernel<true, true>, 0) : launch(int8_conv3x3_kernel<true, false>, 1);
  else
    e.int8_out ? launch(int8_conv3x3_kernel<false, true>, 2) : launch(int8_conv3x3_kernel<false, false>, 3);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace phasor::qpde
