"""The register-tiled wave-RNN CUDA kernels (csrc/wave_rnn/wave_rnn_cuda_fast.cuh) against the block
kernels (PHASOR_WAVE_CUDA_KERNEL=block), the CPU op and the float64 reference.

The fast kernels apply to the plain op with f = 3: forward for c <= 32 (c <= 16 in float64),
backward for c <= 32 (c <= 8 in float64; above c = 16 as two thread teams); other shapes, and
those whose shared memory exceeds the device's, fall back to the block kernels, so every case here
is valid either way. The index math is also emulated on the host
(tests/wave_rnn/test_wave_rnn_cuda_fast_emulation.py).

float32 gradients with relu are compared in float64 or with tanh/identity: two float32 runs that
sum in different orders can flip the activation mask of a near-zero pre-activation and move single
gradient entries by O(1) (as the benchmark's check notes).
"""
import pytest
import torch

from helpers import LONG_REDUCTION_TOLERANCES, TOLERANCES, compare_with_reference, misaligned_copy, requires_cuda
from phasor.wave_rnn import ops, reference as ref

pytestmark = requires_cuda

ENV = "PHASOR_WAVE_CUDA_KERNEL"
LOW = (torch.float16, torch.bfloat16)


def inputs(shape, dtype, seed=0, device="cuda"):
    T, B, c, n = shape
    g = torch.Generator().manual_seed(seed)

    def rand(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    pdt = torch.float32 if dtype in LOW else dtype
    # states stay O(1) over long sequences: a contraction near the paper's shift init
    w = torch.randn(c, c, 3, generator=g, dtype=torch.float64) * (0.3 / (3 * c) ** 0.5)
    w[torch.arange(c), torch.arange(c), 2] += 0.7
    return dict(u=rand(T, B, c, n, scale=0.5), weight=w.to(device=device, dtype=pdt),
                bias=rand(c, scale=0.1).to(pdt), h0=rand(B, c, n))


def run(monkeypatch, kernel, d, act, return_all=True, grad=True, h0=True, checkpoint_every=None, seed=1):
    """Outputs and, with grad, the gradients of (u, weight, bias[, h0]) under a fixed cotangent."""
    monkeypatch.setenv(ENV, kernel)
    leaves = [d["u"], d["weight"], d["bias"]] + ([d["h0"]] if h0 else [])
    leaves = [t.detach().clone().requires_grad_(grad) for t in leaves]
    kw = {} if checkpoint_every is None else {"checkpoint_every": checkpoint_every}
    out = ops.wave_rnn(leaves[0], leaves[1], leaves[2], leaves[3] if h0 else None, act, return_all=return_all, **kw)
    if not grad:
        return [out.detach()]
    gen = torch.Generator().manual_seed(seed)
    cot = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    return [out.detach(), *torch.autograd.grad(out, leaves, cot)]


def tol(dtype):
    return TOLERANCES[torch.float64] if dtype == torch.float64 else LONG_REDUCTION_TOLERANCES[dtype]


def assert_all_close(got, want, dtype, what):
    rtol, atol = tol(dtype)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a.double().cpu(), b.double().cpu(), rtol=rtol, atol=atol,
                                   msg=lambda m, i=i: f"{what} [{i}]\n{m}")


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (T, B, c, n): the benchmark's layer, c = 1/3/16/24/32, odd and tiny rings, T = 1, several tiles per
# thread (c = 16, n = 256: 4 tiles; c = 1, n = 1030: 258 tiles over 256 threads; the two-team
# backward at c = 24, n = 65: 17 tiles over 5 groups; c = 32, n = 100: 25 tiles over 4 groups,
# 192 KB of shared memory in float32, fast on H100/H200)
SHAPES = [(9, 3, 16, 64), (7, 2, 1, 5), (6, 2, 3, 7), (5, 2, 16, 65), (4, 2, 32, 64), (3, 2, 32, 65),
          (1, 3, 16, 64), (1, 1, 3, 5), (4, 1, 16, 256), (3, 2, 1, 1030), (5, 2, 5, 1), (4, 2, 4, 2),
          (5, 2, 24, 65), (3, 2, 24, 8), (3, 1, 32, 100), (2, 2, 17, 6)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["relu", "tanh", "identity"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_forward_matches_block_and_truth(shape, act, dtype, monkeypatch):
    d = inputs(shape, dtype)
    for return_all in (True, False):
        fast = run(monkeypatch, "auto", d, act, return_all, grad=False)
        block = run(monkeypatch, "block", d, act, return_all, grad=False)
        truth = ref.wave_rnn_ref(*[d[k].double() for k in ("u", "weight", "bias", "h0")], act, return_all)
        assert fast[0].dtype == dtype and fast[0].shape == truth.shape
        assert_all_close(fast, [truth], dtype, f"fast vs float64 truth, return_all={return_all}")
        assert_all_close(fast, block, dtype, f"fast vs block, return_all={return_all}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["relu", "tanh", "identity"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fast_backward_matches_truth(shape, act, dtype, monkeypatch):
    """Every gradient (u, weight, bias, h0) against the float64 reference, the contract's rule "truth"."""
    if act == "relu" and dtype != torch.float64:
        act = "tanh"  # see the module docstring
    d = inputs(shape, dtype)
    monkeypatch.setenv(ENV, "auto")
    args = [d["u"], d["weight"], d["bias"], d["h0"], act, True]
    compare_with_reference(ops.wave_rnn, ref.wave_rnn_ref, args, dtype, rule="truth")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(9, 3, 16, 64), (6, 2, 3, 7), (5, 2, 16, 65), (4, 2, 32, 64), (3, 2, 1, 1030),
                                   (5, 2, 24, 65), (3, 2, 32, 65)])
def test_fast_backward_matches_block(shape, dtype, monkeypatch):
    d = inputs(shape, dtype)
    for act in ("tanh", "identity") if dtype != torch.float64 else ("relu", "tanh", "identity"):
        for return_all in (True, False):
            fast = run(monkeypatch, "auto", d, act, return_all)
            block = run(monkeypatch, "block", d, act, return_all)
            assert_all_close(fast, block, dtype, f"{act}, return_all={return_all}")


@pytest.mark.parametrize("c", [16, 24, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_matches_cpu_and_repeats_bitwise(dtype, c, monkeypatch):
    """The CPU op, two fast runs (identical bits: tile-group partials added in group order in the
    block, samples in batch order, no atomics), without h0 (zeros); c = 24 and 32 run the two-team
    backward (float32) or the block backward (float64)."""
    d = inputs((11, 5, c, 64), dtype)
    act = "relu" if dtype == torch.float64 else "tanh"
    a = run(monkeypatch, "auto", d, act, h0=False)
    b = run(monkeypatch, "auto", d, act, h0=False)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    cpu = run(monkeypatch, "auto", {k: v.cpu() for k, v in d.items()}, act, h0=False)
    assert_all_close(a, cpu, dtype, "fast vs CPU")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_benchmark_shape_long_sequence(dtype, monkeypatch):
    """T = 256 at the benchmark's B = 32, c = 16, n = 64 (forward with relu; gradients in float64 with
    relu, in float32 with tanh)."""
    d = inputs((256, 32, 16, 64), dtype)
    fwd = [run(monkeypatch, k, d, "relu", grad=False)[0] for k in ("auto", "block")]
    assert_all_close(fwd[:1], fwd[1:], dtype, "forward")
    act = "relu" if dtype == torch.float64 else "tanh"
    fast = run(monkeypatch, "auto", d, act)
    block = run(monkeypatch, "block", d, act)
    assert_all_close(fast, block, dtype, "forward + backward")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_long_sequence_against_truth(dtype, monkeypatch):
    """T = 600 with a tiny odd ring and c = 3 (many steps, little work per step)."""
    d = inputs((600, 2, 3, 7), dtype)
    monkeypatch.setenv(ENV, "auto")
    act = "relu" if dtype == torch.float64 else "tanh"
    compare_with_reference(ops.wave_rnn, ref.wave_rnn_ref, [d["u"], d["weight"], d["bias"], d["h0"], act, True],
                           dtype, rule="truth")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_unaligned_inputs(dtype, monkeypatch):
    """Inputs one element off a 16-byte boundary (the ops' own calls, so no copy realigns them):
    element-wise cp.async (float32/float64) and the synchronous staging of 16-bit types give the
    aligned run's bits."""
    d = inputs((5, 2, 16, 64), dtype)

    def both(kernel, sh):
        monkeypatch.setenv(ENV, kernel)
        f = misaligned_copy if sh else (lambda t: t)
        H = torch.ops.phasor.wave_rnn_fwd(f(d["u"]), d["weight"], d["bias"], f(d["h0"]), "tanh", True)
        gH = torch.cos(torch.arange(H.numel(), device=H.device, dtype=torch.float64)).reshape(H.shape).to(dtype)
        grads = torch.ops.phasor.wave_rnn_bwd(f(gH), f(H), f(d["h0"]), d["weight"], "tanh")
        return [H, *grads]
    fast, aligned, block = both("auto", True), both("auto", False), both("block", True)
    for x, y in zip(fast, aligned):
        assert torch.equal(x, y), "the staging mode changed the result"
    assert_all_close(fast, block, dtype, "unaligned fast vs block")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_checkpointed_last_state(dtype, monkeypatch):
    """checkpoint_every (segments recomputed with the fast forward, one fast backward per segment)."""
    d = inputs((40, 3, 16, 64), dtype)
    act = "relu" if dtype == torch.float64 else "tanh"
    plain = run(monkeypatch, "auto", d, act, return_all=False)
    ckpt = run(monkeypatch, "auto", d, act, return_all=False, checkpoint_every=7)
    block = run(monkeypatch, "block", d, act, return_all=False, checkpoint_every=7)
    assert_all_close(ckpt, plain, dtype, "checkpointed vs plain")
    assert_all_close(ckpt, block, dtype, "fast vs block")


def test_projected_variant_unchanged_by_the_switch(monkeypatch):
    """The projected ops run the block kernels under either setting: identical bits."""
    g = torch.Generator().manual_seed(0)
    T, B, c, n, n_inp = 6, 3, 16, 64, 2
    x = torch.randn(T, B, n_inp, generator=g).cuda()
    V = torch.randn(c * n, n_inp, generator=g).cuda()
    bV = torch.randn(c * n, generator=g).cuda() * 0.1
    w = (torch.randn(c, c, 3, generator=g) * 0.1).cuda()
    b = torch.zeros(c).cuda()
    res = []
    for k in ("auto", "block"):
        monkeypatch.setenv(ENV, k)
        leaves = [t.clone().requires_grad_() for t in (x, V, bV, w, b)]
        H = ops.wave_rnn_projected(*leaves, None, "tanh")
        res.append([H.detach(), *torch.autograd.grad(H, leaves, torch.ones_like(H))])
    for p, q in zip(*res):
        assert torch.equal(p, q)


def test_bad_kernel_choice_is_an_error(monkeypatch):
    d = inputs((2, 1, 2, 8), torch.float32)
    monkeypatch.setenv(ENV, "cluster")
    with pytest.raises(ValueError, match=ENV):
        ops.wave_rnn(d["u"], d["weight"], d["bias"], d["h0"])
