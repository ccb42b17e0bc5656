"""GTA attention's CUDA kernels (csrc/gta/gta_cuda*.cu), run from their own source on the CPU
(tools/cuda_emu), against the CPU op on the same inputs. Covers the float32 SIMT forward and backward,
the float16/bfloat16 tensor-core forward (K~, V~ transformed on load and by the pre-pass) and backward
(deterministic two-kernel and atomic-dQ), every PHASOR_GTA_CUDA_KERNEL value, head dims 32-128 (and 40,
SIMT only), self- and cross-attention with N off the tile sizes, several views, key padding masks with
fully masked rows and fully masked key tiles, v_transform on and off, random non-orthogonal SE(3) poses,
and the SE(3) block gradients carried on to trans_coeff.

Tolerances, as a multiple of the eps of the type the kernels store operands in, on the largest value of
each output (atol) and per element (rtol):
  float32 (SIMT): 2e-5 (~170 eps), the project's float32 rule: the kernels sum logits, the softmax and
    the gradients over up to ~100 keys / queries / channels in another order than the CPU op.
  float16/bfloat16 (tensor cores): against the float32 CPU op on the same rounded inputs; the kernels
    round Q~, K~, V~, do~ (a few float32 products each), P and dS to the storage type before each
    mma (relative error eps / 2 each, float32 accumulation) and the outputs once more: 4 eps.
The backward of both ops gets the same (CPU) O and lse, so it is checked apart from the forward."""
import math

import pytest
import torch

from gta_cases import geometry, random_extrinsics
from helpers import emulated_cuda_ops, misaligned_copy
import phasor.gta.ops  # noqa: F401  (registers the ops' fake kernels and autograd)

pytestmark = [pytest.mark.cuda_emu, pytest.mark.slow]

SPLITS = {32: (4, 8, 8, 12), 64: (0, 32, 0, 32), 96: (8, 16, 24, 48), 128: (0, 64, 16, 48), 40: (4, 8, 16, 12)}
LOW = [torch.float16, torch.bfloat16]
# B, H, Nq, Nk, Vq, Vk, mask, v_transform. Cross: keys 0-63 of batch 0 masked (a whole tensor-core key
# tile, two SIMT tiles), batch 1 fully masked (its queries see no key: out 0, lse -inf), the rest random;
# Nq = 37 is 2 query tiles of the key-side backward at d = 96, 128. Self: 2 views each, 70 = 64 + 6.
CROSS = (2, 2, 37, 70, 1, 2, "hard", True)
SELF = (1, 2, 70, 70, 2, 2, "random", False)
KERNEL_CHOICES = ["", "auto", "mma", "simt", "mma_onload", "mma_prepass", "mma_fwd_only", "mma_atomic"]


@pytest.fixture(scope="module")
def emu():
    return emulated_cuda_ops("gta")


def _case(dtype, d, B, H, Nq, Nk, Vq, Vk, mask, seed=0, dims=None):
    """Inputs in `dtype` (geometry float32), the float64 trans_coeff leaf and its SE(3) blocks (for dtc)."""
    dims = list(dims or SPLITS[d])
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, d, dtype=torch.float64, generator=gen) for n in (Nq, Nk, Nk))
    Eq, Ek = random_extrinsics(B, Vq, gen=gen), random_extrinsics(B, Vk, gen=gen)
    s = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    geo = geometry(Eq, Ek, Nq, Nk, dims, s, gen)
    m = None
    if mask is not None:
        m = torch.rand(B, Nk, generator=gen) > 0.3
        if mask == "hard":
            m[0, :64] = False
            m[1] = False
    x = [t.to(dtype) for t in (q, k, v)] + [t.detach().float() for t in geo]
    return x, dims, m, (s, geo[0], geo[1])


def _dtrans_coeff(s, q_se3, k_se3, g):
    """dL/d trans_coeff from the SE(3) block gradients g = (dq_se3, dk_se3), and what an error of at most
    one in every element of g can change it by: sum |dP/ds| (the blocks are E * mask(s), linear in s > 0,
    so sign(P) = sign(dP/ds) where dP/ds != 0)."""
    dtc = torch.autograd.grad([q_se3, k_se3], s, [g[0].double(), g[1].double()], retain_graph=True)[0]
    jac = [torch.autograd.grad(p, s, torch.sign(p.detach()), retain_graph=True)[0] for p in (q_se3, k_se3)]
    return dtc, jac


def _tol(dtype):
    return 2e-5 if dtype == torch.float32 else 4 * torch.finfo(dtype).eps


def _assert_close(names, emu_out, cpu_out, tol):
    for name, e, c in zip(names, emu_out, cpu_out):
        assert e.shape == c.shape, name
        assert not torch.isnan(e).any(), f"{name} has NaN (a read of memory no thread wrote?)"
        scale = max(1.0, c[torch.isfinite(c)].abs().max().item()) if c.numel() else 1.0
        torch.testing.assert_close(e.float(), c.float(), rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


def _run(emu, monkeypatch, kernel, dtype, d, B, H, Nq, Nk, Vq, Vk, mask, vt, seed=0, dims=None):
    """Forward and backward of the emulated kernels against the CPU op (float32 math on the same inputs)."""
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", kernel)
    x, dims, m, (s, q_se3, k_se3) = _case(dtype, d, B, H, Nq, Nk, Vq, Vk, mask, seed, dims)
    xf = [t.float() for t in x]
    scale = d ** -0.5
    out, lse = emu.gta_attention_fwd(*x, dims, m, scale, vt)
    ref_out, ref_lse = torch.ops.phasor.gta_attention_fwd(*xf, dims, m, scale, vt)
    assert out.dtype == dtype and lse.dtype == torch.float32
    _assert_close(["out", "lse"], [out, lse], [ref_out, ref_lse], _tol(dtype))
    if m is not None and not m.all(dim=1).all():
        dead = ~m.any(dim=1)  # batches whose queries see no key
        assert (out[dead] == 0).all() and (lse[dead] == -math.inf).all()

    gen = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
    o_in = ref_out.to(dtype)
    g = emu.gta_attention_bwd(grad_out, *x[:3], o_in, ref_lse, *x[3:], dims, m, scale, vt)
    ref_g = torch.ops.phasor.gta_attention_bwd(grad_out.float(), *xf[:3], o_in.float(), ref_lse, *xf[3:], dims, m,
                                               scale, vt)
    assert [t.dtype for t in g] == [dtype] * 3 + [torch.float32] * 2
    _assert_close(["dq", "dk", "dv", "dq_se3", "dk_se3"], g, ref_g, _tol(dtype))
    # trans_coeff's gradient through the SE(3) blocks (P = M_s(E), P^-1 = M_s(E^-1)): a sum with
    # cancellation, so its tolerance is what the blocks' tolerance (tol * their largest value) allows
    (dtc, _), (ref_dtc, jac) = _dtrans_coeff(s, q_se3, k_se3, g[3:]), _dtrans_coeff(s, q_se3, k_se3, ref_g[3:])
    bound = _tol(dtype) * sum(j.abs().item() * max(1.0, r.abs().max().item()) for j, r in zip(jac, ref_g[3:]))
    assert abs(dtc.item() - ref_dtc.item()) <= bound + _tol(dtype) * abs(ref_dtc.item()), (dtc, ref_dtc, bound)
    return out, lse, g


@pytest.mark.parametrize("shape", [CROSS, SELF], ids=["cross", "self"])
@pytest.mark.parametrize("d", [32, 64, 96, 128, 40])
def test_simt_float32_matches_cpu_op(emu, monkeypatch, d, shape):
    """float32 always takes the SIMT kernels (prologue, key-side, query-side, SE(3) reduction, epilogue)."""
    B, H, Nq, Nk, Vq, Vk, mask, vt = shape
    _run(emu, monkeypatch, "auto", torch.float32, d, B, H, Nq, Nk, Vq, Vk, mask, vt, seed=d)


@pytest.mark.parametrize("shape", [CROSS, SELF], ids=["cross", "self"])
@pytest.mark.parametrize("kernel", ["auto", "mma_atomic"])
@pytest.mark.parametrize("d", [32, 64, 96, 128])
@pytest.mark.parametrize("dtype", LOW, ids=["fp16", "bf16"])
def test_tensor_core_kernels_match_cpu_op(emu, monkeypatch, dtype, d, kernel, shape):
    """The tensor-core forward (on-load K~, V~: Nq <= 128) and backward (two-kernel or atomic-dQ)."""
    B, H, Nq, Nk, Vq, Vk, mask, vt = shape
    _run(emu, monkeypatch, kernel, dtype, d, B, H, Nq, Nk, Vq, Vk, mask, vt, seed=d + 1)


@pytest.mark.parametrize("kernel", KERNEL_CHOICES)
def test_every_kernel_choice(emu, monkeypatch, kernel):
    """Each PHASOR_GTA_CUDA_KERNEL value, fp16 and bf16 alternating, on a 2-query-block cross-attention case
    (Nq = 130 > 128: auto takes the pre-pass forward) with the hard mask; mma_fwd_only and simt run the
    SIMT backward (simt also the SIMT forward) on 16-bit storage."""
    dtype = LOW[KERNEL_CHOICES.index(kernel) % 2]
    _run(emu, monkeypatch, kernel, dtype, 64, 2, 1, 130, 70, 2, 1, "hard", True, seed=7)


def test_bad_kernel_choice_is_an_error(emu, monkeypatch):
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", "tensor")
    x, dims, m, _ = _case(torch.float16, 32, 1, 1, 4, 4, 1, 1, None)
    with pytest.raises(ValueError, match="PHASOR_GTA_CUDA_KERNEL"):
        emu.gta_attention_fwd(*x, dims, m, 0.2, True)


@pytest.mark.parametrize("dtype", LOW, ids=["fp16", "bf16"])
@pytest.mark.parametrize("d", [32, 64, 96, 128])
def test_prepass_and_on_load_forwards_agree_bitwise(emu, monkeypatch, dtype, d):
    """Both K~ / V~ paths use apply_chunk4 with the same rounding, so the forward outputs are the same bits.
    Nk = 140: three key tiles, so the pre-pass path refills its first buffer (tile 2)."""
    x, dims, m, _ = _case(dtype, d, 2, 1, 20, 140, 2, 2, "hard", seed=d)
    res = []
    for kernel in ("mma_onload", "mma_prepass"):
        monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", kernel)
        res.append(emu.gta_attention_fwd(*x, dims, m, d ** -0.5, True))
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])
    ref = torch.ops.phasor.gta_attention_fwd(*[t.float() for t in x], dims, m, d ** -0.5, True)
    _assert_close(["out", "lse"], res[1], ref, _tol(dtype))


@pytest.mark.parametrize("kernel", ["auto", "mma_atomic", "simt"])
@pytest.mark.parametrize("vt", [True, False])
def test_no_se3_channels(emu, monkeypatch, kernel, vt):
    """d_se3 = 0: no o~, no SE(3) reduction; the SE(3) gradients are 0."""
    _, _, g = _run(emu, monkeypatch, kernel, torch.bfloat16, 64, 1, 2, 20, 37, 1, 1, "random", vt, seed=3,
                   dims=(16, 0, 16, 32))
    assert (g[3] == 0).all() and (g[4] == 0).all()


@pytest.mark.parametrize("kernel", ["auto", "mma_atomic", "simt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_tiny_sequences(emu, monkeypatch, kernel, dtype):
    """One query, three keys: every tile is mostly padding."""
    _run(emu, monkeypatch, kernel, dtype, 32, 2, 1, 1, 3, 1, 1, None, True, seed=5)


def test_emulated_forward_feeds_emulated_backward(emu, monkeypatch):
    """The whole tensor-core chain with the kernels' own O and lse (as autograd would run it)."""
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", "auto")
    x, dims, m, _ = _case(torch.float16, 64, 2, 1, 37, 70, 1, 2, "hard", seed=11)
    xf = [t.float() for t in x]
    out, lse = emu.gta_attention_fwd(*x, dims, m, 0.125, True)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).half()
    g = emu.gta_attention_bwd(grad_out, *x[:3], out, lse, *x[3:], dims, m, 0.125, True)
    ref_out, ref_lse = torch.ops.phasor.gta_attention_fwd(*xf, dims, m, 0.125, True)
    ref_g = torch.ops.phasor.gta_attention_bwd(grad_out.float(), *xf[:3], ref_out, ref_lse, *xf[3:], dims, m, 0.125,
                                               True)
    _assert_close(["dq", "dk", "dv", "dq_se3", "dk_se3"], g, ref_g, _tol(torch.float16))


@pytest.mark.parametrize("kernel", ["auto", "mma_atomic"])
def test_misaligned_inputs(emu, monkeypatch, kernel):
    """q, k, v, dO and O starting 2 bytes past a 16-byte boundary: the host copies them to aligned memory
    for cp.async (which the emulation checks) and the 8-byte loads; results equal the aligned call's bits."""
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", kernel)
    x, dims, m, _ = _case(torch.float16, 32, 1, 2, 20, 37, 1, 1, "random", seed=9)
    grad_out = torch.randn(1, 2, 20, 32, generator=torch.Generator().manual_seed(3)).half()
    res = []
    for mis in (False, True):
        xx = [misaligned_copy(t) if mis and i < 3 else t for i, t in enumerate(x)]
        out, lse = emu.gta_attention_fwd(*xx, dims, m, 0.2, True)
        o_in, g_in = (misaligned_copy(out), misaligned_copy(grad_out)) if mis else (out, grad_out)
        res.append([out, lse, *emu.gta_attention_bwd(g_in, *xx[:3], o_in, lse, *xx[3:], dims, m, 0.2, True)])
    for a, b in zip(*res):
        if kernel == "mma_atomic":  # float atomics: the float32 sum order may vary, flipping a float16 rounding
            eps = torch.finfo(torch.float16).eps
            torch.testing.assert_close(a, b, rtol=eps, atol=eps * b[torch.isfinite(b)].abs().max().item())
        else:
            assert torch.equal(a, b)
