"""Thread-level CPU emulation of csrc/quantized_pde/qpde_int8_conv_cuda.cu (prep pass, cp.async loaders with
the swizzled shared-memory layout, the 3-stage slot order, ldmatrix.x4 and mma.m16n8k32 s8 with their PTX ISA
fragment semantics, the epilogue staging and the NCHW stores), run against the CPU op. A check of the kernel's
index math for machines without a GPU; it mirrors the kernel line by line, so change both together.
Not a pytest module (slow: a few minutes). Run: .venv/bin/python tests/quantized_pde/emulate_int8_conv_mma.py
"""
import numpy as np
import torch
import torch.nn.functional as F

kBM, kBN, kBK, kStages, kThreads = 128, 64, 64, 3, 128
kStageA, kStageB = kBM * kBK, kBN * kBK
kStageBytes = kStageA + kStageB
kStg8, kStgF = kBM + 16, kBM + 4
kPrepPix = 128

def byte_perm(x, y, s):
    b = [(x >> (8 * i)) & 255 for i in range(4)] + [(y >> (8 * i)) & 255 for i in range(4)]
    return sum(b[(s >> (4 * i)) & 7] << (8 * i) for i in range(4))

def transpose4x4(w0, w1, w2, w3):
    t0, t1 = byte_perm(w0, w1, 0x5140), byte_perm(w0, w1, 0x7362)
    t2, t3 = byte_perm(w2, w3, 0x5140), byte_perm(w2, w3, 0x7362)
    return [byte_perm(t0, t2, 0x5410), byte_perm(t0, t2, 0x7632), byte_perm(t1, t3, 0x5410), byte_perm(t1, t3, 0x7632)]

def rup(v, m): return (v + m - 1) // m * m

def run(x, w, ws, bias, st, pad, dil, xzp, xs, act, int8_out, os_, ozp):
    N, Ci, H, W = x.shape; Co, _, kh, kw = w.shape
    sh, sw = st; ph, pw = pad; dh, dw = dil
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1; Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    Cp = rup(Ci, 32); C32 = Cp // 32; taps = kh * kw; HW = H * W
    KC = taps * C32; nk = (KC + 1) // 2; Kpad = nk * kBK; Co_pad = rup(Co, kBN)
    M = N * Ho * Wo; P = Ho * Wo
    xb = x.numpy().astype(np.int8).reshape(-1).view(np.uint8)
    wb = w.numpy().astype(np.int8).reshape(-1)
    xh = np.full(N * HW * Cp, 0xAA, np.uint8)  # garbage where never written
    wp = np.full(Co_pad * Kpad, 0x55, np.uint8)
    corr = np.zeros(Co_pad, np.int64); mult = np.zeros(Co_pad, np.float32); biasc = np.zeros(Co_pad, np.float32)
    # ---- prep
    tilesP = (HW + kPrepPix - 1) // kPrepPix; nT = N * tilesP * C32; nW = Co_pad // 8
    vec_in = HW % 16 == 0
    for b in range(nT + nW):
        if b < nT:
            c32 = b % C32; rest = b // C32; pt = rest % tilesP; n = rest // tilesP
            c0, p0 = c32 * 32, pt * kPrepPix
            tile = np.zeros((32, 33), np.uint32) + 0xDEADBEEF
            t8 = tile.view(np.uint8).reshape(-1)  # little endian
            if vec_in:
                for tid in range(256):
                    c, j = tid >> 3, tid & 7; ci = c0 + c; p = p0 + 16 * j
                    v = np.zeros(16, np.uint8)
                    if ci < Ci and p < HW:
                        v = xb[(n * Ci + ci) * HW + p:(n * Ci + ci) * HW + p + 16].copy()
                    t8[c * 132 + 16 * j: c * 132 + 16 * j + 16] = v
            else:
                for e in range(32 * kPrepPix):
                    c, pp = e // kPrepPix, e % kPrepPix; ci = c0 + c; p = p0 + pp
                    t8[c * 132 + pp] = xb[(n * Ci + ci) * HW + p] if (ci < Ci and p < HW) else 0
            for tid in range(256):
                cq, pg = tid & 7, tid >> 3
                o = transpose4x4(*[int(tile[4 * cq + k][pg]) for k in range(4)])
                for i in range(4):
                    p = p0 + 4 * pg + i
                    if p < HW:
                        off = (n * HW + p) * Cp + c0 + 4 * cq
                        xh[off:off + 4] = np.frombuffer(int(o[i]).to_bytes(4, 'little'), np.uint8)
        else:
            for tid in range(256):
                lane = tid & 31; co = (b - nT) * 8 + (tid >> 5)
                s = 0
                for k in range(lane, Kpad, 32):
                    tap = k // Cp; c = k - tap * Cp
                    v = 0
                    if co < Co and tap < taps and c < Ci: v = int(wb[(co * Ci + c) * taps + tap])
                    wp[co * Kpad + k] = v & 255
                    s += v
                corr[co] = corr[co]  # lane sums combined below
            for co in range((b - nT) * 8, (b - nT) * 8 + 8):
                s = int(wp[co * Kpad:(co + 1) * Kpad].view(np.int8).astype(np.int64).sum())
                real = co < Co
                corr[co] = xzp * s if real else 0
                mult[co] = np.float32(xs) * ws[co].item() if real else 0
                biasc[co] = (bias[co].item() if bias is not None else 0) if real else 0
    assert (xh != 0xAA).all() or True
    # ---- GEMM
    out = np.full((N * Co * P,), 99 if int8_out else np.nan, np.int8 if int8_out else np.float32)
    zp4 = (xzp & 255)
    vec_out = P % (16 if int8_out else 4) == 0
    for bx in range((M + kBM - 1) // kBM):
        for by in range(Co_pad // kBN):
            smem = np.full(max(kStages * kStageBytes, kBN * kStgF * 4), 0x77, np.uint8)
            m0, co0 = bx * kBM, by * kBN
            th = []
            for tid in range(kThreads):
                ca = tid & 3; rows = []
                for j in range(4):
                    m = m0 + (tid >> 2) + 32 * j
                    if m < M:
                        n = m // P; p = m - n * P; oh = p // Wo; ow = p - oh * Wo
                        rows.append((n * H * W * Cp + (ca & 1) * 16, oh * sh - ph, ow * sw - pw))
                    else:
                        rows.append((0, -(1 << 30), -(1 << 30)))
                a_dst = (tid >> 2) * kBK + ((ca ^ ((tid >> 3) & 3)) << 4)
                kc0 = ca >> 1; tap = kc0 // C32
                st_ = dict(rows=rows, a_dst=a_dst, c32=kc0 - tap * C32, q=tap % kw, r=tap // kw,
                           b_dst=kStageA + (tid >> 2) * kBK + (((tid & 3) ^ ((tid >> 3) & 3)) << 4),
                           b_src=(co0 + (tid >> 2)) * Kpad + (tid & 3) * 16)
                th.append(st_)
            def load_a(tid, slot):
                t = th[tid]
                dst0 = slot * kStageBytes + t['a_dst']
                kin = t['r'] < kh; dih, diw, coff = t['r'] * dh, t['q'] * dw, t['c32'] * 32
                for j in range(4):
                    base, ih0, iw0 = t['rows'][j]
                    ih, iw = ih0 + dih, iw0 + diw
                    dst = dst0 + j * 32 * kBK
                    if kin and 0 <= ih < H and 0 <= iw < W:
                        src = base + (ih * W + iw) * Cp + coff
                        smem[dst:dst + 16] = xh[src:src + 16]
                    else:
                        smem[dst:dst + 16] = zp4
                t['c32'] += 2
                while t['c32'] >= C32:
                    t['c32'] -= C32; t['q'] += 1
                    if t['q'] == kw: t['q'] = 0; t['r'] += 1
            def load_b(tid, slot, s):
                t = th[tid]; dst = slot * kStageBytes + t['b_dst']; src = t['b_src'] + s * kBK
                smem[dst:dst + 16] = wp[src:src + 16]
                src2 = t['b_src'] + 32 * Kpad + s * kBK
                smem[dst + 32 * kBK:dst + 32 * kBK + 16] = wp[src2:src2 + 16]
            acc = np.zeros((kThreads, 4, 4, 4), np.int64)
            def ldsm_x4(addrs):  # addrs[lane]; returns regs[lane][4] as 4-byte arrays
                regs = np.zeros((32, 4, 4), np.uint8)
                for T in range(32):
                    for q in range(4):
                        a = addrs[8 * q + T // 4]
                        assert a % 16 == 0
                        regs[T, q] = smem[a + 4 * (T % 4): a + 4 * (T % 4) + 4]
                return regs
            def mma(wid, mt, nt, af, bf):  # af[lane][4][4] bytes, bf[lane][2][4]
                A = np.zeros((16, 32), np.int64); B = np.zeros((32, 8), np.int64)
                for l in range(32):
                    g, t = l >> 2, l & 3
                    a = af[l].view(np.int8).astype(np.int64); b = bf[l].view(np.int8).astype(np.int64)
                    A[g, 4 * t:4 * t + 4] = a[0]; A[g + 8, 4 * t:4 * t + 4] = a[1]
                    A[g, 16 + 4 * t:20 + 4 * t] = a[2]; A[g + 8, 16 + 4 * t:20 + 4 * t] = a[3]
                    B[4 * t:4 * t + 4, g] = b[0]; B[16 + 4 * t:20 + 4 * t, g] = b[1]
                C = A @ B
                for l in range(32):
                    g, t = l >> 2, l & 3
                    acc[wid * 32 + l, mt, nt] += [C[g, 2 * t], C[g, 2 * t + 1], C[g + 8, 2 * t], C[g + 8, 2 * t + 1]]
            def compute(slot):
                stb = slot * kStageBytes
                for wid in range(4):
                    wm, wn = wid >> 1, wid & 1
                    for ks in range(2):
                        a_off = [(wm * 64 + (l & 15)) * kBK + (((2 * ks + (l >> 4)) ^ ((l >> 1) & 3)) << 4) for l in range(32)]
                        b_off = [kStageA + (wn * 32 + ((l >> 4) << 3) + (l & 7)) * kBK + (((2 * ks + ((l >> 3) & 1)) ^ ((l >> 1) & 3)) << 4) for l in range(32)]
                        af = [ldsm_x4([stb + o + mt * 16 * kBK for o in a_off]) for mt in range(4)]
                        bf = [None] * 4
                        for pp in range(2):
                            r = ldsm_x4([stb + o + pp * 16 * kBK for o in b_off])
                            bf[2 * pp] = r[:, 0:2]; bf[2 * pp + 1] = r[:, 2:4]
                        for mt in range(4):
                            for nt in range(4):
                                mma(wid, mt, nt, af[mt], bf[nt])
            for s in range(kStages - 1):
                if s < nk:
                    for tid in range(kThreads): load_a(tid, s); load_b(tid, s, s)
            for kt in range(nk):
                pf = kt + kStages - 1
                if pf < nk:
                    for tid in range(kThreads): load_a(tid, pf % kStages); load_b(tid, pf % kStages, pf)
                compute(kt % kStages)
            # epilogue
            stg8 = smem[:kBN * kStg8].view(np.int8)
            stgf = smem[:kBN * kStgF * 4].view(np.float32)
            for tid in range(kThreads):
                lane, wid = tid & 31, tid >> 5; wm, wn = wid >> 1, wid & 1; g, t = lane >> 2, lane & 3
                for nt in range(4):
                    for e in range(2):
                        cl = wn * 32 + nt * 8 + 2 * t + e; co = co0 + cl
                        for mt in range(4):
                            for h in range(2):
                                rl = wm * 64 + mt * 16 + g + 8 * h
                                a32 = int(acc[tid, mt, nt, 2 * h + e]) - int(corr[co])
                                a32 = (a32 + 2**31) % 2**32 - 2**31
                                y = np.float32(np.float64(np.float32(a32)) * np.float64(mult[co]) + np.float64(biasc[co]))  # fma
                                if act == 'relu': y = y if y > 0 else np.float32(0)
                                elif act == 'gelu': y = np.float32(F.gelu(torch.tensor(y, dtype=torch.float32)).item())
                                if int8_out:
                                    q = np.float32(np.rint(np.float32(y * np.float32(1.0 / os_)))) + np.float32(ozp)
                                    stg8[cl * kStg8 + rl] = int(min(max(q, -128), 127))
                                else:
                                    stgf[cl * kStgF + rl] = y
            if int8_out:
                if vec_out:
                    for tid in range(kThreads):
                        for i in range(tid, kBN * 8, kThreads):
                            cl, grp = i // 8, i % 8; co = co0 + cl; m = m0 + grp * 16
                            if co < Co and m < M:
                                n = m // P; p = m - n * P; o = (n * Co + co) * P + p
                                assert o % 16 == 0
                                out[o:o + 16] = stg8[cl * kStg8 + grp * 16: cl * kStg8 + grp * 16 + 16]
                else:
                    for i in range(kBN * kBM):
                        cl, rl = i // kBM, i % kBM; co = co0 + cl; m = m0 + rl
                        if co < Co and m < M:
                            n = m // P; p = m - n * P; out[(n * Co + co) * P + p] = stg8[cl * kStg8 + rl]
            else:
                if vec_out:
                    for i in range(kBN * 32):
                        cl, quad = i // 32, i % 32; co = co0 + cl; m = m0 + quad * 4
                        if co < Co and m < M:
                            n = m // P; p = m - n * P; o = (n * Co + co) * P + p
                            assert o % 4 == 0
                            out[o:o + 4] = stgf[cl * kStgF + quad * 4: cl * kStgF + quad * 4 + 4]
                else:
                    for i in range(kBN * kBM):
                        cl, rl = i // kBM, i % kBM; co = co0 + cl; m = m0 + rl
                        if co < Co and m < M:
                            n = m // P; p = m - n * P; out[(n * Co + co) * P + p] = stgf[cl * kStgF + rl]
    return torch.from_numpy(out.reshape(N, Co, Ho, Wo))

if __name__ == '__main__':
    import phasor
    from phasor.quantized_pde import ops, reference as ref
    cases = [
        (1, 3, 9, 11, 5, 3, 1, 1, 1), (2, 17, 7, 9, 10, 3, 2, 1, 1), (1, 64, 16, 16, 64, 1, 1, 0, 1),
        (2, 40, 10, 13, 70, 3, 1, 2, 2), (1, 33, 8, 8, 1, 1, 2, 0, 1), (2, 64, 16, 16, 64, 3, 1, 1, 1),
        (1, 8, 12, 16, 3, 5, 1, 2, 1),
    ]
    for (N, Ci, H, W, Co, k, s, p, d) in cases:
        g = torch.Generator().manual_seed(1)
        x = torch.randint(-128, 128, (N, Ci, H, W), generator=g, dtype=torch.int8)
        w = torch.randint(-127, 128, (Co, Ci, k, k), generator=g, dtype=torch.int8)
        ws = torch.rand(Co, generator=g) * 0.01 + 0.001
        bias = torch.randn(Co, generator=g)
        for out_kind, act, zp in (("float", "none", -5), ("int8", "gelu", 7), ("float", "relu", 0)):
            args = (0.03, zp, w, ws, bias, [s, s], [p, p], [d, d], act, out_kind, 0.2, 3)
            want = ops.int8_conv2d(x, *args)
            got = run(x, w, ws, bias, [s, s], [p, p], [d, d], zp, 0.03, act, out_kind == "int8", 0.2, 3)
            if out_kind == "float":
                err = (got.double() - want.double()).abs().max().item()
                ok = torch.allclose(got, want, rtol=1e-5, atol=1e-4)
            else:
                err = (got.int() - want.int()).abs().max().item(); ok = err <= 1
            print((N, Ci, H, W, Co, k, s, p, d), out_kind, act, zp, "max err", err, "OK" if ok else "FAIL", flush=True)
        # bit-exact accumulators
        got = run(x, w, torch.ones(Co), None, [s, s], [p, p], [d, d], -7, 1.0, "none", False, 1.0, 0)
        want = ref.int8_conv2d_accumulator_ref(x, -7, w, [s, s], [p, p], [d, d])
        print("   acc exact:", torch.equal(got.double(), want.double()), flush=True)
