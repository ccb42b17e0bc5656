"""Tensor-core GTA backward (csrc/gta/gta_cuda_mma_bwd.cu, float16/bfloat16) on CUDA: gradients of q, k, v,
the SE(3) blocks and trans_coeff against the float64 reference (FlashAttention's rule, as the other CUDA
tests), against the SIMT backward (PHASOR_GTA_CUDA_KERNEL=mma_fwd_only: the same forward), bitwise
repeatability, masks with fully masked rows and tiles, misaligned inputs, and the SIMT fallbacks. The
accuracy tests run both backwards: the deterministic two-kernel default ("auto") and the one-kernel
atomic-dQ variant (PHASOR_GTA_CUDA_KERNEL=mma_atomic), under the same tolerances.

The host-only index check of both backward kernels is tests/gta/mma_layout_check.cu (see its header)."""
import pytest
import torch

from gta_cases import geometry, make_inputs, random_extrinsics
from helpers import assert_error_within, compare_with_reference, misaligned_copy, requires_cuda
from phasor.gta import ops, reference, reps

pytestmark = requires_cuda

DTYPES = [torch.float16, torch.bfloat16]
SPLITS = {32: (4, 8, 8, 12), 64: (0, 32, 0, 32), 96: (8, 16, 24, 48), 128: (0, 64, 16, 48)}
SHAPES = [  # B, H, Nq, Nk, Vq, Vk: tile tails (1, 37, 200), cross attention, several views
    (2, 3, 37, 200, 1, 4),
    (1, 2, 200, 37, 4, 1),
    (2, 2, 1, 37, 1, 1),
]  # Nk = 1: test_mma_backward_single_key
FROZEN = (5, 6, 7, 8, 9)  # SO(3)/SO(2) geometry is constant (detached)
KERNELS = ["auto", "mma_atomic"]  # the deterministic default and the atomic-dQ variant (same forward)


def cuda_inputs(dtype, B, H, Nq, Nk, dims, Vq, Vk, mask=True, seed=0):
    args, dims, m = make_inputs(B, H, Nq, Nk, dims, Vq, Vk, dtype=torch.float64, seed=seed, mask=mask)
    args = [a.to("cuda", dtype if i < 3 else torch.float32) for i, a in enumerate(args)]
    return args, dims, (None if m is None else m.to("cuda"))


def grads_of(monkeypatch, kernel, args, dims, mask, v_transform=True, scale=None, seed=0):
    """(dq, dk, dv, dq_se3, dk_se3) of sum(out * cotangent) under PHASOR_GTA_CUDA_KERNEL=kernel."""
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", kernel)
    leaves = [a.detach().clone().requires_grad_(i < 5) for i, a in enumerate(args)]
    out = ops.gta_attention(*leaves, dims, mask, scale, v_transform)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    cot = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    g = torch.autograd.grad(out, leaves[:5], cot)
    torch.cuda.synchronize()
    return g


def ref_grads(args, dims, mask, v_transform=True, scale=None, seed=0):
    """The same gradients from the plain-PyTorch reference at the inputs' precision."""
    leaves = [a.detach().clone().requires_grad_(i < 5) for i, a in enumerate(args)]
    out = reference.gta_attention_ref(*leaves, dims, mask, scale, v_transform)[0]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    cot = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    return torch.autograd.grad(out, leaves[:5], cot, allow_unused=True)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", sorted(SPLITS))
@pytest.mark.parametrize("shape", SHAPES)
def test_mma_backward_matches_reference(monkeypatch, kernel, dtype, d, shape):
    B, H, Nq, Nk, Vq, Vk = shape
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", kernel)
    args, dims, mask = cuda_inputs(dtype, B, H, Nq, Nk, SPLITS[d], Vq, Vk, mask=Nk > 1, seed=d + Nq)
    compare_with_reference(lambda *a: ops.gta_attention(*a, dims, mask)[None],
                           lambda *a: reference.gta_attention_ref(*a, dims, mask)[0][None], args, dtype=dtype,
                           frozen=FROZEN)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", sorted(SPLITS))
def test_mma_backward_single_key(monkeypatch, kernel, dtype, d):
    """Nk = 1: the softmax is constant, so the true dq, dk and dS are 0 and FlashAttention's rule has no
    yardstick for them (a plain fp16 run gets exact zeros, every kernel that forms dP - delta from rounded
    operands gets rounding noise); dv and the query-side SE(3) gradient, which are not 0, follow the rule."""
    args, dims, _ = cuda_inputs(dtype, 2, 2, 37, 1, SPLITS[d], 1, 1, mask=False, seed=d)
    g = grads_of(monkeypatch, kernel, args, dims, None)
    g_low, g_t = ref_grads(args, dims, None), ref_grads([a.double() for a in args], dims, None)
    assert all(torch.isfinite(x).all() for x in g)
    assert_error_within([g[2]], [g_low[2]], [g_t[2]], "dv")
    assert_error_within([g[3]], [g_low[3]], [g_t[3]], "dq_se3")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128])
def test_mma_backward_v_transform_false_and_scale(monkeypatch, kernel, dtype, d):
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", kernel)
    args, dims, mask = cuda_inputs(dtype, 2, 2, 70, 150, SPLITS[d], 2, 3, seed=d + 5)
    compare_with_reference(lambda *a: ops.gta_attention(*a, dims, mask, 0.2, False)[None],
                           lambda *a: reference.gta_attention_ref(*a, dims, mask, 0.2, False)[0][None], args,
                           dtype=dtype, frozen=FROZEN)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [32, 96])
def test_mma_backward_trans_coeff(monkeypatch, kernel, dtype, d):
    """trans_coeff's gradient through the SE(3) blocks (o~ and dq~ on the query side, dk~, dv~ on the key side)."""
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", kernel)
    args, dims, mask = cuda_inputs(dtype, 2, 2, 45, 90, SPLITS[d], 3, 2, seed=d + 11)
    gen = torch.Generator().manual_seed(d)
    Eq, Ek = random_extrinsics(2, 3, gen=gen).cuda(), random_extrinsics(2, 2, gen=gen).cuda()

    def from_poses(attn):
        def f(q, k, v, s, *rest):
            q_se3, _ = reps.se3_blocks(Eq.to(s.dtype), s)
            _, k_se3 = reps.se3_blocks(Ek.to(s.dtype), s)
            return attn(q, k, v, q_se3, k_se3, *rest, dims, mask)[None]
        return f

    s = torch.tensor(0.6, device="cuda")
    compare_with_reference(from_poses(ops.gta_attention), from_poses(lambda *a: reference.gta_attention_ref(*a)[0]),
                           [*args[:3], s, *args[5:]], dtype=dtype, frozen=(4, 5, 6, 7, 8))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("v_transform", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", sorted(SPLITS))
def test_mma_backward_matches_simt(monkeypatch, kernel, dtype, d, v_transform):
    """The same (mma) forward, then the tensor-core or the SIMT backward: they agree as closely as a plain
    same-precision PyTorch backward agrees with the SIMT one."""
    args, dims, mask = cuda_inputs(dtype, 2, 3, 100, 130, SPLITS[d], 4, 2, seed=3 * d)
    g_s = grads_of(monkeypatch, "mma_fwd_only", args, dims, mask, v_transform, 0.3)
    g_m = grads_of(monkeypatch, kernel, args, dims, mask, v_transform, 0.3)
    g_low = ref_grads(args, dims, mask, v_transform, 0.3)
    assert not torch.equal(g_m[0], g_s[0]), "expected the mma backward (its rounding differs from the SIMT one's)"
    names = ["dq", "dk", "dv", "dq_se3", "dk_se3"]
    for name, m, s, lo in zip(names, g_m, g_s, g_low):
        assert_error_within([m], [lo], [s.double()], f"{name} mma vs simt")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128])
def test_mma_backward_is_bitwise_repeatable(monkeypatch, dtype, d):
    """No atomics: two backward calls (several key and query blocks and tiles) give the same bits."""
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", "auto")
    args, dims, mask = cuda_inputs(dtype, 2, 2, 300, 500, SPLITS[d], 3, 5, seed=7)
    out, lse = ops.gta_attention(*args, dims, mask, return_lse=True)
    gO = torch.randn_like(out)
    a = torch.ops.phasor.gta_attention_bwd(gO, *args[:3], out, lse, *args[3:], dims, mask, d ** -0.5, True)
    b = torch.ops.phasor.gta_attention_bwd(gO, *args[:3], out, lse, *args[3:], dims, mask, d ** -0.5, True)
    for x, y in zip(a, b):
        assert torch.isfinite(x).all() and torch.equal(x, y)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mma_backward_fully_masked_rows_and_tiles(monkeypatch, kernel, dtype):
    """Batch 0 sees no key (dq 0, masked keys get dk = dv = 0); batch 1 sees only keys of the last partial
    key tile, so the first key tiles of every query block are fully masked."""
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", kernel)
    args, dims, _ = cuda_inputs(dtype, 2, 2, 40, 150, SPLITS[64], 2, 3, mask=False)
    mask = torch.zeros(2, 150, dtype=torch.bool, device="cuda")
    mask[1, 140:147] = True
    g = grads_of(monkeypatch, kernel, args, dims, mask)
    assert (g[0][0] == 0).all()
    for gk in (g[1], g[2]):
        assert (gk[0] == 0).all() and (gk[1][:, ~mask[1]] == 0).all()
    compare_with_reference(lambda *a: ops.gta_attention(*a, dims, mask)[None],
                           lambda *a: reference.gta_attention_ref(*a, dims, mask)[0][None], args, dtype=dtype,
                           frozen=FROZEN)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mma_backward_misaligned_inputs(monkeypatch, dtype):
    """Contiguous views 2 bytes into their storage (copied to aligned buffers by the host) give the bits of
    the plain tensors."""
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", "auto")
    args, dims, mask = cuda_inputs(dtype, 2, 2, 50, 70, SPLITS[64], 2, 2)
    out, lse = ops.gta_attention(*args, dims, mask, return_lse=True)
    gO = torch.randn_like(out)

    want = torch.ops.phasor.gta_attention_bwd(gO, *args[:3], out, lse, *args[3:], dims, mask, 0.125, True)
    got = torch.ops.phasor.gta_attention_bwd(misaligned_copy(gO), *[misaligned_copy(a) for a in args[:3]], misaligned_copy(out), lse,
                                             *args[3:], dims, mask, 0.125, True)
    for x, y in zip(got, want):
        assert torch.equal(x, y)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", sorted(SPLITS))
def test_mma_backward_self_attention(monkeypatch, kernel, dtype, d):
    """Self attention: one token set (Nq = Nk, the same views, poses and positions on both sides), with a
    key padding mask; several key blocks add into every query tile under mma_atomic."""
    B, H, N, V = 2, 2, 150, 3
    args, dims, mask = cuda_inputs(dtype, B, H, N, N, SPLITS[d], V, V, seed=d + 1)
    gen = torch.Generator().manual_seed(d)
    E = random_extrinsics(B, V, gen=gen)
    q_se3, k_se3, q_so3, k_so3, pos, _, freqs = geometry(E, E, N, N, dims, torch.tensor(0.7, dtype=torch.float64),
                                                         gen)
    geo = [t.to("cuda", torch.float32) for t in (q_se3, k_se3, q_so3, k_so3, pos, pos, freqs)]
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", kernel)
    compare_with_reference(lambda *a: ops.gta_attention(*a, dims, mask)[None],
                           lambda *a: reference.gta_attention_ref(*a, dims, mask)[0][None], [*args[:3], *geo],
                           dtype=dtype, frozen=FROZEN)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [64, 128])
def test_mma_atomic_backward_matches_deterministic(monkeypatch, dtype, d):
    """mma_atomic against the deterministic default on the same forward: equal up to the float32 sum order
    of dq~ (and o~); dk and dv come from the same key-side arithmetic, so their bits agree."""
    args, dims, mask = cuda_inputs(dtype, 2, 2, 300, 500, SPLITS[d], 3, 5, seed=7)
    g_d = grads_of(monkeypatch, "auto", args, dims, mask)
    g_a = grads_of(monkeypatch, "mma_atomic", args, dims, mask)
    g_low = ref_grads(args, dims, mask)
    for name, a, det, lo in zip(["dq", "dk", "dv", "dq_se3", "dk_se3"], g_a, g_d, g_low):
        assert torch.isfinite(a).all()
        assert_error_within([a], [lo], [det.double()], f"{name} mma_atomic vs deterministic")
    assert torch.equal(g_a[1], g_d[1]) and torch.equal(g_a[2], g_d[2])


def test_mma_backward_falls_back_to_simt(monkeypatch):
    """float32 and head dim 48 keep the SIMT backward under auto (the same bits as simt)."""
    for dtype, split in ((torch.float32, SPLITS[32]), (torch.bfloat16, (0, 24, 0, 24))):
        args, dims, mask = cuda_inputs(dtype, 1, 2, 20, 30, split, 1, 1)
        a = grads_of(monkeypatch, "simt", args, dims, mask)
        b = grads_of(monkeypatch, "auto", args, dims, mask)
        for x, y in zip(a, b):
            assert torch.equal(x, y)
