"""Fused wave-RNN recurrence ops against the official per-step loop."""
import pytest
import torch

from helpers import (assert_bad_input, check_gradcheck, check_opcheck,  # noqa: F401
                     compare_with_reference, cpu_isa, device_params, noncontiguous, requires_cuda)
from phasor.wave_rnn import ops, reference as ref

# (T, B, c, n, f): the gradcheck size, odd rings, a ring shorter than a vector, rings
# shorter than the padding (n < f // 2), c = 1, odd c (the kernel pairs output rows), B = 1,
# empty batch, empty sequence, wide kernels, and a ring longer than a register block (n = 100).
# The last two run past the CPU backward's weight-gradient chunks (16 steps: two full, one partial),
# with c = 9 (one 8-row block plus a leftover row) and c = 16, n = 64 (the benchmark's layer).
SHAPES = [(5, 3, 2, 8, 3), (4, 2, 3, 37, 5), (3, 2, 2, 2, 5), (3, 1, 1, 1, 3), (6, 2, 5, 16, 1),
          (2, 0, 2, 8, 3), (0, 2, 2, 8, 3), (3, 2, 3, 9, 7), (4, 3, 4, 100, 3), (37, 2, 9, 20, 3),
          (35, 2, 16, 64, 3)]


def rec_inputs(shape, device="cpu", dtype=torch.float64, seed=0, n_inp=None):
    T, B, c, n, f = shape
    g = torch.Generator().manual_seed(seed)

    def rand(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    pdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    weight = rand(c, c, f, scale=0.6 / (c * f) ** 0.5).to(pdt)
    d = dict(weight=weight, bias=rand(c, scale=0.3).to(pdt), h0=rand(B, c, n))
    if n_inp is None:
        d["u"] = rand(T, B, c, n)
    else:
        d.update(x=rand(T, B, n_inp), V=rand(c * n, n_inp).to(pdt), bV=rand(c * n, scale=0.3).to(pdt))
    return d


def plain_args(d, act, return_all=True):
    return [d["u"], d["weight"], d["bias"], d["h0"], act, return_all]


def proj_args(d, act, return_all=True):
    return [d["x"], d["V"], d["bV"], d["weight"], d["bias"], d["h0"], act, return_all]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", ["relu", "tanh", "identity"])
@pytest.mark.parametrize("return_all", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, return_all, act, dtype, device, cpu_isa):
    d = rec_inputs(shape, device, dtype)
    compare_with_reference(ops.wave_rnn, ref.wave_rnn_ref, plain_args(d, act, return_all), dtype, rule="truth")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("return_all", [True, False])
@pytest.mark.parametrize("n_inp", [1, 2, 16])
@pytest.mark.parametrize("shape", [(5, 3, 2, 8, 3), (4, 2, 3, 37, 5), (0, 2, 2, 8, 3), (3, 0, 2, 4, 3)])
def test_projected_matches_reference(shape, n_inp, return_all, act, dtype, device, cpu_isa):
    d = rec_inputs(shape, device, dtype, n_inp=n_inp)
    compare_with_reference(ops.wave_rnn_projected, ref.wave_rnn_projected_ref, proj_args(d, act, return_all), dtype,
                           rule="truth")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("return_all", [True, False])
def test_direct_op_call_last_state_backward(return_all, device):
    """The op itself with return_all=False recomputes the states in its backward: same gradients."""
    d = rec_inputs((6, 3, 3, 10, 3), device)
    op = lambda *a: torch.ops.phasor.wave_rnn_fwd(*a)  # noqa: E731
    compare_with_reference(op, ref.wave_rnn_ref, plain_args(d, "relu", return_all))
    dp = rec_inputs((6, 3, 3, 10, 3), device, n_inp=2)
    op_p = lambda *a: torch.ops.phasor.wave_rnn_proj_fwd(*a)  # noqa: E731
    compare_with_reference(op_p, ref.wave_rnn_projected_ref, proj_args(dp, "tanh", return_all))


def test_reference_is_the_official_conv1d():
    """The roll-based convolution equals nn.Conv1d(padding_mode='circular'), the official layer."""
    torch.manual_seed(0)
    for c, n, f in [(3, 10, 3), (2, 7, 5), (4, 3, 3)]:
        conv = torch.nn.Conv1d(c, c, f, padding=f // 2, padding_mode="circular").double()
        h = torch.randn(2, c, n, dtype=torch.float64)
        torch.testing.assert_close(ref.circular_conv_ref(h, conv.weight, conv.bias), conv(h))
        torch.testing.assert_close(ref.circular_conv1d(h, conv.weight, conv.bias), conv(h))


@pytest.mark.parametrize("device", device_params())
def test_noncontiguous_inputs(device):
    d = rec_inputs((5, 3, 4, 12, 3), device)
    args = plain_args(d, "relu")
    args[:4] = [noncontiguous(t) for t in args[:4]]
    compare_with_reference(ops.wave_rnn, ref.wave_rnn_ref, args)
    dp = rec_inputs((5, 3, 4, 12, 3), device, n_inp=2)
    pargs = proj_args(dp, "relu")
    pargs[:6] = [noncontiguous(t) for t in pargs[:6]]
    compare_with_reference(ops.wave_rnn_projected, ref.wave_rnn_projected_ref, pargs)


def test_impulse_moves_one_position_per_step():
    """Shift init, identity activation, zero bias: an impulse at ring position j is at j - t after t steps."""
    c, n, T = 2, 8, 11
    weight = torch.zeros(c, c, 3, dtype=torch.float64)
    weight[torch.arange(c), torch.arange(c), 2] = 1.0  # official 'fwd' init: dirac rolled by +1
    u = torch.zeros(T, 1, c, n, dtype=torch.float64)
    u[0, 0, :, 3] = 1.0
    H = ops.wave_rnn(u, weight, torch.zeros(c, dtype=torch.float64), activation="identity")
    for t in range(T):
        expect = torch.zeros(c, n, dtype=torch.float64)
        expect[:, (3 - t) % n] = 1.0
        torch.testing.assert_close(H[t, 0], expect, rtol=0, atol=0)


def test_gradcheck():
    for act in ("relu", "tanh", "identity"):
        d = rec_inputs((5, 3, 2, 8, 3))  # c=2, n=8, T=5, B=3 (the size)
        d["u"] = d["u"] + 0.05 * torch.sign(d["u"])  # keep pre-activations off relu's kink
        check_gradcheck(lambda u, w, b, h: ops.wave_rnn(u, w, b, h, act), [d["u"], d["weight"], d["bias"], d["h0"]])
    dp = rec_inputs((4, 2, 2, 6, 3), n_inp=2)
    check_gradcheck(lambda x, V, bV, w, b, h: ops.wave_rnn_projected(x, V, bV, w, b, h, "tanh", False),
                    [dp["x"], dp["V"], dp["bV"], dp["weight"], dp["bias"], dp["h0"]])


@pytest.mark.parametrize("device", device_params())
def test_opcheck(device):
    d = rec_inputs((4, 3, 3, 9, 3), device, torch.float32)
    for ret in (True, False):
        check_opcheck(torch.ops.phasor.wave_rnn_fwd.default, plain_args(d, "relu", ret))
    dp = rec_inputs((4, 3, 3, 9, 3), device, torch.float32, n_inp=2)
    for ret in (True, False):
        check_opcheck(torch.ops.phasor.wave_rnn_proj_fwd.default, proj_args(dp, "tanh", ret))
    H = ops.wave_rnn(*plain_args(d, "relu"))
    check_opcheck(torch.ops.phasor.wave_rnn_bwd.default, [torch.randn_like(H), H, d["h0"], d["weight"], "relu"],
                  with_grad=False)
    Hp = ops.wave_rnn_projected(*proj_args(dp, "tanh"))
    check_opcheck(torch.ops.phasor.wave_rnn_proj_bwd.default,
                  [torch.randn_like(Hp), Hp, dp["x"], dp["V"], dp["h0"], dp["weight"], "tanh"], with_grad=False)


def test_compile_fullgraph_matches_eager():
    d = rec_inputs((6, 2, 3, 10, 3), dtype=torch.float32)
    torch._dynamo.reset()

    def f(u, w, b, h0):
        return ops.wave_rnn(u, w, b, h0, "relu", return_all=False).square().sum()
    leaves = [d["u"].requires_grad_(), d["weight"].requires_grad_(), d["bias"].requires_grad_(), d["h0"]]
    eager = torch.autograd.grad(f(*leaves), leaves[:3])
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(*leaves), leaves[:3])
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bad_inputs():
    d = rec_inputs((3, 2, 2, 8, 3), dtype=torch.float32)
    u, w, b, h0 = d["u"], d["weight"], d["bias"], d["h0"]
    assert_bad_input(ops.wave_rnn, u, torch.zeros(2, 2, 2), b, h0, names="weight")        # even kernel
    assert_bad_input(ops.wave_rnn, u, torch.zeros(3, 3, 3), b, h0, names="weight")        # channels
    assert_bad_input(ops.wave_rnn, u, w, torch.zeros(3), h0, names="bias")
    assert_bad_input(ops.wave_rnn, u, w, b, torch.zeros(2, 2, 9), names="h0")
    assert_bad_input(ops.wave_rnn, u[0], w, b, h0, names="u")                             # 3-D u
    assert_bad_input(ops.wave_rnn, u.double(), w, b, h0.double(), names="weight")         # dtype mix
    assert_bad_input(ops.wave_rnn, u.long(), w, b, h0, names="u")                         # integer
    assert_bad_input(ops.wave_rnn, u.half(), w, b, h0.half(), names="u")                  # no CPU fp16
    assert_bad_input(ops.wave_rnn, u, w, b, h0, "gelu", names="activation")
    assert_bad_input(ops.wave_rnn, u.to("meta"), w, b, h0, names=["weight", "bias", "h0"])  # device mix
    x = torch.randn(3, 2, 17)
    V = torch.randn(16, 17)
    assert_bad_input(ops.wave_rnn_projected, x, V, torch.zeros(16), w, b, h0, names="x")   # n_inp > 16
    x2 = torch.randn(3, 2, 2)
    assert_bad_input(ops.wave_rnn_projected, x2, torch.zeros(15, 2), torch.zeros(16), w, b, h0, names="V")
    assert_bad_input(ops.wave_rnn_projected, x2, torch.zeros(16, 2), torch.zeros(15), w, b, h0, names="bV")
    H = ops.wave_rnn(u, w, b, h0)
    assert_bad_input(torch.ops.phasor.wave_rnn_bwd, H[:2], H, h0, w, "relu", names="grad_H")
    assert_bad_input(torch.ops.phasor.wave_rnn_bwd, H[-1, :1], H, h0, w, "relu", names="grad_H")  # last-only, wrong B
    assert_bad_input(torch.ops.phasor.wave_rnn_bwd, H[-1].double(), H, h0, w, "relu", names="grad_H")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("n_inp", [None, 2])
@pytest.mark.parametrize("shape", [(5, 3, 2, 8, 3), (37, 2, 9, 20, 3), (1, 2, 3, 10, 3)])
def test_backward_from_the_last_state_gradient_alone(shape, n_inp, device, cpu_isa):
    """dL/dh_T [B, c, n] passed alone gives the bits of dL/dH with zeros before the last step; the
    op checks pass for it too (training on h_T never builds the [T, B, c, n] zeros)."""
    d = rec_inputs(shape, device, n_inp=n_inp)
    if n_inp is None:
        H = ops.wave_rnn(*plain_args(d, "tanh"))
        bwd, rest = torch.ops.phasor.wave_rnn_bwd, [d["h0"], d["weight"], "tanh"]
    else:
        H = ops.wave_rnn_projected(*proj_args(d, "tanh"))
        bwd, rest = torch.ops.phasor.wave_rnn_proj_bwd, [d["x"], d["V"], d["h0"], d["weight"], "tanh"]
    g_last = torch.randn(H.shape[1:], dtype=H.dtype, generator=torch.Generator().manual_seed(1)).to(device)
    g_full = torch.zeros_like(H)
    g_full[-1] = g_last
    for a, b in zip(bwd(g_last, H, *rest), bwd(g_full, H, *rest)):
        assert torch.equal(a, b)
    check_opcheck(bwd.default, [g_last, H, *rest], with_grad=False)


@pytest.mark.parametrize("device", device_params())
def test_last_state_gradient_of_an_empty_sequence_is_h0s(device):
    """T = 0: h_T is h0, so dL/dh_T passed alone comes back as dL/dh0."""
    d = rec_inputs((0, 2, 3, 8, 3), device)
    H = ops.wave_rnn(*plain_args(d, "relu"))
    g = torch.randn(2, 3, 8, dtype=H.dtype).to(device)
    assert torch.equal(torch.ops.phasor.wave_rnn_bwd(g, H, d["h0"], d["weight"], "relu")[3], g)
    dp = rec_inputs((0, 2, 3, 8, 3), device, n_inp=2)
    Hp = ops.wave_rnn_projected(*proj_args(dp, "relu"))
    got = torch.ops.phasor.wave_rnn_proj_bwd(g, Hp, dp["x"], dp["V"], dp["h0"], dp["weight"], "relu")[5]
    assert torch.equal(got, g)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_cuda_low_precision_storage(dtype, act):
    """16-bit storage (u, H, grads) with float32 state and accumulation on chip."""
    d = rec_inputs((6, 3, 4, 40, 3), "cuda", dtype)
    compare_with_reference(ops.wave_rnn, ref.wave_rnn_ref, plain_args(d, act), dtype, rule="truth")
    dp = rec_inputs((6, 3, 4, 40, 3), "cuda", dtype, n_inp=2)
    compare_with_reference(ops.wave_rnn_projected, ref.wave_rnn_projected_ref, proj_args(dp, act), dtype, rule="truth")


@requires_cuda
def test_cuda_matches_cpu():
    d = rec_inputs((7, 5, 6, 50, 3), "cpu", torch.float32)
    dc = {k: v.cuda() for k, v in d.items()}
    torch.testing.assert_close(ops.wave_rnn(*plain_args(dc, "relu")).cpu(), ops.wave_rnn(*plain_args(d, "relu")))


@requires_cuda
def test_cuda_bf16_drift_over_long_sequences():
    """Spec 8.6: ReLU + shift init over T = 1000 steps; bf16 storage stays near float32."""
    T, B, c, n = 1000, 4, 4, 32
    g = torch.Generator().manual_seed(0)
    weight = torch.zeros(c, c, 3)
    weight[torch.arange(c), torch.arange(c), 2] = 1.0
    u = (torch.rand(T, B, c, n, generator=g) * (torch.rand(T, B, 1, 1, generator=g) < 0.02)).cuda()
    w, b = weight.cuda(), torch.full((c,), -0.001).cuda()
    h32 = ops.wave_rnn(u, w, b, return_all=False)
    h16 = ops.wave_rnn(u.bfloat16(), w, b, return_all=False).float()
    rel = (h16 - h32).abs().max() / h32.abs().max()
    print(f"bf16 state drift over T={T}: max relative deviation of h_T {rel:.2e}")
    assert rel < 2e-2


@requires_cuda
@pytest.mark.parametrize("shape", [(3, 2, 16, 64, 3), (3, 2, 32, 64, 3)])
def test_cuda_projected_with_global_memory_fallbacks(shape):
    """float64 with n_inp = 16: at c = 16, n = 64 the backward's V^T no longer fits in shared memory
    (read from global); at c = 32 neither V^T nor the dV accumulators do (kept in the per-sample
    scratch), in both directions."""
    d = rec_inputs(shape, "cuda", torch.float64, n_inp=16)
    for act in ("relu", "tanh"):
        compare_with_reference(ops.wave_rnn_projected, ref.wave_rnn_projected_ref, proj_args(d, act), torch.float64)


@requires_cuda
def test_cuda_state_too_large_for_shared_memory_is_a_clear_error():
    d = rec_inputs((2, 1, 128, 512, 3), "cuda", torch.float32)
    with pytest.raises(RuntimeError, match="shared memory"):
        ops.wave_rnn(*plain_args(d, "relu"))


@requires_cuda
@pytest.mark.parametrize("n_inp", [None, 3])
def test_cuda_backward_matches_cpu_and_repeats_bitwise(n_inp):
    """float64 forward and backward on CUDA equal the CPU's to rounding; two CUDA runs give identical
    bits (per-sample partials summed in batch order, no atomics)."""
    d = rec_inputs((9, 5, 6, 50, 3), "cpu", torch.float64, n_inp=n_inp)
    fn, args = (ops.wave_rnn, plain_args) if n_inp is None else (ops.wave_rnn_projected, proj_args)
    runs = []
    for dev in ("cpu", "cuda", "cuda"):
        a = [t.to(dev).requires_grad_() if isinstance(t, torch.Tensor) else t for t in args({k: v for k, v in d.items()}, "tanh")]
        leaves = [t for t in a if isinstance(t, torch.Tensor)]
        H = fn(*a)
        cot = torch.cos(torch.arange(H.numel(), dtype=torch.float64, device=dev)).reshape(H.shape)
        runs.append([t.detach().cpu() for t in (H, *torch.autograd.grad(H, leaves, cot))])
    for x, y in zip(runs[1], runs[2]):
        assert torch.equal(x, y)
    for x, y in zip(runs[1], runs[0]):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


class _EncodeRecurDecode(torch.nn.Module):
    """nn.Linear input projection, the fused recurrence, nn.Linear readout of h_T."""

    def __init__(self, n_inp=3, c=4, n=16, n_out=5):
        super().__init__()
        self.c, self.n = c, n
        self.enc = torch.nn.Linear(n_inp, c * n)
        self.weight = torch.nn.Parameter(torch.randn(c, c, 3) * 0.3)
        self.bias = torch.nn.Parameter(torch.randn(c) * 0.1)
        self.dec = torch.nn.Linear(c * n, n_out)

    def forward(self, x):
        T, B = x.shape[:2]
        u = self.enc(x).view(T, B, self.c, self.n)
        H = ops.wave_rnn(u, self.weight, self.bias, None, "tanh")
        return self.dec(H[-1].reshape(B, -1))


@requires_cuda
def test_cuda_graphs_reduce_overhead():
    """torch.compile(mode="reduce-overhead") replays CUDA graphs: a launch off the current stream
    would give stale or wrong results (pytorch/pytorch#157363). Several calls, forward and backward,
    in float64 so that compiled and eager differ only by rounding."""
    torch.manual_seed(0)
    mod = _EncodeRecurDecode().cuda().double()
    ref_mod = _EncodeRecurDecode().cuda().double()
    ref_mod.load_state_dict(mod.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(mod, mode="reduce-overhead", fullgraph=True)
    for i in range(4):
        x = torch.randn(12, 3, 3, device="cuda", dtype=torch.float64) * (1 + i)
        out_c = compiled(x)
        grads_c = [g.clone() for g in torch.autograd.grad(out_c.square().sum(), list(mod.parameters()))]
        out_c = out_c.clone()
        out_e = ref_mod(x)
        grads_e = torch.autograd.grad(out_e.square().sum(), list(ref_mod.parameters()))
        torch.testing.assert_close(out_c, out_e, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(grads_c, list(grads_e), rtol=1e-9, atol=1e-9)
