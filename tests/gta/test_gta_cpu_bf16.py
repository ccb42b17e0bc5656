"""GTA attention on CPU with bfloat16 / float16 storage (float32 math and geometry, float32 lse).

The CPU kernel converts q, k, v, dO and O to float32 where it already copies them (the transforms into
q~, k~, v~, do~) and rounds the results once where it stores them, so on the same inputs its math is the
float32 op's, instruction for instruction. Hence the op-level checks are exact: every low-precision
result must equal the float32 op's result rounded to the storage dtype (0 ulps), and lse and the SE(3)
gradients (float32 outputs) must be bit-identical.
"""
import itertools

import pytest
import torch

from gta_cases import make_inputs
from helpers import check_opcheck, clone_inputs, cpu_isa, noncontiguous  # noqa: F401 (cpu_isa is a fixture)
from phasor.gta import ops, reference

LOW = [torch.bfloat16, torch.float16]

CASES = {  # B, H, Nq, Nk, dims, Vq, Vk, key mask
    "self": (2, 2, 40, 40, (4, 8, 8, 12), 2, 2, False),
    "cross-mask": (2, 3, 33, 150, (0, 16, 8, 8), 3, 6, True),      # Nq != Nk, query and key tile tails
    "tiny": (1, 1, 1, 1, (0, 4, 0, 4), 1, 1, False),
    "odd-trivial": (2, 1, 7, 13, (12, 0, 0, 0), 1, 1, True),       # plain attention, d = 12
    "long-keys": (1, 2, 24, 520, (0, 48, 8, 40), 2, 2, True),      # d = 96, 64-byte AVX-512 build
}

# every storage dtype x case x v_transform (the op-level exact checks run this under each ISA build)
EXACT_GRID = pytest.mark.parametrize("dtype,name,v_transform", list(itertools.product(LOW, CASES, (True, False))))


def _low_and_f32(args, dtype):
    """q, k, v in dtype and geometry in float32; and the same values all in float32."""
    low = [a.to(dtype if i < 3 else torch.float32) for i, a in enumerate(args)]
    return low, [a.float() for a in low]


def _case(name, dtype, seed=0):
    B, H, Nq, Nk, dims, Vq, Vk, mask = CASES[name]
    args, dims, key_mask = make_inputs(B, H, Nq, Nk, dims, Vq, Vk, seed=seed, mask=mask)
    low, f32 = _low_and_f32(args, dtype)
    return low, f32, dims, key_mask


def _assert_rounded(got, want32, what):
    """got is exactly want32 rounded to got's dtype (bit for bit when that is float32)."""
    torch.testing.assert_close(got, want32.to(got.dtype), rtol=0, atol=0, msg=lambda m: f"{what}\n{m}")


@EXACT_GRID
def test_forward_is_rounded_float32(cpu_isa, dtype, name, v_transform):
    low, f32, dims, mask = _case(name, dtype)
    out, lse = torch.ops.phasor.gta_attention_fwd(*low, dims, mask, 0.3, v_transform)
    out32, lse32 = torch.ops.phasor.gta_attention_fwd(*f32, dims, mask, 0.3, v_transform)
    assert out.dtype == dtype and lse.dtype == torch.float32
    _assert_rounded(out, out32, "out")
    _assert_rounded(lse, lse32, "lse")


def _bwd(go, args, out, lse, dims, mask, v_transform):
    return torch.ops.phasor.gta_attention_bwd(go, *args[:3], out, lse, *args[3:], dims, mask, 0.3, v_transform)


@EXACT_GRID
def test_backward_is_rounded_float32(cpu_isa, dtype, name, v_transform):
    """The backward op on the same stored inputs (out, dO in dtype, lse float32) as the float32 op."""
    low, f32, dims, mask = _case(name, dtype)
    out, lse = torch.ops.phasor.gta_attention_fwd(*low, dims, mask, 0.3, v_transform)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    grads = _bwd(go, low, out, lse, dims, mask, v_transform)
    want = _bwd(go.float(), f32, out.float(), lse, dims, mask, v_transform)
    for what, g, w in zip(("dq", "dk", "dv", "dq_se3", "dk_se3"), grads, want):
        assert g.dtype == (dtype if what in ("dq", "dk", "dv") else torch.float32), what
        _assert_rounded(g, w, what)


def test_singular_query_block_path_is_rounded_float32():
    """One singular query P: the backward recomputes o~ = P V~ (in float32 scratch) instead of P^-1 O."""
    low, f32, dims, mask = _case("cross-mask", torch.bfloat16)
    for a in (low, f32):
        a[3][1, 2, 3] = 0
    out, lse = torch.ops.phasor.gta_attention_fwd(*low, dims, mask, 0.3, True)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    want = _bwd(go.float(), f32, out.float(), lse, dims, mask, True)
    for g, w in zip(_bwd(go, low, out, lse, dims, mask, True), want):
        _assert_rounded(g, w, "grad")


@pytest.mark.parametrize("dtype", LOW)
def test_noncontiguous_inputs(dtype):
    low, f32, dims, mask = _case("cross-mask", dtype)
    nc = [noncontiguous(a) for a in low]
    out, lse = torch.ops.phasor.gta_attention_fwd(*nc, dims, mask, 0.3, True)
    out32, lse32 = torch.ops.phasor.gta_attention_fwd(*f32, dims, mask, 0.3, True)
    _assert_rounded(out, out32, "out")
    go = noncontiguous(torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(dtype))
    grads = _bwd(go, nc, noncontiguous(out), noncontiguous(lse), dims, mask, True)
    for g, w in zip(grads, _bwd(go.float(), f32, out.float(), lse, dims, mask, True)):
        _assert_rounded(g, w, "grad")


def _stored_out_shift(args32, dims, mask, go, out_low, out32):
    """What the backward's use of the stored (rounded) O changes in the gradients, to first order (which
    is exact: both uses are linear in O), computed in float64 by the reference independently of the
    kernel. (1) D_i = dO_i . O_i moves by delta_i = dO_i . (O_stored - O)_i, which shifts dS_ij by
    -P_ij delta_i: since d lse_i / d s_ij = P_ij, that is the gradient of -sum_i delta_i lse_i.
    (2) The query SE(3) blocks' gradient sums dO o~^T with o~ = P^-1 O_stored: plus dO (P^-1 dO_err)^T."""
    x64 = [a.detach().double().requires_grad_(i < 5) for i, a in enumerate(args32)]
    _, lse = reference.gta_attention_ref(*x64, dims, mask)
    err = out_low.double() - out32.double()
    delta = (go.double() * err).sum(-1)
    shift = torch.autograd.grad(lse, x64[:5], -delta, allow_unused=True)  # lse does not depend on v
    shift = [torch.zeros_like(x) if g is None else g for g, x in zip(shift, x64)]
    B, H, N, _ = err.shape
    V, lo, n = args32[3].shape[1], dims[0], dims[1]
    chunks = lambda x: x[..., lo:lo + n].reshape(B, H, V, N // V, n // 4, 4)  # noqa: E731
    o_err = torch.einsum("bvij,bhvtcj->bhvtci", torch.linalg.inv(x64[3].detach()), chunks(err))
    shift[3] = shift[3] + torch.einsum("bhvtci,bhvtcj->bvij", chunks(go.double()), o_err)
    return shift


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", ["self", "cross-mask", "long-keys"])
def test_autograd_matches_float32(dtype, name):
    """End to end (autograd through the public wrapper) against float32 autograd on the same rounded
    inputs. The forward is exact (rounded once). The gradients differ from float32's by the stored O
    (out is rounded to dtype before the backward sees it; _stored_out_shift gives its effect exactly)
    and by one rounding of each stored gradient: |g - (g32 + shift)| <= u |g32 + shift| (u = 2^-8
    bf16, 2^-11 fp16; 0 for the float32 SE(3) gradients), plus float32 evaluation noise, 2^-18 of the
    tensor's largest entry (the same sums in another order: up to 6e-7 of it seen; without the shift
    the excess is 1e-5 to 7e-3)."""
    u = torch.finfo(dtype).eps / 2  # unit roundoff
    low, f32, dims, mask = _case(name, dtype, seed=1)
    go = torch.randn(low[0].shape, generator=torch.Generator().manual_seed(6)).to(dtype)
    results = []
    for args, g in ((low, go), (f32, go.float())):
        leaves = clone_inputs(args[:5], True)
        out = ops.gta_attention(*leaves, *args[5:], dims, mask)
        results.append((out, torch.autograd.grad(out, leaves, g)))
    (out, grads), (out32, grads32) = results
    _assert_rounded(out, out32, "out")
    shift = _stored_out_shift(f32, dims, mask, go, out, out32)
    for what, g, g32, sh in zip(("dq", "dk", "dv", "dq_se3", "dk_se3"), grads, grads32, shift):
        stored = what in ("dq", "dk", "dv")
        assert g.dtype == (dtype if stored else torch.float32), what
        want = g32.double() + sh
        bound = (u if stored else 0) * want.abs() + 2.0 ** -18 * want.abs().max()
        excess = ((g.double() - want).abs() - bound).max().item()
        assert excess <= 0, f"{what}: error exceeds the bound by {excess:.3e} (max |g| {want.abs().max():.3e})"


@pytest.mark.parametrize("dtype", LOW)
def test_opcheck(dtype):
    args, dims, mask = make_inputs(1, 2, 4, 6, (4, 8, 8, 4), 2, 3, mask=True)
    low, _ = _low_and_f32(args, dtype)
    check_opcheck(torch.ops.phasor.gta_attention_fwd, [*low, dims, mask, 0.2, True], frozen=(5, 6, 7, 8, 9))
    check_opcheck(torch.ops.phasor.gta_attention_fwd, [*low, dims, None, 0.2, False], frozen=(5, 6, 7, 8, 9))


def test_compile_fullgraph_bf16():
    """torch.compile(fullgraph=True) around the op in bf16 equals eager bit for bit, forward and backward."""
    low, _, dims, mask = _case("cross-mask", torch.bfloat16)

    def f(q, k, v, q_se3, k_se3, *rest):
        return (ops.gta_attention(q, k, v, q_se3, k_se3, *rest, dims, mask) * 2).float().square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    ge, gc = [], []
    for fn, store in ((f, ge), (compiled, gc)):
        leaves = clone_inputs(low[:5], True)
        loss = fn(*leaves, *low[5:])
        store.extend([loss, *torch.autograd.grad(loss, leaves)])
    for a, b in zip(gc, ge):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_low_precision_dtype_contract_errors_name_the_argument():
    from helpers import assert_bad_input
    low, _, dims, mask = _case("self", torch.bfloat16)
    q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs = low
    f = ops.gta_attention
    assert_bad_input(f, q, k, v, q_se3.bfloat16(), *low[4:], dims, names="q_se3")   # geometry must be float32
    assert_bad_input(f, q, k, v, *low[3:9], freqs.bfloat16(), dims, names="freqs")
    assert_bad_input(f, q, k.float(), v, *low[3:], dims, names="k")                  # mixed storage dtypes
    assert_bad_input(f, q, k, v.half(), *low[3:], dims, names="v")
    out, lse = torch.ops.phasor.gta_attention_fwd(*low, dims, None, 0.3, True)
    bwd = torch.ops.phasor.gta_attention_bwd
    assert_bad_input(bwd, out, q, k, v, out, lse.bfloat16(), *low[3:], dims, None, 0.3, True, names="lse")
    assert_bad_input(bwd, out.float(), q, k, v, out, lse, *low[3:], dims, None, 0.3, True, names="grad_out")
