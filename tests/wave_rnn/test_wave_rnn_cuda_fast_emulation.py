"""Host emulation of the index math of csrc/wave_rnn/wave_rnn_cuda_fast.cuh (the register-tiled
wave-RNN CUDA kernels), for checks without a GPU.

Run: .venv/bin/python -m pytest -q tests/wave_rnn/test_wave_rnn_cuda_fast_emulation.py (about 5 s; part of
the CPU suite), or .venv/bin/python tests/wave_rnn/test_wave_rnn_cuda_fast_emulation.py (prints each case).

It replays the kernels thread by thread on flat "shared memory" arrays with the same offsets as the
CUDA code (geometry as plan_fast in wave_rnn_cuda.cu, padded rows with kP0 = 4, tiles of 4
positions, thread (o = tid % c, jg = tid / c), the kStages-deep input ring filled by cp.async with
its commit / wait_group counting; the backward at c > 16 as two teams of 128 threads, the transpose
team (delta, r, grad_h0) and the weight team (h_{t-1} rows, gW, grad_bias)), and checks:
  - every barrier interval is race-free: no location written by two threads, none read by one
    thread and written by another (an in-flight cp.async counts as a write from its issue until the
    barrier after the wait that completes it), and no read of a slot whose copy has not landed;
  - vector accesses are aligned as V4<T> needs;
  - every output is produced exactly once, and the results (H, grad_u, grad_W, grad_bias, grad_h0)
    equal a plain float64 loop (the reference op and its autograd).
Keep it in step with the .cuh when the kernel's mapping changes.
"""
import itertools
import math

import numpy as np
import torch

P0, RJ, STAGES, NT = 4, 4, 5, 256


def team_threads(c, backward):
    """bwd_team_threads(CM): the backward at c > 16 runs CM = 32, split into two teams."""
    return NT // 2 if backward and c > 16 else NT


def roles(tid, c, JG, team):
    """(o, jg, transpose-team, weight-team) of thread tid, as the backward kernel derives them."""
    lt = tid % team
    o, jg = lt % c, lt // c
    active = jg < JG
    return o, jg, active and (team == NT or tid < team), active and (team == NT or tid >= team)


def odd_multiple(lo, unit):
    x = -(-lo // unit)
    if x % 2 == 0:
        x += 1
    return x * unit


def plan(c, n, sa, st, backward):
    """Geometry as plan_fast (sa = sizeof(A), st = sizeof(T))."""
    ntiles = -(-n // RJ)
    return dict(ntiles=ntiles, JG=team_threads(c, backward) // c, ld=odd_multiple(P0 + RJ * ntiles + 1, 16 // sa),
                ldu=odd_multiple(RJ * ntiles, 16 // st), ldr=odd_multiple(RJ * ntiles, 16 // sa), sa=sa, st=st)


def smem_bytes(g, c, backward):
    state = (4 * c * g["ld"] + c * g["ldr"] if backward else 2 * c * g["ld"]) * g["sa"]
    return state + STAGES * (2 if backward else 1) * c * g["ldu"] * g["st"]


class Smem:
    """Flat shared memory (one float64 array per region) with per-interval access tracking."""

    def __init__(self, sizes):
        self.mem = {k: np.zeros(v) for k, v in sizes.items()}
        self.landed = {k: np.ones(v, dtype=bool) for k, v in sizes.items()}
        self.inflight = []  # (tid, group, region, index)
        self.new_interval()

    def new_interval(self):
        self.writes, self.reads = {}, {}

    def write(self, tid, region, i, v):
        key = (region, i)
        assert 0 <= i < len(self.mem[region]), key
        assert self.writes.get(key, tid) == tid, f"two writers of {key}"
        self.writes[key] = tid
        self.mem[region][i] = v

    def read(self, tid, region, i):
        key = (region, i)
        assert 0 <= i < len(self.mem[region]), key
        assert self.landed[region][i], f"read of {key} before its copy landed"
        self.reads.setdefault(key, set()).add(tid)
        return self.mem[region][i]

    def cp_async(self, tid, group, region, i, v):
        self.write(tid, region, i, v)
        self.landed[region][i] = False
        self.inflight.append((tid, group, region, i))

    def wait_group(self, tid, committed, pending):
        """cp.async.wait_group `pending` by thread tid, `committed` groups issued so far: its groups
        older than the newest `pending` are complete (visible to others after the next barrier)."""
        done = committed - pending
        self.completing = getattr(self, "completing", [])
        keep = []
        for rec in self.inflight:
            (keep if rec[0] != tid or rec[1] >= done else self.completing).append(rec)
        self.inflight = keep

    def barrier(self):
        for key, w in self.writes.items():
            others = self.reads.get(key, set()) - {w}
            assert not others, f"race on {key}: written by {w}, read by {sorted(others)}"
        self.new_interval()
        for _, _, region, i in getattr(self, "completing", []):
            self.landed[region][i] = True
        self.completing = []
        # copies still in flight keep counting as writes in the next interval
        for tid, _, region, i in self.inflight:
            self.writes[(region, i)] = tid


def aligned(index, elem_bytes):
    assert (index * elem_bytes) % min(16, 4 * elem_bytes) == 0, "misaligned V4 access"


def stage_rows(sm, g, region, base, src, c, n, tid, group):
    """stage_rows: thread tid's copies of c x n rows (src flat) into region at base, row stride ldu."""
    st, ldu = g["st"], g["ldu"]
    if (n * st) % 16 == 0:  # vec16 mode (sources aligned in the emulation)
        E = 16 // st
        cpr = n // E
        for q in range(tid, c * cpr, NT):
            o, r = divmod(q, cpr)
            aligned(base + o * ldu + r * E, st)
            for x in range(E):
                sm.cp_async(tid, group, region, base + o * ldu + r * E + x, src[o * n + r * E + x])
    else:  # element copies (async for 4/8-byte T, synchronous for 16-bit: same index map)
        for e in range(tid, c * n, NT):
            o, j = divmod(e, n)
            sm.cp_async(tid, group, region, base + o * ldu + j, src[e])


def write_rows(sm, g, region, base, c, n, tid, out, produced):
    ld = g["ld"]
    vec = n % 4 == 0
    items = [(q // (n // 4), (q % (n // 4)) * 4, 4) for q in range(tid, c * (n // 4), NT)] if vec else \
        [(e // n, e % n, 1) for e in range(tid, c * n, NT)]
    for o, j, w in items:
        if w == 4:
            aligned(base + o * ld + P0 + j, g["sa"])
        for r in range(w):
            out[o * n + j + r] = sm.read(tid, region, base + o * ld + P0 + j + r)
            produced[o * n + j + r] += 1


def store_tile(sm, tid, region, base, j0, n, h):
    for r in range(4):
        if j0 + r < n:
            sm.write(tid, region, base + P0 + j0 + r, h[r])
    if j0 + 4 <= n:
        pass  # the kernel stores these four as one aligned V4 (checked by the caller)
    if j0 == 0:
        sm.write(tid, region, base + P0 + n, h[0])
    for r in range(4):
        if j0 + r == n - 1:
            sm.write(tid, region, base + P0 - 1, h[r])


def load_window(sm, g, tid, region, base, j0):
    aligned(base + P0 + j0, g["sa"])
    return [sm.read(tid, region, base + P0 - 1 + j0 + q) for q in range(6)]


ACTS = {"relu": lambda a: max(a, 0.0), "tanh": math.tanh, "identity": lambda a: a}
DACTS = {"relu": lambda h: 1.0 if h > 0 else 0.0, "tanh": lambda h: 1.0 - h * h, "identity": lambda h: 1.0}


def emulate_forward(u, W, bias, h0, act, return_all, sa=4, st=4):
    T, B, c, n = u.shape
    g = plan(c, n, sa, st, False)
    ld, ldu, ntiles, JG = g["ld"], g["ldu"], g["ntiles"], g["JG"]
    rows, slot = c * ld, c * ldu
    out = np.zeros((T, B, c, n)) if return_all else np.zeros((B, c, n))
    produced = np.zeros(out.shape, dtype=int)
    for b in range(B):
        sm = Smem({"st": 2 * rows, "ring": STAGES * slot})
        committed = 0
        for e in range(STAGES - 1):
            for tid in range(NT):
                if e < T:
                    stage_rows(sm, g, "ring", e * slot, u[e, b].ravel(), c, n, tid, committed)
            committed += 1
        for tid in range(NT):
            for e in range(tid, c * n, NT):
                o, j = divmod(e, n)
                v = h0[b, o, j]
                sm.write(tid, "st", o * ld + P0 + j, v)
                if j == n - 1:
                    sm.write(tid, "st", o * ld + P0 - 1, v)
                if j == 0:
                    sm.write(tid, "st", o * ld + P0 + n, v)
            sm.wait_group(tid, committed, STAGES - 2)
        sm.barrier()
        for t in range(T):
            cur, nxt = (t & 1) * rows, ((t + 1) & 1) * rows
            e = t + STAGES - 1
            for tid in range(NT):
                if e < T:
                    stage_rows(sm, g, "ring", (e % STAGES) * slot, u[e, b].ravel(), c, n, tid, committed)
            committed += 1
            for tid in range(NT):
                o, jg = tid % c, tid // c
                if jg < JG:
                    for jt in range(jg, ntiles, JG):
                        j0 = jt * RJ
                        acc = [0.0] * 4
                        for i in range(c):
                            win = load_window(sm, g, tid, "st", cur + i * ld, j0)
                            for k in range(3):
                                for r in range(4):
                                    acc[r] += W[o, i, k] * win[r + k]
                        ub = (t % STAGES) * slot + o * ldu + j0
                        aligned(ub, st)
                        uv = [sm.read(tid, "ring", ub + r) for r in range(4)]
                        h = [ACTS[act](acc[r] + bias[o] + uv[r]) for r in range(4)]
                        if j0 + 4 <= n:
                            aligned(nxt + o * ld + P0 + j0, sa)
                        store_tile(sm, tid, "st", nxt + o * ld, j0, n, h)
                if return_all and t > 0:
                    write_rows(sm, g, "st", cur, c, n, tid, out[t - 1, b].reshape(-1), produced[t - 1, b].reshape(-1))
                sm.wait_group(tid, committed, STAGES - 2)
            sm.barrier()
        for tid in range(NT):
            dst, pr = (out[T - 1, b], produced[T - 1, b]) if return_all else (out[b], produced[b])
            write_rows(sm, g, "st", (T & 1) * rows, c, n, tid, dst.reshape(-1), pr.reshape(-1))
        sm.barrier()
        assert not sm.inflight
    assert (produced == 1).all(), "an output was not written exactly once"
    return out


def emulate_backward(gH, H, h0, W, act, sa=4, st=4):
    T, B, c, n = H.shape
    g = plan(c, n, sa, st, True)
    ld, ldu, ldr, ntiles, JG = g["ld"], g["ldu"], g["ldr"], g["ntiles"], g["JG"]
    team = team_threads(c, True)
    rows, slot = c * ld, c * ldu
    grad_u = np.zeros((T, B, c, n))
    grad_h0 = np.zeros((B, c, n))
    produced_u = np.zeros(grad_u.shape, dtype=int)
    produced_h0 = np.zeros(grad_h0.shape, dtype=int)
    nw = c * c * 3
    part = np.full((B, nw + c), np.nan)
    for b in range(B):
        sm = Smem({"D": 2 * rows, "Hp": 2 * rows, "rg": c * ldr, "ring": STAGES * 2 * slot})
        committed = 0

        def stage(e, tid, group):
            base = (e % STAGES) * 2 * slot
            if e < T:
                stage_rows(sm, g, "ring", base, gH[T - 1 - e, b].ravel(), c, n, tid, group)
            hsrc = H[T - 1 - e, b] if e < T else h0[b]
            if e <= T:
                stage_rows(sm, g, "ring", base + slot, hsrc.ravel(), c, n, tid, group)

        for e in range(STAGES - 1):
            for tid in range(NT):
                stage(e, tid, committed)
            committed += 1
        for tid in range(NT):
            sm.wait_group(tid, committed, STAGES - 3)
        sm.barrier()
        gw = np.zeros((NT, c, 3))
        gb = np.zeros(NT)
        for s in range(T):
            t = T - 1 - s
            D, Hp = (t & 1) * rows, (t & 1) * rows
            for tid in range(NT):
                stage(s + STAGES - 1, tid, committed)
            committed += 1
            for tid in range(NT):
                o, jg, tr, wg = roles(tid, c, JG, team)
                for jt in range(jg, ntiles, JG) if tr else ():
                    j0 = jt * RJ
                    cb = (s % STAGES) * 2 * slot + o * ldu + j0
                    for x in (cb, cb + slot):
                        aligned(x, st)
                    gv = [sm.read(tid, "ring", cb + r) for r in range(4)]
                    hv = [sm.read(tid, "ring", cb + slot + r) for r in range(4)]
                    rv = [0.0] * 4
                    if s > 0:
                        aligned(o * ldr + j0, sa)
                        rv = [sm.read(tid, "rg", o * ldr + j0 + r) for r in range(4)]
                    d = [(gv[r] + rv[r]) * DACTS[act](hv[r]) if j0 + r < n else 0.0 for r in range(4)]
                    store_tile(sm, tid, "D", D + o * ld, j0, n, d)
                for jt in range(jg, ntiles, JG) if wg else ():
                    j0 = jt * RJ
                    pb = ((s + 1) % STAGES) * 2 * slot + slot + o * ldu + j0
                    aligned(pb, st)
                    pv = [sm.read(tid, "ring", pb + r) for r in range(4)]
                    store_tile(sm, tid, "Hp", Hp + o * ld, j0, n, pv)
                sm.wait_group(tid, committed, STAGES - 3)
            sm.barrier()
            for tid in range(NT):
                o, jg, tr, wg = roles(tid, c, JG, team)
                for jt in range(jg, ntiles, JG) if wg else ():
                    j0 = jt * RJ
                    aligned(D + o * ld + P0 + j0, sa)
                    dv = [sm.read(tid, "D", D + o * ld + P0 + j0 + r) for r in range(4)]
                    d = [dv[r] if j0 + r < n else 0.0 for r in range(4)]
                    gb[tid] += sum(d)
                    for i in range(c):
                        win = load_window(sm, g, tid, "Hp", Hp + i * ld, j0)
                        for k in range(3):
                            for r in range(4):
                                gw[tid, i, k] += d[r] * win[r + k]
                for jt in range(jg, ntiles, JG) if tr else ():
                    j0 = jt * RJ
                    acc = [0.0] * 4
                    for o2 in range(c):
                        win = load_window(sm, g, tid, "D", D + o2 * ld, j0)
                        for kk in range(3):
                            for r in range(4):
                                acc[r] += W[o2, o, 2 - kk] * win[r + kk]
                    if t > 0:
                        aligned(o * ldr + j0, sa)
                        for r in range(4):
                            sm.write(tid, "rg", o * ldr + j0 + r, acc[r])
                    else:
                        for r in range(4):
                            if j0 + r < n:
                                grad_h0[b, o, j0 + r] = acc[r]
                                produced_h0[b, o, j0 + r] += 1
                write_rows(sm, g, "D", D, c, n, tid, grad_u[t, b].reshape(-1), produced_u[t, b].reshape(-1))
            # no barrier: B(s) and A(s + 1) share an interval (checked by the tracker)
        for tid in range(NT):
            sm.wait_group(tid, committed, 0)
        sm.barrier()
        assert not sm.inflight
        # the block's scratch [JG][nw + c] over the state regions, summed in group order
        scratch = np.full((JG, nw + c), np.nan)
        for tid in range(NT):
            o, jg, _, wg = roles(tid, c, JG, team)
            if wg:
                assert np.isnan(scratch[jg, nw + o]), "two weight-team threads own one scratch row"
                scratch[jg, o * c * 3:(o + 1) * c * 3] = gw[tid].ravel()
                scratch[jg, nw + o] = gb[tid]
        assert not np.isnan(scratch).any(), "a scratch column was never written"
        part[b] = scratch.sum(0)
    assert (produced_u == 1).all() and (produced_h0 == 1).all()
    sums = part.sum(0)  # batch_sum_kernel: rows b in order
    return grad_u, sums[:nw].reshape(c, c, 3), sums[nw:], grad_h0


def reference(u, W, bias, h0, act):
    from phasor.wave_rnn import reference as ref
    return ref.wave_rnn_ref(u, W, bias, h0, act, True)


CASES = [  # (T, B, c, n, act)
    (3, 2, 3, 5, "relu"), (2, 1, 1, 1, "tanh"), (2, 1, 2, 2, "identity"), (4, 1, 3, 7, "tanh"),
    (2, 1, 16, 64, "relu"), (2, 1, 4, 65, "tanh"), (7, 2, 5, 8, "relu"), (1, 1, 32, 9, "identity"),
    (2, 1, 1, 1030, "tanh"),  # several tiles per thread
    # backward split into two teams (c > 16): JG = 5 / 4 / 7, partial tiles, several tiles per thread
    (3, 2, 24, 65, "tanh"), (2, 1, 32, 64, "relu"), (2, 1, 17, 6, "identity"),
]


def run_case(T, B, c, n, act, sizes=((4, 4), (8, 8), (4, 2))):
    g = torch.Generator().manual_seed(T * 1000 + c * 10 + n)
    u = torch.randn(T, B, c, n, generator=g, dtype=torch.float64)
    W = torch.randn(c, c, 3, generator=g, dtype=torch.float64) * (0.6 / math.sqrt(3 * c))
    bias = torch.randn(c, generator=g, dtype=torch.float64) * 0.3
    h0 = torch.randn(B, c, n, generator=g, dtype=torch.float64)
    leaves = [x.clone().requires_grad_() for x in (u, W, bias, h0)]
    Href = reference(*leaves, act)
    cot = torch.randn(Href.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(Href, leaves, cot)
    Href = Href.detach().numpy()
    for sa, st in sizes[:1] if c * n > 600 else sizes:  # the big shapes once (pure Python is slow)
        npa = [x.numpy() for x in (u, W, bias, h0)]
        H = emulate_forward(*npa, act, True, sa, st)
        np.testing.assert_allclose(H, Href, rtol=1e-12, atol=1e-12)
        hT = emulate_forward(*npa, act, False, sa, st)
        np.testing.assert_allclose(hT, Href[-1], rtol=1e-12, atol=1e-12)
        gu, gW, gb, gh0 = emulate_backward(cot.numpy(), Href, h0.numpy(), W.numpy(), act, sa, st)
        for x, y in zip((gu, gW, gb, gh0), grads):
            np.testing.assert_allclose(x, y.numpy(), rtol=1e-10, atol=1e-10)


def test_geometry_of_the_benchmark_shape():
    g = plan(16, 64, 4, 4, False)
    assert (g["ld"], g["ldu"], g["ntiles"], g["JG"]) == (76, 68, 16, 16)
    assert smem_bytes(g, 16, False) == 31488  # 31 KB: no opt-in needed
    gb = plan(16, 64, 4, 4, True)
    assert gb["ldr"] == 68 and smem_bytes(gb, 16, True) == 67328  # 66 KB; scratch 16 x 784 x 4 = 50 KB fits in it
    g32 = plan(32, 64, 4, 4, True)  # two teams of 4 tile groups
    assert g32["JG"] == 4 and smem_bytes(g32, 32, True) == 134656  # 132 KB; scratch 4 x 3104 x 4 = 49664 B


def test_emulated_kernels_match_the_reference():
    for case in CASES:
        run_case(*case)


if __name__ == "__main__":
    for case in CASES:
        run_case(*case)
        print("ok", case)
