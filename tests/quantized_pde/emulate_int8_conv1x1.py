"""Thread-level CPU emulation of int8_conv1x1_kernel in csrc/quantized_pde/qpde_int8_conv_cuda.cu (the direct
1x1 path: NCHW X ring with cp.async and its swizzle, resident swizzled weights, ldmatrix.x4 A fragments, LDS.64 +
byte-permute B fragments, mma.m16n8k32 s8 with the PTX ISA fragment semantics, in-block row sums, the register
epilogue and its NCHW stores), run against the CPU op. It mirrors the kernel line by line, so change both together.

Besides the values it checks what a wrong index would not show in the output: every shared-memory read sees the
bytes of the stage it belongs to (slot reuse in the pipeline), no global read or write leaves its tensor, every
output element is written exactly once, vector accesses are aligned, and the cp.async writes, LDS.64 and
ldmatrix phases are free of bank conflicts.
Not a pytest module (about a minute). Run: .venv/bin/python tests/quantized_pde/emulate_int8_conv1x1.py
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emulate_int8_conv_mma import transpose4x4  # noqa: E402  (the prep kernel's helper, shared by both)

k1BP, k1BC, kStages1, kThreads = 128, 64, 4, 128
k1StageBytes = 32 * k1BP
k1RingBytes = kStages1 * k1StageBytes
k1WChunkBytes = k1BC * 32
k1MaxCp = 256
W_TAG = -2  # tag of the weight bytes (X bytes carry their stage)


def rup(v, m):
    return (v + m - 1) // m * m


def smem_bytes(Cp):
    return k1RingBytes + (Cp // 32) * k1WChunkBytes + k1BC * 4


def word(b4):
    return int(b4[0]) | int(b4[1]) << 8 | int(b4[2]) << 16 | int(b4[3]) << 24


def s8(v):
    v &= 255
    return v - 256 if v >= 128 else v


def i32(v):
    return (v + 2**31) % 2**32 - 2**31


def conflict_free(addrs, width):
    """One shared-memory wavefront: accesses of `width` bytes at addrs touch each 4-byte bank once at most."""
    banks = [(a // 4 + i) % 32 for a in addrs for i in range(width // 4)]
    return len(banks) == len(set(banks))


def run_1x1(x, w, ws, bias, xzp, xs, act, int8_out, os_, ozp, vec=None):
    N, Ci, H, W = x.shape
    Co = w.shape[0]
    assert w.shape[1:] == (Ci, 1, 1)
    HW = H * W
    Cp = rup(Ci, 32)
    nk = Cp // 32
    tilesP = (HW + k1BP - 1) // k1BP
    assert 1 <= Ci and Cp <= k1MaxCp
    if vec is None:
        vec = HW % 16 == 0  # the host's choice (torch allocations are 16-byte aligned)
    w4 = Ci % 4 == 0
    xb = x.numpy().astype(np.int8).reshape(-1).view(np.uint8)
    wb = w.numpy().astype(np.int8).reshape(-1).view(np.uint8)
    out = np.full(N * Co * HW, 99 if int8_out else np.nan, np.int8 if int8_out else np.float32)
    written = np.zeros(N * Co * HW, np.int64)
    inv_out = np.float32(1.0 / os_)
    for bx in range(N * tilesP):
        for by in range(rup(Co, k1BC) // k1BC):
            smem = np.full(smem_bytes(Cp), 0x77, np.uint8)
            tag = np.full(smem_bytes(Cp), -1, np.int64)
            n = bx // tilesP
            p0 = (bx - n * tilesP) * k1BP
            co0 = by * k1BC
            ximg = n * Ci * HW

            def load_x(tid, slot, s):
                dsts = []
                for j in range(2):
                    e = tid + kThreads * j
                    row, ch = e >> 3, e & 7
                    dst = slot * k1StageBytes + row * k1BP + ((ch ^ (((row >> 2) & 3) << 1)) << 4)
                    c, p = s * 32 + row, p0 + ch * 16
                    src = ximg + c * HW + p
                    if vec:
                        if c < Ci and p < HW:
                            assert src % 16 == 0 and src + 16 <= len(xb)
                            smem[dst:dst + 16] = xb[src:src + 16]
                        else:
                            smem[dst:dst + 16] = 0
                    else:
                        v = np.zeros(16, np.uint8)
                        if c < Ci:
                            for b in range(16):
                                if p + b < HW:
                                    assert src + b < len(xb)
                                    v[b] = xb[src + b]
                        smem[dst:dst + 16] = v
                    tag[dst:dst + 16] = s
                    dsts.append(dst)
                return dsts

            def load_stage(slot, s):
                d = [load_x(tid, slot, s) for tid in range(kThreads)]
                for j in range(2):  # a quarter warp's 8 chunks: one wavefront
                    for q in range(0, kThreads, 8):
                        assert conflict_free([d[tid][j] for tid in range(q, q + 8)], 16)

            for s in range(kStages1 - 1):
                if s < nk:
                    load_stage(s, s)
            # weights
            words = nk * 8
            wtouch = np.zeros(smem_bytes(Cp), np.int64)
            for tid in range(kThreads):
                for e in range(tid, k1BC * words, kThreads):
                    r = e // words
                    k = (e - r * words) * 4
                    co = co0 + r
                    v = np.zeros(4, np.uint8)
                    if co < Co:
                        wr = co * Ci + k
                        if w4:
                            if k < Ci:
                                assert wr % 4 == 0 and wr + 4 <= len(wb)
                                v[:] = wb[wr:wr + 4]
                        else:
                            for b in range(4):
                                if k + b < Ci:
                                    assert wr + b < len(wb)
                                    v[b] = wb[wr + b]
                    kc, kin = k >> 5, k & 31
                    dst = k1RingBytes + kc * k1WChunkBytes + r * 32 + (((kin >> 4) ^ ((r >> 2) & 1)) << 4) + (kin & 15)
                    smem[dst:dst + 4] = v
                    tag[dst:dst + 4] = W_TAG
                    wtouch[dst:dst + 4] += 1
            assert (wtouch[k1RingBytes:k1RingBytes + nk * k1WChunkBytes] == 1).all()
            assert (wtouch[:k1RingBytes] == 0).all() and (wtouch[k1RingBytes + nk * k1WChunkBytes:] == 0).all()

            acc = np.zeros((kThreads, 2, 8, 4), np.int64)
            lanes = np.arange(32)
            G, T = lanes >> 2, lanes & 3

            def ldsm_x4(addrs, want_tag):
                regs = np.zeros((32, 4, 4), np.uint8)
                for q in range(4):
                    assert all(a % 16 == 0 for a in addrs[8 * q:8 * q + 8])
                    assert conflict_free(addrs[8 * q:8 * q + 8], 16)
                for L in range(32):
                    for q in range(4):
                        a = addrs[8 * q + L // 4] + 4 * (L % 4)
                        assert (tag[a:a + 4] == want_tag).all()
                        regs[L, q] = smem[a:a + 4]
                return regs

            def mma(tids, mt, jj, af, bf):  # af [32][4] words, bf [32][2] words
                A = np.zeros((16, 32), np.int64)
                B = np.zeros((32, 8), np.int64)
                for L in range(32):
                    g, t = L >> 2, L & 3
                    a = [[s8(af[L][r] >> (8 * b)) for b in range(4)] for r in range(4)]
                    bb = [[s8(bf[L][r] >> (8 * b)) for b in range(4)] for r in range(2)]
                    A[g, 4 * t:4 * t + 4] = a[0]
                    A[g + 8, 4 * t:4 * t + 4] = a[1]
                    A[g, 16 + 4 * t:20 + 4 * t] = a[2]
                    A[g + 8, 16 + 4 * t:20 + 4 * t] = a[3]
                    B[4 * t:4 * t + 4, g] = bb[0]
                    B[16 + 4 * t:20 + 4 * t, g] = bb[1]
                C = A @ B
                for L in range(32):
                    g, t = L >> 2, L & 3
                    acc[tids[L], mt, jj] += [C[g, 2 * t], C[g, 2 * t + 1], C[g + 8, 2 * t], C[g + 8, 2 * t + 1]]

            for kt in range(nk):
                pf = kt + kStages1 - 1
                if pf < nk:
                    load_stage(pf % kStages1, pf)
                for warp in range(4):
                    wm, wn = warp >> 1, warp & 1
                    tids = [warp * 32 + L for L in range(32)]
                    xs_ = (kt % kStages1) * k1StageBytes
                    ws_ = k1RingBytes + kt * k1WChunkBytes
                    af = []
                    for mt in range(2):
                        addrs = []
                        for L in range(32):
                            r = wm * 32 + mt * 16 + (L & 15)
                            addrs.append(ws_ + r * 32 + (((L >> 4) ^ ((r >> 2) & 1)) << 4))
                        regs = ldsm_x4(addrs, W_TAG)
                        af.append([[word(regs[L, q]) for q in range(4)] for L in range(32)])
                    bf = [[[0, 0] for _ in range(32)] for _ in range(8)]
                    for hh in range(2):
                        v = [[None] * 4 for _ in range(32)]
                        for i in range(4):
                            addrs = []
                            for L in range(32):
                                g, t = L >> 2, L & 3
                                b_off = 4 * t * k1BP + (((wn * 4 + (g >> 1)) ^ (2 * t)) << 4) + 8 * (g & 1)
                                a = xs_ + b_off + (16 * hh + i) * k1BP
                                assert a % 8 == 0 and (tag[a:a + 8] == kt).all()
                                v[L][i] = (word(smem[a:a + 4]), word(smem[a + 4:a + 8]))
                                addrs.append(a)
                            assert conflict_free(addrs[:16], 8) and conflict_free(addrs[16:], 8)  # LDS.64: half warps
                        for L in range(32):
                            lo = transpose4x4(*[v[L][i][0] for i in range(4)])
                            hi = transpose4x4(*[v[L][i][1] for i in range(4)])
                            for j in range(4):
                                bf[j][L][hh] = lo[j]
                                bf[4 + j][L][hh] = hi[j]
                    for mt in range(2):
                        for jj in range(8):
                            mma(tids, mt, jj, af[mt], bf[jj])
            # row sums (threads 0..63), into smem
            corr_base = k1RingBytes + nk * k1WChunkBytes
            for tid in range(k1BC):
                s = 0
                for kc in range(nk):
                    for q in range(8):
                        a = k1RingBytes + kc * k1WChunkBytes + tid * 32 + 4 * q
                        assert (tag[a:a + 4] == W_TAG).all()
                        s += sum(s8(int(b)) for b in smem[a:a + 4])
                smem[corr_base + 4 * tid:corr_base + 4 * tid + 4] = np.frombuffer(
                    np.int32(i32(xzp * s)).tobytes(), np.uint8)
                tag[corr_base + 4 * tid:corr_base + 4 * tid + 4] = -3
            # epilogue
            for tid in range(kThreads):
                lane, warp = tid & 31, tid >> 5
                wm, wn, g, t = warp >> 1, warp & 1, lane >> 2, lane & 3
                pb = p0 + wn * 64 + 16 * t
                for mt in range(2):
                    for h in range(2):
                        cl = wm * 32 + mt * 16 + g + 8 * h
                        co = co0 + cl
                        if co >= Co:
                            continue
                        assert (tag[corr_base + 4 * cl:corr_base + 4 * cl + 4] == -3).all()
                        corr = int(smem[corr_base + 4 * cl:corr_base + 4 * cl + 4].view(np.int32)[0])
                        mult = np.float32(np.float32(xs) * np.float32(ws[co].item()))
                        bv = np.float32(bias[co].item()) if bias is not None else np.float32(0)
                        y = [None] * 16
                        for e in range(2):
                            for jj in range(8):
                                a32 = i32(int(acc[tid, mt, jj, 2 * h + e]) - corr)
                                yy = np.float32(np.float64(np.float32(a32)) * np.float64(mult) + np.float64(bv))  # fmaf
                                if act == "relu":
                                    yy = yy if yy > 0 else np.float32(0)
                                elif act == "gelu":
                                    yy = np.float32(F.gelu(torch.tensor(yy, dtype=torch.float32)).item())
                                y[8 * e + jj] = yy

                        def rq(v):
                            q = np.float32(np.rint(np.float32(v * inv_out))) + np.float32(ozp)
                            return int(min(max(q, -128), 127))

                        o = (n * Co + co) * HW + pb
                        if vec:
                            if pb < HW:
                                assert o % 16 == 0 and o + 16 <= len(out)
                                for b in range(16):
                                    out[o + b] = rq(y[b]) if int8_out else y[b]
                                written[o:o + 16] += 1
                        else:
                            for b in range(16):
                                if pb + b < HW:
                                    assert o + b < len(out)
                                    out[o + b] = rq(y[b]) if int8_out else y[b]
                                    written[o + b] += 1
    assert (written == 1).all(), "an output element written twice or never"
    return torch.from_numpy(out.reshape(N, Co, H, W))


def check_case(N, Ci, H, W, Co, vec=None, seed=1, verbose=True):
    """Emulated kernel vs the CPU op: float / int8 outputs, all activations, bias or not; bit-exact accumulators."""
    from phasor.quantized_pde import ops
    from phasor.quantized_pde import reference as ref
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (N, Ci, H, W), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (Co, Ci, 1, 1), generator=g, dtype=torch.int8)
    ws = torch.rand(Co, generator=g) * 0.01 + 0.001
    bias = torch.randn(Co, generator=g)
    ok_all = True
    for out_kind, act, zp, b in (("float", "none", -5, bias), ("int8", "gelu", 7, bias), ("float", "relu", 0, None),
                                 ("int8", "relu", -128, None)):
        args = (0.03, zp, w, ws, b, [1, 1], [0, 0], [1, 1], act, out_kind, 0.2, 3)
        want = ops.int8_conv2d(x, *args)
        got = run_1x1(x, w, ws, b, zp, 0.03, act, out_kind == "int8", 0.2, 3, vec=vec)
        if out_kind == "float":
            err = (got.double() - want.double()).abs().max().item()
            ok = torch.allclose(got, want, rtol=1e-5, atol=1e-4)
        else:
            err = (got.int() - want.int()).abs().max().item()
            ok = err <= 1
        ok_all &= ok
        if verbose:
            print((N, Ci, H, W, Co), "vec" if (vec if vec is not None else (H * W) % 16 == 0) else "scalar",
                  out_kind, act, zp, "max err", err, "OK" if ok else "FAIL", flush=True)
    got = run_1x1(x, w, torch.ones(Co), None, -7, 1.0, "none", False, 1.0, 0, vec=vec)
    want = ref.int8_conv2d_accumulator_ref(x, -7, w, [1, 1], [0, 0], [1, 1])
    exact = torch.equal(got.double(), want.double())
    if verbose:
        print("   acc exact:", exact, flush=True)
    return ok_all and exact


CASES = [  # (N, Ci, H, W, Co, vec): Ci 3/17/64/100/200/256 (1, 1, 2, 4, 7, 8 k chunks: ring wrap), Co 1/10/64/80,
    # HW odd and small, multiples of 16 with and without a pixel tail, batch 1 and 3; vec=False on aligned shapes
    (1, 3, 5, 7, 1, None),
    (3, 17, 3, 3, 10, None),
    (1, 64, 16, 16, 64, None),
    (3, 100, 9, 13, 80, None),
    (1, 64, 12, 12, 10, None),
    (3, 17, 8, 16, 1, False),
    (1, 200, 4, 20, 64, None),
    (1, 256, 11, 3, 80, None),
    (1, 100, 16, 20, 64, False),
    (3, 3, 1, 37, 64, None),
    (3, 64, 16, 20, 80, None),
]

if __name__ == "__main__":
    import phasor  # noqa: F401
    bad = [c for c in CASES if not check_case(*c[:5], vec=c[5])]
    print("ALL OK" if not bad else f"FAILED: {bad}")
    sys.exit(1 if bad else 0)
