"""Tensor-core GTA forward (csrc/gta/gta_cuda_mma.cu, float16/bfloat16) on CUDA: against the float64
reference (FlashAttention's rule, as the SIMT kernel's CUDA test), against the SIMT kernel, bitwise
between its two K/V paths (transform on load / pre-pass), and the SIMT backward fed by its O and lse.

PHASOR_GTA_CUDA_KERNEL (read on every call) selects the kernel: simt, mma_onload, mma_prepass, auto.
The host-only index check of the kernel is tests/gta/mma_layout_check.cu (see its header)."""
import pytest
import torch

from gta_cases import make_inputs
from helpers import assert_error_within, compare_with_reference, misaligned_copy, requires_cuda
from phasor.gta import ops, reference

pytestmark = requires_cuda

DTYPES = [torch.float16, torch.bfloat16]
MMA = ["mma_onload", "mma_prepass"]
SPLITS = {32: (4, 8, 8, 12), 64: (0, 32, 0, 32), 96: (8, 16, 24, 48), 128: (0, 64, 16, 48)}
SHAPES = [  # B, H, Nq, Nk, Vq, Vk: tile tails, cross attention, several views, B*H > 1
    (2, 3, 37, 200, 1, 4),
    (1, 2, 200, 37, 4, 1),
    (2, 1, 1, 1, 1, 1),
    (1, 3, 130, 64, 2, 2),     # 3 query blocks (auto takes the pre-pass), one full key tile
]
FROZEN = (5, 6, 7, 8, 9)  # SO(3)/SO(2) geometry is constant (detached)


def cuda_inputs(dtype, B, H, Nq, Nk, dims, Vq, Vk, mask=True, seed=0):
    args, dims, m = make_inputs(B, H, Nq, Nk, dims, Vq, Vk, dtype=torch.float64, seed=seed, mask=mask)
    args = [a.to("cuda", dtype if i < 3 else torch.float32) for i, a in enumerate(args)]
    return args, dims, (None if m is None else m.to("cuda"))


def run(monkeypatch, kernel, args, dims, mask, scale=None, v_transform=True):
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", kernel)
    out, lse = ops.gta_attention(*args, dims, mask, scale, v_transform, return_lse=True)
    torch.cuda.synchronize()
    return out, lse


def check_lse(lse, lse_lowp, lse_truth):
    """-inf exactly where the truth has it (queries with no key); elsewhere FlashAttention's rule."""
    none = torch.isneginf(lse_truth)
    assert torch.equal(torch.isneginf(lse), none), "lse is -inf exactly for the queries that see no key"
    assert torch.isfinite(lse[~none]).all()
    assert_error_within([lse[~none]], [lse_lowp[~none]], [lse_truth[~none]], "lse")


def refs(args, dims, mask, scale=None, v_transform=True):
    """(same-precision reference, float64 truth) of (out, lse)."""
    low = reference.gta_attention_ref(*args, dims, mask, scale, v_transform)
    truth = reference.gta_attention_ref(*[a.double() for a in args], dims, mask, scale, v_transform)
    return low, truth


@pytest.mark.parametrize("kernel", MMA)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", sorted(SPLITS))
@pytest.mark.parametrize("shape", SHAPES)
def test_mma_forward_matches_reference(monkeypatch, kernel, dtype, d, shape):
    B, H, Nq, Nk, Vq, Vk = shape
    args, dims, mask = cuda_inputs(dtype, B, H, Nq, Nk, SPLITS[d], Vq, Vk, mask=Nk > 1, seed=d + Nq)
    out, lse = run(monkeypatch, kernel, args, dims, mask)
    assert out.shape == args[0].shape and out.dtype == dtype and lse.shape == (B, H, Nq) and lse.dtype == torch.float32
    assert torch.isfinite(out).all()
    (o_low, l_low), (o_t, l_t) = refs(args, dims, mask)
    assert_error_within([out], [o_low], [o_t], "out")
    check_lse(lse, l_low, l_t)


@pytest.mark.parametrize("kernel", ["mma_fwd_only", *MMA])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", sorted(SPLITS))
def test_backward_through_mma_forward(monkeypatch, kernel, dtype, d):
    """A backward that recomputes from the mma forward's O and lse: gradients of q, k, v and the SE(3)
    blocks against the float64 reference. mma_fwd_only: the SIMT backward; mma_onload / mma_prepass pick
    the forward's K/V path and route the backward to the tensor-core kernels as well."""
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", kernel)
    args, dims, mask = cuda_inputs(dtype, 2, 2, 70, 150, SPLITS[d], 2, 3, seed=d)
    mask[0, :] = False  # batch 0: every query sees no key
    compare_with_reference(lambda *a: ops.gta_attention(*a, dims, mask)[None],
                           lambda *a: reference.gta_attention_ref(*a, dims, mask)[0][None], args, dtype=dtype,
                           frozen=FROZEN)


@pytest.mark.parametrize("v_transform", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", sorted(SPLITS))
def test_mma_matches_simt(monkeypatch, dtype, d, v_transform):
    """The two CUDA kernels agree as closely as a plain same-precision PyTorch run agrees with the SIMT
    kernel (which keeps q~, k~, v~, p in float32: the mma path rounds them to the storage type)."""
    args, dims, mask = cuda_inputs(dtype, 2, 3, 100, 130, SPLITS[d], 4, 2, seed=3 * d)
    o_s, l_s = run(monkeypatch, "simt", args, dims, mask, 0.3, v_transform)
    o_low, l_low = reference.gta_attention_ref(*args, dims, mask, 0.3, v_transform)
    for kernel in MMA:
        o_m, l_m = run(monkeypatch, kernel, args, dims, mask, 0.3, v_transform)
        assert not torch.equal(o_m, o_s), "expected the mma path (its rounding differs from the SIMT kernel's)"
        assert_error_within([o_m], [o_low], [o_s.double()], f"{kernel} out vs simt")
        check_lse(l_m, l_low, l_s.double())


@pytest.mark.parametrize("v_transform", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", sorted(SPLITS))
def test_onload_and_prepass_give_the_same_bits(monkeypatch, dtype, d, v_transform):
    """Both K/V paths round the same float32 transform (dev::apply_chunk4) to the storage type."""
    args, dims, mask = cuda_inputs(dtype, 2, 2, 90, 257, SPLITS[d], 3, 1, seed=d + 1)
    a = run(monkeypatch, "mma_onload", args, dims, mask, None, v_transform)
    b = run(monkeypatch, "mma_prepass", args, dims, mask, None, v_transform)
    c = run(monkeypatch, "auto", args, dims, mask, None, v_transform)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)


@pytest.mark.parametrize("kernel", MMA)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mma_fully_masked_rows_and_masked_tiles(monkeypatch, kernel, dtype):
    """Batch 0 sees no key (out 0, lse -inf); batch 1 sees only keys of the last, partial tile, so its
    first tiles are fully masked (the running max stays -inf across tiles)."""
    args, dims, _ = cuda_inputs(dtype, 2, 2, 40, 150, SPLITS[64], 2, 3, mask=False)
    mask = torch.zeros(2, 150, dtype=torch.bool, device="cuda")
    mask[1, 140:147] = True
    out, lse = run(monkeypatch, kernel, args, dims, mask)
    assert (out[0] == 0).all() and torch.isneginf(lse[0]).all()
    assert torch.isfinite(out).all() and torch.isfinite(lse[1]).all()
    (o_low, l_low), (o_t, l_t) = refs(args, dims, mask)
    assert_error_within([out], [o_low], [o_t], "out")
    check_lse(lse, l_low, l_t)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mma_misaligned_and_noncontiguous_inputs(monkeypatch, dtype):
    """A contiguous view that starts 2 bytes into its storage (copied to an aligned buffer by the host) and
    a strided view (made contiguous) give the bits of the plain tensors."""
    args, dims, mask = cuda_inputs(dtype, 2, 2, 50, 70, SPLITS[64], 2, 2)
    want = run(monkeypatch, "auto", args, dims, mask)

    def strided(t):
        buf = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        buf[..., ::2] = t
        return buf[..., ::2]
    for f in (misaligned_copy, strided):
        got = run(monkeypatch, "auto", [f(a) for a in args[:3]] + args[3:], dims, mask)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_kernel_choice_rejects_unknown_values_and_float32_keeps_simt(monkeypatch):
    args, dims, mask = cuda_inputs(torch.float16, 1, 2, 8, 8, SPLITS[32], 1, 1)
    monkeypatch.setenv("PHASOR_GTA_CUDA_KERNEL", "tensorcore")
    with pytest.raises((ValueError, RuntimeError), match="PHASOR_GTA_CUDA_KERNEL"):
        ops.gta_attention(*args, dims, mask)
    f32 = [a.float() for a in args]
    a = run(monkeypatch, "simt", f32, dims, mask)
    b = run(monkeypatch, "mma_onload", f32, dims, mask)  # no float32 tensor-core kernel: SIMT
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    d48 = cuda_inputs(torch.bfloat16, 1, 2, 8, 8, (0, 24, 0, 24), 1, 1)
    a = run(monkeypatch, "simt", *d48)
    b = run(monkeypatch, "mma_prepass", *d48)  # head dim 48: no tensor-core kernel, SIMT
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
