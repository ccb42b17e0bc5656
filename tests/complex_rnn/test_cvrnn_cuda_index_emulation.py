"""Host emulation of the index math of the cv-RNN cluster kernels (csrc/complex_rnn/complex_rnn_cuda.cu),
for checks without a GPU: row ownership, which block's T copy receives which rows (and that the
column filter reads only rows pushed in the same step), the lane mapping of reduce_products, and
the low-rank stages' association, each against a plain loop. Runs on the CPU:

    .venv/bin/python -m pytest -q tests/complex_rnn/test_cvrnn_cuda_index_emulation.py

The emulation mirrors the kernel's loops one to one (block by block, thread index by thread index)
in float64; the sums are checked against torch's products, not the float32 rounding.
"""
import math

import pytest
import torch

from phasor.complex_rnn import reference as ref

THREADS = 256  # kThreadsC


def row_begin(k, H, C):
    return k * H // C


def band_radius(N, sigma):  # complex_rnn.h, float
    r = math.ceil(N * sigma * math.sqrt(2.0 * math.log(1.0 / 1e-12)))
    return N - 1 if r >= N - 1 else r


def taps(r, N, sigma):
    return [math.exp(-((k - r) / N) ** 2 / (2 * sigma * sigma)) for k in range(2 * r + 1)]


def nt_max(H, rh, C):
    return max(min(H, row_begin(d + 1, H, C) + rh) - max(0, row_begin(d, H, C) - rh) for d in range(C))


def emulate_band_step(X, sigma, C):
    """One band step's coupling sum Y = G_r X G_c^T as the cluster kernel computes it: per block its
    own rows' row filter pushed into each destination's local T (rows t0..), then the column filter
    from the local T only. Unwritten T entries are NaN, so a read of a row not pushed shows."""
    H, W = X.shape
    rh, rw = band_radius(H, sigma), band_radius(W, sigma)
    gh, gw = taps(rh, H, sigma), taps(rw, W, sigma)
    nt = nt_max(H, rh, C)
    T = [[[math.nan] * (nt * W) for _ in range(2)] for _ in range(C)]  # per block: its T (2 planes)
    own_count = [0] * H
    for rank in range(C):
        r0, r1 = row_begin(rank, H, C), row_begin(rank + 1, H, C)
        n_own = (r1 - r0) * W
        for h in range(r0, r1):
            own_count[h] += 1
        for tid in range(THREADS):
            for j in range(tid, n_own, THREADS):
                i, w = divmod(j, W)
                h = r0 + i
                q0, q1 = max(0, w - rw), min(W - 1, w + rw)
                ar = ai = 0.0
                for q in range(q0, q1 + 1):
                    ar += gw[rw - w + q] * X[h, q].real
                    ai += gw[rw - w + q] * X[h, q].imag
                for d in range(C):
                    s0, s1 = max(0, row_begin(d, H, C) - rh), min(H, row_begin(d + 1, H, C) + rh)
                    if s0 <= h < s1:
                        assert (h - s0) * W + w < nt * W
                        T[d][0][(h - s0) * W + w] = ar
                        T[d][1][(h - s0) * W + w] = ai
    assert own_count == [1] * H
    Y = torch.full((H, W), complex(math.nan, math.nan), dtype=torch.complex128)
    for rank in range(C):
        r0, r1 = row_begin(rank, H, C), row_begin(rank + 1, H, C)
        t0 = max(0, r0 - rh)
        for j in range((r1 - r0) * W):
            i, w = divmod(j, W)
            h = r0 + i
            p0, p1 = max(0, h - rh), min(H - 1, h + rh)
            ar = ai = 0.0
            for k, q in enumerate(range(p0, p1 + 1)):
                idx = (p0 - t0) * W + w + k * W
                assert 0 <= idx < nt * W
                ar += gh[rh - h + q] * T[rank][0][idx]
                ai += gh[rh - h + q] * T[rank][1][idx]
            assert not math.isnan(ar) and not math.isnan(ai), f"block {rank} read an unpushed T row for ({h}, {w})"
            assert math.isnan(Y[h, w].real)
            Y[h, w] = complex(ar, ai)
    return Y


@pytest.mark.parametrize("H,W,sigma", [(17, 23, 0.0313), (17, 23, 0.3), (9, 12, 0.9), (20, 7, 0.1), (3, 5, 0.2)])
@pytest.mark.parametrize("C", [1, 2, 3, 8])
def test_band_ownership_and_pushes(H, W, sigma, C):
    if C > H:
        pytest.skip("at most one block per row")
    g = torch.Generator().manual_seed(H * W + C)
    X = torch.randn(H, W, dtype=torch.complex128, generator=g)
    got = emulate_band_step(X, sigma, C)
    want = ref.gaussian_axis(H, sigma).to(X.dtype) @ X @ ref.gaussian_axis(W, sigma).to(X.dtype).T
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)  # taps below 1e-12 are dropped


def reduce_products(M, N, K, term):
    """The kernel's reduce_products: per warp, 32 / S outputs of S lanes each; lane sub sums
    k = sub, sub + S, ...; then the xor shuffle tree. Returns the outputs and how often each
    (m, n, k) term was summed."""
    S = 32
    while S > 1 and (S >> 1) >= K:
        S >>= 1
    while S > 1 and M * N * S > THREADS:
        S >>= 1
    per_warp, nwarps = 32 // S, THREADS // 32
    out = {}
    seen = {}
    for warp in range(nwarps):
        base = warp * per_warp
        while base < M * N:
            lanes = []
            for lane in range(32):
                o, sub = base + lane // S, lane & (S - 1)
                acc = 0.0
                if o < M * N:
                    m, n = divmod(o, N)
                    for k in range(sub, K, S):
                        acc += term(m, n, k)
                        seen[(m, n, k)] = seen.get((m, n, k), 0) + 1
                lanes.append(acc)
            off = S >> 1
            while off > 0:
                lanes = [lanes[la] + lanes[la ^ off] for la in range(32)]
                off >>= 1
            for lane in range(32):
                o, sub = base + lane // S, lane & (S - 1)
                if o < M * N and sub == 0:
                    assert o not in out
                    out[o] = lanes[lane]
            base += nwarps * per_warp
    return out, seen


@pytest.mark.parametrize("M,N,K", [(8, 6, 64), (1, 1, 1), (3, 5, 7), (90, 6, 97), (6, 6, 8), (45, 14, 33)])
def test_reduce_products_covers_every_term_once(M, N, K):
    g = torch.Generator().manual_seed(M * 1000 + N * 10 + K)
    A, B = torch.randn(M, K, dtype=torch.float64, generator=g), torch.randn(K, N, dtype=torch.float64, generator=g)
    out, seen = reduce_products(M, N, K, lambda m, n, k: A[m, k].item() * B[k, n].item())
    assert sorted(out) == list(range(M * N))
    assert seen == {(m, n, k): 1 for m in range(M) for n in range(N) for k in range(K)}
    got = torch.tensor([out[o] for o in range(M * N)], dtype=torch.float64).view(M, N)
    assert torch.allclose(got, A @ B, rtol=1e-12, atol=1e-12)


def axis_factor(n, sigma):
    lam, V = torch.linalg.eigh(ref.gaussian_axis(n, sigma, torch.float64))
    keep = lam > 1e-9 * lam[-1]
    return V[:, keep] * lam[keep].sqrt()


@pytest.mark.parametrize("H,W", [(17, 23), (32, 32), (24, 37), (9, 5)])
@pytest.mark.parametrize("C", [1, 3, 8])
def test_low_rank_stages(H, W, C):
    """P = X_own U_c, Z_b = U_r[own]^T P, Z = sum_b Z_b in rank order, E = U_r[own] Z, Y = E U_c^T per
    block, each through reduce_products (D per pixel), against G_r X G_c^T."""
    sigma = 0.9
    Ur, Uc = axis_factor(H, sigma), axis_factor(W, sigma)
    rr, rc = Ur.shape[1], Uc.shape[1]
    g = torch.Generator().manual_seed(H + W + C)
    X = torch.randn(H, W, dtype=torch.complex128, generator=g)
    Zb = []
    for rank in range(C):
        r0, r1 = row_begin(rank, H, C), row_begin(rank + 1, H, C)
        nr = r1 - r0
        P, _ = reduce_products(nr, rc, W, lambda i, q, w: Uc[w, q].item() * X[r0 + i, w].item())
        Pm = torch.tensor([P[o] for o in range(nr * rc)]).view(nr, rc)
        Z, _ = reduce_products(rr, rc, nr, lambda a, q, i: Ur[r0 + i, a].item() * Pm[i, q].item())
        Zb.append(torch.tensor([Z[o] for o in range(rr * rc)]).view(rr, rc))
    Zs = Zb[0] * 0
    for z in Zb:
        Zs = Zs + z
    Y = torch.full((H, W), complex(math.nan, math.nan), dtype=torch.complex128)
    for rank in range(C):
        r0, r1 = row_begin(rank, H, C), row_begin(rank + 1, H, C)
        nr = r1 - r0
        E, _ = reduce_products(nr, rc, rr, lambda i, q, a: Ur[r0 + i, a].item() * Zs[a, q].item())
        Em = torch.tensor([E[o] for o in range(nr * rc)]).view(nr, rc)
        for j in range(nr * W):
            i, w = divmod(j, W)
            assert math.isnan(Y[r0 + i, w].real)
            Y[r0 + i, w] = sum(Em[i, q].item() * Uc[w, q].item() for q in range(rc))
    want = ref.gaussian_axis(H, sigma).to(X.dtype) @ X @ ref.gaussian_axis(W, sigma).to(X.dtype).T
    assert torch.allclose(Y, want, rtol=1e-7, atol=1e-7 * want.abs().max().item())
