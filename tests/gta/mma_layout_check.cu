// Host-only check of the tensor-core GTA forward's index logic (no GPU needed):
//  1. ldmatrix.x4 (.trans) and mma.m16n8k16 are emulated from the PTX ISA's fragment layouts; the kernel's
//     lane addresses (mma_layout::q_lane / k_lane / v_lane) and its C -> A repacking of P must then give
//     S = Q K^T and O = S V exactly (small integers: every sum is exact in float).
//  2. dev::apply_chunk4 (4 channels at a time, K and V together) equals dev::apply_channel channel by
//     channel, for several splits, transposes and signs.
// Build and run (CPU machine):
//   nvcc -std=c++20 -I csrc -isystem $(python -c 'import torch,os;print(os.path.dirname(torch.__file__))')/include \
//     -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -x cu tests/gta/mma_layout_check.cu -o /tmp/mma_layout_check && /tmp/mma_layout_check
#include "gta/gta_cuda_geometry.cuh"
#include "gta/gta_cuda_mma.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

using namespace phasor::gta;

namespace {

int failures = 0;
void expect(bool ok, const char* what, int a = 0, int b = 0) {
  if (!ok && failures++ < 20) std::printf("FAIL: %s (%d, %d)\n", what, a, b);
}

// A register: two 16-bit elements, kept as floats here (values are small integers, exact in fp16).
struct Reg {
  float e[2];
};

// ldmatrix.x4: lane 8m + r gives the address of row r of matrix m (8 consecutive elements).
// Non-trans: register m of lane L = matrix m [L/4][2(L%4) + e]; trans: matrix m [2(L%4) + e][L/4].
void ldmatrix_x4(const std::vector<float>& smem, const int addr[32], bool trans, Reg out[32][4]) {
  for (int m = 0; m < 4; ++m)
    for (int L = 0; L < 32; ++L)
      for (int e = 0; e < 2; ++e) {
        const int row = trans ? 2 * (L % 4) + e : L / 4;
        const int col = trans ? L / 4 : 2 * (L % 4) + e;
        out[L][m].e[e] = smem[addr[8 * m + row] + col];
      }
}

// mma.m16n8k16: A (row) a0..a3 = A[g][2t+e], A[g+8][2t+e], A[g][2t+8+e], A[g+8][2t+8+e];
// B (col) b0, b1 = B[2t+e][g], B[2t+8+e][g]; C/D c = C[g][2t+e] (c0, c1), C[g+8][2t+e] (c2, c3).
void mma(float c[32][4], const Reg a[32][4], const Reg b[32][2]) {
  float A[16][16], B[16][8], C[16][8];
  for (int L = 0; L < 32; ++L) {
    const int g = L / 4, t = L % 4;
    for (int e = 0; e < 2; ++e) {
      A[g][2 * t + e] = a[L][0].e[e];
      A[g + 8][2 * t + e] = a[L][1].e[e];
      A[g][2 * t + 8 + e] = a[L][2].e[e];
      A[g + 8][2 * t + 8 + e] = a[L][3].e[e];
      B[2 * t + e][g] = b[L][0].e[e];
      B[2 * t + 8 + e][g] = b[L][1].e[e];
      C[g][2 * t + e] = c[L][e];
      C[g + 8][2 * t + e] = c[L][2 + e];
    }
  }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j)
      for (int k = 0; k < 16; ++k) C[i][j] += A[i][k] * B[k][j];
  for (int L = 0; L < 32; ++L) {
    const int g = L / 4, t = L % 4;
    for (int e = 0; e < 2; ++e) c[L][e] = C[g][2 * t + e], c[L][2 + e] = C[g + 8][2 * t + e];
  }
}

// One warp's S = Q K^T and O = S V over a 64-key tile, written as in gta_fwd_mma_kernel.
template <int D>
void check_warp_tile(std::mt19937& rng) {
  constexpr int kLd = D + 8, kKS = D / 16, kBN = 64, warp = 2;
  std::uniform_int_distribution<int> u(-3, 3);
  std::vector<float> sQ(64 * kLd, 99.f), sK(kBN * kLd, 99.f), sV(kBN * kLd, 99.f);  // 99 in the padding
  for (int r = 0; r < 64; ++r)
    for (int c = 0; c < D; ++c) sQ[r * kLd + c] = float(u(rng));
  for (int r = 0; r < kBN; ++r)
    for (int c = 0; c < D; ++c) sK[r * kLd + c] = float(u(rng)), sV[r * kLd + c] = float(u(rng));

  Reg qa[kKS][32][4];
  for (int ks = 0; ks < kKS; ++ks) {
    int addr[32];
    for (int L = 0; L < 32; ++L) addr[L] = warp * 16 * kLd + mma_layout::q_lane(L, kLd) + ks * 16;
    ldmatrix_x4(sQ, addr, false, qa[ks]);
  }
  static float s[8][32][4];
  for (auto& n : s)
    for (auto& l : n) l[0] = l[1] = l[2] = l[3] = 0.f;
  for (int ks = 0; ks < kKS; ++ks)
    for (int np = 0; np < 4; ++np) {
      int addr[32];
      for (int L = 0; L < 32; ++L) addr[L] = np * 16 * kLd + ks * 16 + mma_layout::k_lane(L, kLd);
      Reg r[32][4], b01[32][2], b23[32][2];
      ldmatrix_x4(sK, addr, false, r);
      for (int L = 0; L < 32; ++L) b01[L][0] = r[L][0], b01[L][1] = r[L][1], b23[L][0] = r[L][2], b23[L][1] = r[L][3];
      mma(s[2 * np], qa[ks], b01);
      mma(s[2 * np + 1], qa[ks], b23);
    }
  float S[16][kBN] = {};
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < kBN; ++j)
      for (int c = 0; c < D; ++c) S[i][j] += sQ[(warp * 16 + i) * kLd + c] * sK[j * kLd + c];
  for (int n = 0; n < 8; ++n)
    for (int L = 0; L < 32; ++L) {
      const int g = L / 4, t = L % 4;
      for (int e = 0; e < 2; ++e) {
        expect(s[n][L][e] == S[g][n * 8 + 2 * t + e], "S fragment", n, L);
        expect(s[n][L][2 + e] == S[g + 8][n * 8 + 2 * t + e], "S fragment (row + 8)", n, L);
      }
    }

  static float o[2 * kKS][32][4];
  for (auto& n : o)
    for (auto& l : n) l[0] = l[1] = l[2] = l[3] = 0.f;
  for (int kk = 0; kk < 4; ++kk) {
    Reg pa[32][4];  // the kernel's pa = {s[2kk][0,1], s[2kk][2,3], s[2kk+1][0,1], s[2kk+1][2,3]}
    for (int L = 0; L < 32; ++L) {
      pa[L][0] = Reg{{s[2 * kk][L][0], s[2 * kk][L][1]}};
      pa[L][1] = Reg{{s[2 * kk][L][2], s[2 * kk][L][3]}};
      pa[L][2] = Reg{{s[2 * kk + 1][L][0], s[2 * kk + 1][L][1]}};
      pa[L][3] = Reg{{s[2 * kk + 1][L][2], s[2 * kk + 1][L][3]}};
    }
    for (int dp = 0; dp < kKS; ++dp) {
      int addr[32];
      for (int L = 0; L < 32; ++L) addr[L] = kk * 16 * kLd + dp * 16 + mma_layout::v_lane(L, kLd);
      Reg r[32][4], b01[32][2], b23[32][2];
      ldmatrix_x4(sV, addr, true, r);
      for (int L = 0; L < 32; ++L) b01[L][0] = r[L][0], b01[L][1] = r[L][1], b23[L][0] = r[L][2], b23[L][1] = r[L][3];
      mma(o[2 * dp], pa, b01);
      mma(o[2 * dp + 1], pa, b23);
    }
  }
  for (int n = 0; n < 2 * kKS; ++n)
    for (int L = 0; L < 32; ++L) {
      const int g = L / 4, t = L % 4;
      for (int e = 0; e < 2; ++e)
        for (int h = 0; h < 2; ++h) {
          float want = 0.f;
          const int row = g + 8 * h, col = n * 8 + 2 * t + e;
          for (int j = 0; j < kBN; ++j) want += S[row][j] * sV[j * kLd + col];
          expect(o[n][L][2 * h + e] == want, "O fragment", n, L);
        }
    }
  std::printf("fragment check D=%d done\n", D);
}

void check_chunks(std::mt19937& rng, int triv, int se3, int so3, int so2) {
  std::normal_distribution<float> nd;
  dev::Shape S{};
  S.d = triv + se3 + so3 + so2, S.triv = triv, S.se3 = se3, S.so3 = so3, S.so2 = so2;
  std::vector<float> m4(16), m8(64), pos(2), freqs(so2 / 4 + 1), x0(S.d), x1(S.d);
  for (auto* v : {&m4, &m8, &pos, &freqs, &x0, &x1})
    for (auto& e : *v) e = 3.f * nd(rng);
  for (int tr = 0; tr < 2; ++tr)
    for (float sign : {1.f, -1.f}) {
      const dev::TokenOp op{m4.data(), m8.data(), pos.data(), tr == 1, sign};
      auto l0 = [&](int c) { return dev::F4{{x0[c], x0[c + 1], x0[c + 2], x0[c + 3]}}; };
      auto l1 = [&](int c) { return dev::F4{{x1[c], x1[c + 1], x1[c + 2], x1[c + 3]}}; };
      for (int c0 = 0; c0 < S.d; c0 += 4) {
        dev::F4 y0, y1;
        dev::apply_chunk4(S, freqs.data(), op, c0, l0, y0, l1, y1, true);
        for (int r = 0; r < 4; ++r) {
          const float w0 = dev::apply_channel(S, freqs.data(), op, [&](int c) { return x0[c]; }, c0 + r);
          const float w1 = dev::apply_channel(S, freqs.data(), op, [&](int c) { return x1[c]; }, c0 + r);
          const float tol = 1e-5f * (1.f + std::fabs(w0) + std::fabs(w1)) * 50.f;
          expect(std::fabs(y0.v[r] - w0) <= tol, "apply_chunk4 vs apply_channel (x0)", c0 + r, tr);
          expect(std::fabs(y1.v[r] - w1) <= tol, "apply_chunk4 vs apply_channel (x1)", c0 + r, tr);
        }
      }
    }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  check_warp_tile<32>(rng);
  check_warp_tile<64>(rng);
  check_warp_tile<96>(rng);
  check_warp_tile<128>(rng);
  const int splits[][4] = {{0, 32, 0, 32}, {4, 8, 8, 12}, {8, 0, 16, 8}, {0, 16, 8, 40}, {4, 4, 24, 0},
                           {32, 0, 0, 0},  {0, 0, 0, 16}, {12, 20, 8, 24}, {0, 4, 8, 20}};
  for (auto& sp : splits) check_chunks(rng, sp[0], sp[1], sp[2], sp[3]);
  std::printf("geometry chunk check done\n");
  if (failures) {
    std::printf("%d FAILURES\n", failures);
    return 1;
  }
  std::printf("all checks passed\n");
  return 0;
}
