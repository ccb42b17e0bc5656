"""Thread-level CPU emulation of the direct 3x3 path in csrc/quantized_pde/qpde_int8_conv_cuda.cu: the weight
repack by the prep kernel's weight blocks (nT = 0), then int8_conv3x3_kernel (NCHW X tile with halo, 8-byte
cp.async or zero-point chunks, streamed swizzled weight chunks, the 2-stage ring, ldmatrix.x4 A fragments, LDS.64 +
transpose4x4 B fragments with the column taps as a register renaming, mma.m16n8k32 s8 with the PTX ISA fragment
semantics, the register epilogue and its NCHW stores), run against the CPU op. It mirrors the kernel line by line,
so change both together.

Besides the values it checks what a wrong index would not show in the output: every shared-memory read sees the
bytes of the stage it belongs to (slot reuse in the ring), every X byte a B fragment uses holds the input at that
position or the zero point outside the image, no global read or write leaves its tensor, every output element is
written exactly once, accesses are aligned, and the LDS.64, ldmatrix and weight cp.async phases are free of bank
conflicts.
Not a pytest module (a few minutes). Run: .venv/bin/python tests/quantized_pde/emulate_int8_conv3x3.py
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emulate_int8_conv_mma import transpose4x4  # noqa: E402

kThreads, kBK, kPrepThreads = 128, 64, 256
k3TH, k3TW, k3BC = 4, 32, 64
k3Rows = k3TH + 2
k3RowB = k3TW + 16
k3ChStride = k3Rows * k3RowB + 8
k3XBytes = 32 * k3ChStride
k3WTapBytes = k3BC * 32
k3StageBytes = k3XBytes + 9 * k3WTapBytes
k3Stages = 2
k3SmemBytes = k3Stages * k3StageBytes
k3XChunks = 32 * k3Rows * (k3RowB // 8)
assert k3XChunks % kThreads == 0 and (9 * k3BC * 2) % kThreads == 0 and k3ChStride % 32 == 8
W_TAG = 1000  # W bytes of stage s carry W_TAG + s, X bytes carry s


def rup(v, m):
    return (v + m - 1) // m * m


def s8(v):
    v &= 255
    return v - 256 if v >= 128 else v


def i32(v):
    return (v + 2**31) % 2**32 - 2**31


def word(b4):
    return int(b4[0]) | int(b4[1]) << 8 | int(b4[2]) << 16 | int(b4[3]) << 24


def conflict_free(addrs, width):
    banks = [(a // 4 + i) % 32 for a in addrs for i in range(width // 4)]
    return len(banks) == len(set(banks))


# mma.m16n8k32 fragment index maps (lane, register, byte) -> matrix position
_L = np.arange(32)[:, None, None]
_G, _T = _L >> 2, _L & 3
_B = np.arange(4)[None, None, :]
_R4 = np.arange(4)[None, :, None]
A_ROW = np.broadcast_to(_G + 8 * (_R4 & 1), (32, 4, 4)).reshape(-1)
A_COL = np.broadcast_to(4 * _T + 16 * (_R4 >> 1) + _B, (32, 4, 4)).reshape(-1)
_R2 = np.arange(2)[None, :, None]
B_ROW = np.broadcast_to(4 * _T + 16 * _R2 + _B, (32, 2, 4)).reshape(-1)
B_COL = np.broadcast_to(_G + 0 * _R2 + 0 * _B, (32, 2, 4)).reshape(-1)
Lf = np.arange(32)
C_ROW = np.stack([Lf >> 2, Lf >> 2, (Lf >> 2) + 8, (Lf >> 2) + 8], 1)
C_COL = np.stack([2 * (Lf & 3), 2 * (Lf & 3) + 1, 2 * (Lf & 3), 2 * (Lf & 3) + 1], 1)


def mma(acc, af, bf):
    """acc [32][4] int64 += (af [32][4] u32, bf [32][2] u32) with the PTX fragment semantics."""
    A = np.zeros((16, 32), np.int64)
    B = np.zeros((32, 8), np.int64)
    A[A_ROW, A_COL] = np.ascontiguousarray(af, dtype=np.uint32).view(np.int8).reshape(-1)
    B[B_ROW, B_COL] = np.ascontiguousarray(bf, dtype=np.uint32).view(np.int8).reshape(-1)
    C = A @ B
    acc += C[C_ROW, C_COL]


def prep_weights(w, ws, bias, xzp, xs, Co, Ci):
    """int8_conv_prep_kernel with nT = 0 (weight blocks only), taps = 9."""
    Cp = rup(Ci, 32)
    Co_pad = rup(Co, k3BC)
    Kpad = rup(9 * Cp, kBK)
    wb = w.numpy().astype(np.int8).reshape(-1)
    wp = np.full(Co_pad * Kpad, 0x55, np.uint8)
    corr = np.zeros(Co_pad, np.int64)
    mult = np.zeros(Co_pad, np.float32)
    biasc = np.zeros(Co_pad, np.float32)
    nT, taps = 0, 9
    for b in range(nT, nT + Co_pad // (kPrepThreads // 32)):
        for warp in range(kPrepThreads // 32):
            co = (b - nT) * (kPrepThreads // 32) + warp
            assert co < Co_pad
            s = 0
            for lane in range(32):
                for k in range(lane, Kpad, 32):
                    tap, c = k // Cp, k % Cp
                    v = 0
                    if co < Co and tap < taps and c < Ci:
                        v = int(wb[(co * Ci + c) * taps + tap])
                    wp[co * Kpad + k] = v & 255
                    s += v
            real = co < Co
            corr[co] = i32(xzp * s) if real else 0
            mult[co] = np.float32(np.float32(xs) * np.float32(ws[co].item())) if real else np.float32(0)
            biasc[co] = np.float32(bias[co].item()) if real and bias is not None else np.float32(0)
    return wp, corr, mult, biasc, Cp, Co_pad, Kpad


def run_3x3(x, w, ws, bias, xzp, xs, act, int8_out, os_, ozp, vec=None, break_index=False):
    N, Ci, H, W = x.shape
    Co = w.shape[0]
    assert w.shape[1:] == (Ci, 3, 3)
    if vec is None:
        vec = W % 16 == 0  # the host's choice (torch allocations are 16-byte aligned)
    wp, corr, mult, biasc, Cp, Co_pad, Kpad = prep_weights(w, ws, bias, xzp, xs, Co, Ci)
    nk = Cp // 32
    tilesH, tilesW = (H + k3TH - 1) // k3TH, (W + k3TW - 1) // k3TW
    zp8 = xzp & 255
    xb = x.numpy().astype(np.int8).reshape(-1).view(np.uint8)
    xpad = np.full((N, Ci, H + 2, W + 2), zp8, np.uint8)  # the value each tap must see
    xpad[:, :, 1:H + 1, 1:W + 1] = x.numpy().astype(np.int8).view(np.uint8)
    out = np.full(N * Co * H * W, 99 if int8_out else np.nan, np.int8 if int8_out else np.float32)
    written = np.zeros(N * Co * H * W, np.int64)
    inv_out = np.float32(1.0 / os_)
    for bx in range(N * tilesH * tilesW):
        for by in range(Co_pad // k3BC):
            smem = np.full(k3SmemBytes, 0x77, np.uint8)
            tag = np.full(k3SmemBytes, -1, np.int64)
            tiles = tilesH * tilesW
            n = bx // tiles
            tr = bx - n * tiles
            y0 = (tr // tilesW) * k3TH
            x0 = (tr - (tr // tilesW) * tilesW) * k3TW
            co0 = by * k3BC
            ximg = n * Ci * H * W

            def load_stage(slot, s):
                st = slot * k3StageBytes
                xd = []
                for tid in range(kThreads):
                    row_d = []
                    for j in range(k3XChunks // kThreads):
                        e = tid + kThreads * j
                        ch = e // (k3Rows * 6)
                        rem = e - ch * (k3Rows * 6)
                        row = rem // 6
                        ck = rem - row * 6
                        dst = st + ch * k3ChStride + row * k3RowB + 8 * ck
                        c, iy, ix = s * 32 + ch, y0 - 1 + row, x0 - 8 + 8 * ck
                        in_cy = c < Ci and 0 <= iy < H
                        src = ximg + (c * H + iy) * W + ix
                        if vec:
                            if in_cy and 0 <= ix < W:
                                assert ix + 8 <= W and src % 8 == 0 and dst % 8 == 0 and 0 <= src and src + 8 <= len(xb)
                                smem[dst:dst + 8] = xb[src:src + 8]
                            else:
                                assert dst % 8 == 0
                                smem[dst:dst + 8] = zp8
                        else:
                            v = np.full(8, zp8, np.uint8)
                            if in_cy:
                                for b in range(8):
                                    if 0 <= ix + b < W:
                                        assert 0 <= src + b < len(xb)
                                        v[b] = xb[src + b]
                            assert dst % 8 == 0
                            smem[dst:dst + 8] = v
                        assert (tag[dst:dst + 8] != s).all(), "X chunk written twice"
                        tag[dst:dst + 8] = s
                        row_d.append(dst)
                    xd.append(row_d)
                    for j in range(9 * k3BC * 2 // kThreads):
                        e = tid + kThreads * j
                        tap, r, hf = e >> 7, (e >> 1) & 63, e & 1
                        dst = st + k3XBytes + tap * k3WTapBytes + r * 32 + ((hf ^ ((r >> 2) & 1)) << 4)
                        src = (co0 + r) * Kpad + tap * Cp + s * 32 + 16 * hf
                        assert src % 16 == 0 and src + 16 <= len(wp) and dst % 16 == 0
                        assert tap * Cp + s * 32 + 16 * hf + 16 <= Kpad
                        assert (tag[dst:dst + 16] != W_TAG + s).all(), "W chunk written twice"
                        smem[dst:dst + 16] = wp[src:src + 16]
                        tag[dst:dst + 16] = W_TAG + s
                # every X byte of the stage written once (the tags say stage s everywhere)
                for ch in range(32):
                    b0 = st + ch * k3ChStride
                    assert (tag[b0:b0 + k3Rows * k3RowB] == s).all()
                    assert (tag[st + k3XBytes:st + k3StageBytes] == W_TAG + s).all()
                # weight cp.async: quarter warps conflict-free
                for j in range(9 * k3BC * 2 // kThreads):
                    for q in range(0, kThreads, 8):
                        addrs = []
                        for tid in range(q, q + 8):
                            e = tid + kThreads * j
                            tap, r, hf = e >> 7, (e >> 1) & 63, e & 1
                            addrs.append(st + k3XBytes + tap * k3WTapBytes + r * 32 + ((hf ^ ((r >> 2) & 1)) << 4))
                        assert conflict_free(addrs, 16)

            load_stage(0, 0)

            acc = np.zeros((4, 2, 8, 32, 4), np.int64)  # [warp][mt][jj][lane][4]

            for kt in range(nk):
                if kt + 1 < nk:
                    load_stage((kt + 1) & 1, kt + 1)
                st = (kt & 1) * k3StageBytes
                for warp in range(4):
                    wm, wn = warp >> 1, warp & 1
                    a_offs = []
                    for mt in range(2):
                        offs = []
                        for L in range(32):
                            r = wm * 32 + mt * 16 + (L & 15)
                            offs.append(k3XBytes + r * 32 + (((L >> 4) ^ ((r >> 2) & 1)) << 4))
                        a_offs.append(offs)
                    b_off = [4 * (L & 3) * k3ChStride + (2 * wn + ((L >> 2) >> 2)) * k3RowB + 8 * ((L >> 2) & 3)
                             for L in range(32)]
                    if break_index:  # deliberately wrong tap-row offset: the check below must fail
                        b_off = [b + k3RowB for b in b_off]
                    for r in range(3):
                        xbr = np.zeros((10, 2, 32), np.uint32)
                        for hh in range(2):
                            u = np.zeros((3, 4, 32, 2), np.uint32)
                            for i in range(4):
                                for m in range(3):
                                    addrs = []
                                    for L in range(32):
                                        ad = st + b_off[L] + (16 * hh + i) * k3ChStride + r * k3RowB + 8 * m
                                        assert ad % 8 == 0 and 0 <= ad and ad + 8 <= k3SmemBytes
                                        assert (tag[ad:ad + 8] == kt).all(), "LDS.64 reads another stage"
                                        u[m, i, L, 0] = word(smem[ad:ad + 4])
                                        u[m, i, L, 1] = word(smem[ad + 4:ad + 8])
                                        addrs.append(ad)
                                    assert conflict_free(addrs[:16], 8) and conflict_free(addrs[16:], 8), "LDS.64 conflict"
                            for L in range(32):
                                o0 = transpose4x4(*[int(u[0, i, L, 1]) for i in range(4)])
                                o1 = transpose4x4(*[int(u[1, i, L, 0]) for i in range(4)])
                                o2 = transpose4x4(*[int(u[1, i, L, 1]) for i in range(4)])
                                o3 = transpose4x4(*[int(u[2, i, L, 0]) for i in range(4)])
                                xbr[0, hh, L] = o0[3]
                                for j in range(4):
                                    xbr[1 + j, hh, L] = o1[j]
                                    xbr[5 + j, hh, L] = o2[j]
                                xbr[9, hh, L] = o3[0]
                        # independent check: the B word of (tap q, n tile jj) holds the 4 k of the right input pixel
                        for q in range(3):
                            for jj in range(8):
                                for L in range(32):
                                    g, t = L >> 2, L & 3
                                    oy = y0 + 2 * wn + (g >> 2)
                                    ox = x0 + 8 * (g & 3) + jj
                                    for hh in range(2):
                                        cs = [kt * 32 + 16 * hh + 4 * t + b for b in range(4)]
                                        v = int(xbr[jj + q, hh, L])
                                        for b, c in enumerate(cs):
                                            if c >= Ci or oy >= H or ox >= W:
                                                continue  # zero weights / an output never stored
                                            want = xpad[n, c, oy + r, ox + q]
                                            assert (v >> (8 * b)) & 255 == want, \
                                                f"B byte of tap ({r},{q}) pixel ({oy},{ox}) channel {c}"
                        for q in range(3):
                            af = []
                            for mt in range(2):
                                addrs = [st + (3 * r + q) * k3WTapBytes + a_offs[mt][L] for L in range(32)]
                                regs = np.zeros((32, 4), np.uint32)
                                for ph in range(4):
                                    assert all(ad % 16 == 0 for ad in addrs[8 * ph:8 * ph + 8])
                                    assert conflict_free(addrs[8 * ph:8 * ph + 8], 16), "ldmatrix conflict"
                                for L in range(32):
                                    for ph in range(4):
                                        ad = addrs[8 * ph + L // 4] + 4 * (L % 4)
                                        assert (tag[ad:ad + 4] == W_TAG + kt).all(), "ldmatrix reads another stage"
                                        regs[L, ph] = word(smem[ad:ad + 4])
                                af.append(regs)
                            for mt in range(2):
                                for jj in range(8):
                                    bf = np.stack([xbr[jj + q, 0], xbr[jj + q, 1]], 1)
                                    mma(acc[warp, mt, jj], af[mt], bf)
            # epilogue
            for tid in range(kThreads):
                lane, warp = tid & 31, tid >> 5
                wm, wn, g, t = warp >> 1, warp & 1, lane >> 2, lane & 3
                oy, xs_ = y0 + 2 * wn + (t >> 1), x0 + 16 * (t & 1)
                if oy >= H:
                    continue
                for mt in range(2):
                    for h in range(2):
                        co = co0 + wm * 32 + mt * 16 + g + 8 * h
                        if co >= Co:
                            continue
                        y = [None] * 16
                        for e in range(2):
                            for jj in range(8):
                                a32 = i32(int(acc[warp, mt, jj, lane, 2 * h + e]) - int(corr[co]))
                                yy = np.float32(np.float64(np.float32(a32)) * np.float64(mult[co]) + np.float64(biasc[co]))
                                if act == "relu":
                                    yy = yy if yy > 0 else np.float32(0)
                                elif act == "gelu":
                                    yy = np.float32(F.gelu(torch.tensor(yy, dtype=torch.float32)).item())
                                y[8 * e + jj] = yy

                        def rq(v):
                            qv = np.float32(np.rint(np.float32(v * inv_out))) + np.float32(ozp)
                            return int(min(max(qv, -128), 127))

                        o = ((n * Co + co) * H + oy) * W + xs_
                        if vec:
                            if xs_ < W:
                                assert xs_ + 16 <= W and o % 16 == 0 and o + 16 <= len(out)
                                for b in range(16):
                                    out[o + b] = rq(y[b]) if int8_out else y[b]
                                written[o:o + 16] += 1
                        else:
                            for b in range(16):
                                if xs_ + b < W:
                                    assert o + b < len(out)
                                    out[o + b] = rq(y[b]) if int8_out else y[b]
                                    written[o + b] += 1
    assert (written == 1).all(), "an output element written twice or never"
    return torch.from_numpy(out.reshape(N, Co, H, W))


def check_case(N, Ci, H, W, Co, vec=None, seed=1, verbose=True, full=True):
    """Emulated kernel vs the CPU op: float / int8 outputs, all activations, bias or not; bit-exact accumulators."""
    from phasor.quantized_pde import ops
    from phasor.quantized_pde import reference as ref
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (N, Ci, H, W), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (Co, Ci, 3, 3), generator=g, dtype=torch.int8)
    ws = torch.rand(Co, generator=g) * 0.01 + 0.001
    bias = torch.randn(Co, generator=g)
    ok_all = True
    kinds = (("float", "none", -5, bias), ("int8", "gelu", 7, bias), ("float", "relu", 127, None),
             ("int8", "relu", -128, None))
    for out_kind, act, zp, b in (kinds if full else kinds[1:2]):
        args = (0.03, zp, w, ws, b, [1, 1], [1, 1], [1, 1], act, out_kind, 0.2, 3)
        want = ops.int8_conv2d(x, *args)
        got = run_3x3(x, w, ws, b, zp, 0.03, act, out_kind == "int8", 0.2, 3, vec=vec)
        if out_kind == "float":
            err = (got.double() - want.double()).abs().max().item()
            ok = torch.allclose(got, want, rtol=1e-5, atol=1e-4)
        else:
            err = (got.int() - want.int()).abs().max().item()
            ok = err <= 1
        ok_all &= ok
        if verbose:
            print((N, Ci, H, W, Co), "vec" if (vec if vec is not None else W % 16 == 0) else "scalar",
                  out_kind, act, zp, "max err", err, "OK" if ok else "FAIL", flush=True)
    got = run_3x3(x, w, torch.ones(Co), None, -7, 1.0, "none", False, 1.0, 0, vec=vec)
    want = ref.int8_conv2d_accumulator_ref(x, -7, w, [1, 1], [1, 1], [1, 1])
    exact = torch.equal(got.double(), want.double())
    if verbose:
        print("   acc exact:", exact, flush=True)
    return ok_all and exact


CASES = [  # (N, Ci, H, W, Co, vec, all epilogues): Ci 3/17/64/100 (1, 1, 2, 4 k chunks: ring wrap), Co 1/10/64/80,
    # H/W odd and small, W a multiple of 16 with partial row / column tiles, batch 1 and 3; vec=False on W % 16 == 0
    (1, 3, 5, 7, 1, None, True),
    (3, 17, 9, 11, 10, None, True),
    (1, 64, 16, 16, 64, None, True),
    (1, 100, 5, 16, 80, None, False),
    (3, 17, 6, 48, 1, None, False),
    (3, 64, 16, 24, 80, None, False),
    (1, 40, 7, 32, 3, False, False),
]

if __name__ == "__main__":
    import phasor  # noqa: F401
    if "--break" in sys.argv:  # the emulation must catch a broken index
        g = torch.Generator().manual_seed(0)
        x = torch.randint(-128, 128, (1, 3, 5, 7), generator=g, dtype=torch.int8)
        w = torch.randint(-127, 128, (1, 3, 3, 3), generator=g, dtype=torch.int8)
        try:
            run_3x3(x, w, torch.ones(1), None, 0, 1.0, "none", False, 1.0, 0, break_index=True)
        except AssertionError as exc:
            print("broken index caught:", exc)
            sys.exit(0)
        print("FAIL: broken index not caught")
        sys.exit(1)
    bad = [c for c in CASES if not check_case(*c[:5], vec=c[5], full=c[6])]
    print("ALL OK" if not bad else f"FAILED: {bad}")
    sys.exit(1 if bad else 0)
