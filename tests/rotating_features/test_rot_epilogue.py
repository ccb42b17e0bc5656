"""Fused rotating-layer epilogue ops against the official-code reference."""
import pytest
import torch

from helpers import (assert_bad_input, check_compile, check_gradcheck, check_opcheck,  # noqa: F401
                     compare_with_reference, cpu_isa, device_params, noncontiguous, requires_cuda)
from phasor.rotating_features import ops, reference as ref

# (B, n, C, *spatial): odd sizes, batch 1, empty batch, no / 1-D / 2-D / 3-D spatial dims,
# and a plane larger than the kernel's tile (S = 300 > 256).
BN_SHAPES = [(3, 5, 7, 9, 11), (1, 2, 3, 1, 1), (0, 4, 3, 5, 5), (6, 3, 4), (2, 3, 4, 5),
             (2, 2, 3, 2, 3, 4), (2, 8, 5, 15, 20)]
STATS = (5, 6)  # running_mean, running_var positions in bn_args
LN_SHAPES = [(5, 4, 9), (1, 8, 300), (0, 3, 4), (7, 2, 1)]


def bn_inputs(shape, lift, device="cpu", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, n, c, *sp = shape

    def rand(*s, positive=False):
        t = torch.randn(*s, generator=g, dtype=torch.float64)
        return (t.abs() if positive else t).to(device=device, dtype=dtype)

    psi = rand(b, 1 if lift else n, c, *sp)
    chi = None if lift else rand(b, c, *sp, positive=True)
    return dict(psi=psi, chi=chi, rot_bias=rand(n, c), weight=1 + 0.5 * rand(c), bias=0.5 * rand(c),
                running_mean=rand(c), running_var=0.5 + rand(c, positive=True))


def bn_args(d, training):
    return [d["psi"], d["chi"], d["rot_bias"], d["weight"], d["bias"], d["running_mean"], d["running_var"], training]


def fused_bn(*a):
    return ops.rot_bn_epilogue(*a)


def ref_bn(*a):
    return ref.rot_bn_epilogue_ref(*a)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("lift", [False, True])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_bn_matches_reference(shape, lift, training, dtype, device, cpu_isa):
    d = bn_inputs(shape, lift, device, dtype)
    if training and shape[0] * torch.Size(shape[3:]).numel() == 1:
        # one value per channel: BatchNorm refuses to train on it, and so does the fused op
        assert_bad_input(ref_bn, *bn_args(d, training), names="input")
        assert_bad_input(fused_bn, *bn_args(d, training), names="psi")
        return
    args_f, args_r = bn_args(d, training), bn_args({k: (v.clone() if v is not None else None) for k, v in d.items()}, training)
    compare_with_reference(fused_bn, ref_bn, args_f, dtype, frozen=STATS)
    # the running-statistics update matches BatchNorm's (momentum, unbiased variance)
    fused_bn(*args_f)
    ref_bn(*args_r)
    torch.testing.assert_close(args_f[5], args_r[5])
    torch.testing.assert_close(args_f[6], args_r[6])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("training", [True, False])
def test_bn_noncontiguous_inputs(training, device):
    d = bn_inputs((3, 4, 5, 6, 7), False, device)
    args = bn_args(d, training)
    args[:5] = [noncontiguous(t) for t in args[:5]]
    compare_with_reference(fused_bn, ref_bn, args, frozen=STATS)
    # grad_out non-contiguous as well (e.g. from a transpose downstream)
    psi = d["psi"].clone().requires_grad_()
    out, mag = ops.rot_bn_epilogue(psi, *args[1:])
    g = noncontiguous(torch.randn_like(out))
    (gp,) = torch.autograd.grad(out, psi, g)
    psi_r = d["psi"].clone().requires_grad_()
    out_r, _ = ref.rot_bn_epilogue_ref(psi_r, *args[1:])
    (gr,) = torch.autograd.grad(out_r, psi_r, g)
    torch.testing.assert_close(gp, gr)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", LN_SHAPES)
def test_ln_matches_reference(shape, dtype, device, cpu_isa):
    g = torch.Generator().manual_seed(1)
    b, n, c = shape
    args = [torch.randn(b, n, c, generator=g, dtype=torch.float64), torch.rand(b, c, generator=g, dtype=torch.float64),
            torch.randn(n, c, generator=g, dtype=torch.float64), 1 + torch.rand(c, generator=g, dtype=torch.float64),
            torch.randn(c, generator=g, dtype=torch.float64)]
    args = [a.to(device=device, dtype=dtype) for a in args]
    compare_with_reference(ops.rot_ln_epilogue, ref.rot_ln_epilogue_ref, args, dtype)
    compare_with_reference(ops.rot_ln_epilogue, ref.rot_ln_epilogue_ref, [noncontiguous(a) for a in args], dtype)


def test_bias_clamp_and_zero_magnitude_edge_cases(cpu_isa):
    """|psi + b| below 1e-12 (F.normalize's clamp) and |psi| = 0 (vector_norm's zero gradient)."""
    d = bn_inputs((2, 3, 4, 3, 3), False)
    d["psi"][0, :, 1] = 0.0                      # |psi| = 0 at these sites
    d["psi"][1, :, 2] = -d["rot_bias"][:, 2, None, None]  # psi + b = 0 exactly
    compare_with_reference(fused_bn, ref_bn, bn_args(d, True), frozen=STATS)
    compare_with_reference(fused_bn, ref_bn, bn_args(d, False), frozen=STATS)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("lift", [False, True])
def test_bn_gradcheck(lift, training, cpu_isa):
    d = bn_inputs((2, 3, 2, 3, 2), lift)
    rm, rv = d["running_mean"], d["running_var"]
    if lift:
        def fn(psi, rb, w, b):
            return ops.rot_bn_epilogue(psi, None, rb, w, b, rm.clone(), rv.clone(), training)
        check_gradcheck(fn, [d["psi"], d["rot_bias"], d["weight"], d["bias"]])
    else:
        def fn(psi, chi, rb, w, b):
            return ops.rot_bn_epilogue(psi, chi, rb, w, b, rm.clone(), rv.clone(), training)
        check_gradcheck(fn, [d["psi"], d["chi"], d["rot_bias"], d["weight"], d["bias"]])


def test_ln_gradcheck(cpu_isa):
    g = torch.Generator().manual_seed(2)
    args = [torch.randn(3, 4, 5, generator=g, dtype=torch.float64), torch.rand(3, 5, generator=g, dtype=torch.float64),
            torch.randn(4, 5, generator=g, dtype=torch.float64), 1 + torch.rand(5, generator=g, dtype=torch.float64),
            torch.randn(5, generator=g, dtype=torch.float64)]
    check_gradcheck(ops.rot_ln_epilogue, args)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("lift", [False, True])
def test_bn_opcheck(lift, training, device):
    d = bn_inputs((2, 3, 4, 3, 5), lift, device, torch.float32)
    check_opcheck(torch.ops.phasor.rot_bn_fwd.default, bn_args(d, training) + [1e-5], frozen=STATS)
    out_shape = (2, 3, 4, 3, 5)
    g = torch.randn(out_shape, device=device)
    gm = torch.randn(2, 4, 3, 5, device=device)
    mean, var = d["running_mean"].float(), d["running_var"].float()
    bwd_args = [g, gm, d["psi"], d["chi"], d["rot_bias"], d["weight"], d["bias"], mean, var, training, 1e-5]
    check_opcheck(torch.ops.phasor.rot_bn_bwd.default, bwd_args, with_grad=False)


@pytest.mark.parametrize("device", device_params())
def test_ln_opcheck(device):
    args = [torch.randn(3, 4, 5), torch.rand(3, 5), torch.randn(4, 5), torch.rand(5) + 1, torch.randn(5), 1e-5]
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    check_opcheck(torch.ops.phasor.rot_ln_fwd.default, args)
    out, mag, mean, rstd = torch.ops.phasor.rot_ln_fwd(*args)
    check_opcheck(torch.ops.phasor.rot_ln_bwd.default,
                  [torch.randn_like(out), torch.randn_like(mag), *args[:5], mean, rstd], with_grad=False)


class _TwoEpilogues(torch.nn.Module):
    """A module chaining both ops and ordinary torch ops, for the torch.compile test."""

    def __init__(self, n=4, c=3):
        super().__init__()
        self.rb = torch.nn.Parameter(torch.randn(n, c))
        self.bn = torch.nn.BatchNorm2d(c)
        self.ln = torch.nn.LayerNorm(c)
        self.rb2 = torch.nn.Parameter(torch.randn(n, c))

    def forward(self, psi, chi):
        out, mag = ops.rot_bn_epilogue(psi, chi, self.rb, self.bn.weight, self.bn.bias,
                                       self.bn.running_mean, self.bn.running_var, self.training)
        pooled, pmag = out.mean(dim=(3, 4)), mag.mean(dim=(2, 3))
        out2, mag2 = ops.rot_ln_epilogue(pooled * 2.0, pmag, self.rb2, self.ln.weight, self.ln.bias)
        return out2, mag2


@pytest.mark.parametrize("device", device_params())
def test_compile_fullgraph(device):
    torch.manual_seed(0)
    mod = _TwoEpilogues().to(device).eval()  # eval: running stats stay fixed between the two runs
    check_compile(mod, [torch.randn(2, 4, 3, 5, 5, device=device), torch.rand(2, 3, 5, 5, device=device)])
    mod.train()
    check_compile(mod, [torch.randn(2, 4, 3, 5, 5, device=device), torch.rand(2, 3, 5, 5, device=device)])


def test_export_records_the_op():
    mod = _TwoEpilogues().eval()
    ep = torch.export.export(mod, (torch.randn(2, 4, 3, 5, 5), torch.rand(2, 3, 5, 5)))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "phasor.rot_bn_fwd.default" in targets and "phasor.rot_ln_fwd.default" in targets
    x = (torch.randn(2, 4, 3, 5, 5), torch.rand(2, 3, 5, 5))
    torch.testing.assert_close(ep.module()(*x), mod(*x))


def test_deterministic_across_thread_counts():
    d = bn_inputs((4, 8, 6, 17, 17), False, dtype=torch.float32)
    args = bn_args(d, True)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        r1 = compare_with_reference(fused_bn, ref_bn, args, grad=False)
        torch.set_num_threads(2)
        r2 = fused_bn(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    finally:
        torch.set_num_threads(prev)
    assert all(torch.equal(a, b) for a, b in zip(r1, r2))


# ---------------------------------------------------------------- bad input
def test_bad_inputs_name_the_argument():
    d = bn_inputs((2, 3, 4, 5, 5), False, dtype=torch.float32)
    psi, chi, rb, w, b, rm, rv = (d[k] for k in ["psi", "chi", "rot_bias", "weight", "bias", "running_mean", "running_var"])
    f = ops.rot_bn_epilogue
    assert_bad_input(f, psi[0, 0], chi, rb, w, b, rm, rv, names="psi")                 # wrong rank
    assert_bad_input(f, psi, chi[:, :3], rb, w, b, rm, rv, names="chi")                # mismatched C
    assert_bad_input(f, psi, chi[..., :4], rb, w, b, rm, rv, names="chi")              # mismatched spatial
    assert_bad_input(f, psi, chi, rb[:2], w, b, rm, rv, names=["rot_bias", "psi"])     # mismatched n
    assert_bad_input(f, psi, chi.double(), rb, w, b, rm, rv, names="chi")              # dtype
    assert_bad_input(f, psi.int(), chi, rb, w, b, rm, rv, names="psi")                 # integer psi
    assert_bad_input(f, psi, chi, rb, w[:3], b, rm, rv, names="weight")
    assert_bad_input(f, psi, chi, rb, w, b.double(), rm, rv, names="bias")
    assert_bad_input(f, psi, chi, rb, w, b, rm[:2], rv, names="running_mean")
    assert_bad_input(f, psi, chi, rb, w, b, None, None, False, names=["running_mean", "running_var"])
    assert_bad_input(f, psi.half(), chi.half(), rb.float(), w, b, rm, rv, names="psi")  # fp16 on CPU
    assert_bad_input(f, psi[:, :1], None, rb, w, b, rm, rv, 1.0, 0.1, -1.0, names="eps")
    assert_bad_input(f, psi, None, rb, w, b, rm, rv, names="psi")                       # lift needs [B,1,C,...]
    assert_bad_input(f, psi.to("meta"), chi, rb, w, b, rm, rv, names=["chi", "rot_bias", "weight"])  # device
    g = ops.rot_ln_epilogue
    lp, lc, lb, lw, lbb = torch.randn(3, 4, 5), torch.rand(3, 5), torch.randn(4, 5), torch.rand(5), torch.randn(5)
    assert_bad_input(g, lp[..., None], lc, lb, lw, lbb, names="psi")
    assert_bad_input(g, lp, lc[:2], lb, lw, lbb, names="chi")
    assert_bad_input(g, lp, lc, lb[:3], lw, lbb, names=["rot_bias", "psi"])
    assert_bad_input(g, lp, lc, lb, lw.double(), lbb, names="weight")
    bwd = torch.ops.phasor.rot_bn_bwd
    out, mag = f(psi, chi, rb, w, b, rm.clone(), rv.clone())
    assert_bad_input(bwd, out[:1], None, psi, chi, rb, w, b, rm, rv, True, 1e-5, names="grad_out")
    assert_bad_input(bwd, out, mag[:1], psi, chi, rb, w, b, rm, rv, True, 1e-5, names="grad_mag")


def test_official_bias_shape_accepted():
    d = bn_inputs((2, 3, 4, 5, 5), False)
    args = bn_args(d, False)
    a = ops.rot_bn_epilogue(*args)
    args[2] = d["rot_bias"].reshape(1, 3, 4, 1, 1)
    b = ops.rot_bn_epilogue(*args)
    torch.testing.assert_close(a, b)


def test_cpu_isa_switch_rejects_unknown_names():
    import phasor
    before = phasor._C.cpu_isa()
    assert not phasor._C.set_cpu_isa("avx9000")
    assert phasor._C.cpu_isa() == before


def test_ln_rejects_zero_rotation_dims():
    assert_bad_input(ops.rot_ln_epilogue, torch.randn(2, 0, 3), torch.rand(2, 3), torch.randn(0, 3), torch.ones(3),
                     torch.zeros(3), names="psi")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("lift", [False, True])
def test_bn_low_precision_cuda(lift, training, dtype):
    """16-bit storage, float32 parameters and math: error within the FA rule of a same-precision run."""
    d = bn_inputs((4, 8, 16, 12, 12), lift, "cuda", torch.float32)
    d["psi"] = d["psi"].to(dtype)
    d["chi"] = None if lift else d["chi"].to(dtype)

    def ref_low(*a):
        return tuple(o.to(dtype) for o in ref_bn(*a))
    compare_with_reference(fused_bn, ref_low, bn_args(d, training), dtype, frozen=STATS)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ln_low_precision_cuda(dtype):
    g = torch.Generator().manual_seed(3)
    psi, chi = torch.randn(16, 8, 300, generator=g), torch.rand(16, 300, generator=g)
    params = [torch.randn(8, 300, generator=g), 1 + torch.rand(300, generator=g), torch.randn(300, generator=g)]
    args = [psi.cuda().to(dtype), chi.cuda().to(dtype)] + [p.cuda() for p in params]

    def ref_low(*a):
        return tuple(o.to(dtype) for o in ref.rot_ln_epilogue_ref(*a))
    compare_with_reference(ops.rot_ln_epilogue, ref_low, args, dtype)
    out, mag, mean, rstd = torch.ops.phasor.rot_ln_fwd(*args, 1e-5)
    assert mean.dtype == rstd.dtype == torch.float32  # statistics stay float32, as torch's layer norm


@pytest.mark.parametrize("lift", [False, True])
def test_bn_channel_major_and_plane_parallel_schedules_agree_bitwise(lift):
    """The CPU kernels run channel-major when there are at least 2 channels per thread, plane-parallel
    otherwise; both must give identical bits (same per-plane math, same reduction order)."""
    d = bn_inputs((4, 3, 3, 7, 9), lift, dtype=torch.float32)  # C = 3: 1 thread -> channel-major, 2 -> planes
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            args = [t.clone() if isinstance(t, torch.Tensor) else t for t in bn_args(d, True)]
            out = torch.ops.phasor.rot_bn_fwd(*args, 1e-5)
            g = torch.ones_like(out[0]) * 0.3 + torch.arange(out[0].numel()).reshape(out[0].shape) % 7 * 0.1
            grads = torch.ops.phasor.rot_bn_bwd(g, out[1] * 0.2, args[0], args[1], args[2], args[3], args[4],
                                                out[2], out[3], True, 1e-5)
            results.append([t for t in (*out, *grads) if t is not None])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lift", [False, True])
@pytest.mark.parametrize("shape", [(3, 4, 5, 8, 8), (2, 3, 6, 32, 32), (3, 4, 5, 7, 9)])
def test_bn_streaming_stores_give_the_same_bits(shape, lift, dtype, cpu_isa, monkeypatch):
    """Large outputs are written with streaming stores (staged rows, common/cpu_memory.h); forcing them
    on (aligned rows of whole vectors: 8x8, 32x32) or off must not change a bit of any output.
    7x9 rows are never streamed: both settings take the plain path."""
    d = bn_inputs(shape, lift, dtype=dtype)
    g = torch.randn(shape[0], shape[1], *shape[2:], generator=torch.Generator().manual_seed(1), dtype=dtype)
    results = []
    for stream in ("1", "0"):
        monkeypatch.setenv("PHASOR_CPU_STREAM_STORES", stream)
        args = [t.clone() if isinstance(t, torch.Tensor) else t for t in bn_args(d, True)]
        out = torch.ops.phasor.rot_bn_fwd(*args, 1e-5)
        grads = torch.ops.phasor.rot_bn_bwd(g, out[1] * 0.2, args[0], args[1], args[2], args[3], args[4],
                                            out[2], out[3], True, 1e-5)
        results.append([t for t in (*out, *grads) if t is not None])
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- CUDA-only paths
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("lift", [False, True])
@pytest.mark.parametrize("n", [9, 17])
def test_bn_cuda_more_rotation_dims_than_one_chunk(n, lift, training, dtype):
    """The CUDA BN backward handles the rotation dims 8 at a time (kRotChunk): n = 9 and 17 leave
    partial chunks, and n = 10 is the Pascal / FoodSeg configuration."""
    d = bn_inputs((3, n, 5, 7, 9), lift, "cuda", dtype)
    compare_with_reference(fused_bn, ref_bn, bn_args(d, training), dtype, frozen=STATS)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ln_cuda_several_rows_per_block(dtype):
    """The CUDA LN backward gives each block ceil(B / 1024) rows (B = 2100: 3 rows, last block 1),
    accumulating the parameter-gradient partials in place across them."""
    g = torch.Generator().manual_seed(4)
    b, n, c = 2100, 3, 7
    args = [torch.randn(b, n, c, generator=g, dtype=torch.float64), torch.rand(b, c, generator=g, dtype=torch.float64),
            torch.randn(n, c, generator=g, dtype=torch.float64), 1 + torch.rand(c, generator=g, dtype=torch.float64),
            torch.randn(c, generator=g, dtype=torch.float64)]
    args = [a.to(device="cuda", dtype=dtype) for a in args]
    compare_with_reference(ops.rot_ln_epilogue, ref.rot_ln_epilogue_ref, args, dtype)


@requires_cuda
@pytest.mark.parametrize("lift", [False, True])
def test_cuda_matches_cpu_and_repeats_bitwise(lift):
    """Same inputs on CPU and CUDA (float64: the two kernels agree to rounding), and two CUDA runs of
    the forward and backward ops give identical bits (fixed reduction order, no atomics)."""
    d = bn_inputs((4, 10, 6, 9, 11), lift, "cpu", torch.float64)
    outs = {}
    for dev in ("cpu", "cuda", "cuda"):
        a = [t.to(dev) if isinstance(t, torch.Tensor) else t for t in bn_args(d, True)]
        fwd = torch.ops.phasor.rot_bn_fwd(*a, 1e-5)
        g = torch.cos(torch.arange(fwd[0].numel(), dtype=torch.float64, device=dev)).reshape(fwd[0].shape)
        bwd = torch.ops.phasor.rot_bn_bwd(g, fwd[1] * 0.3, a[0], a[1], a[2], a[3], a[4], fwd[2], fwd[3], True, 1e-5)
        res = [t.cpu() for t in (*fwd, *bwd)]
        if dev in outs:
            assert all(torch.equal(x, y) for x, y in zip(res, outs[dev]))
        outs[dev] = res
    for x, y in zip(outs["cuda"], outs["cpu"]):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
    la = [torch.randn(5, 10, 300, dtype=torch.float64), torch.rand(5, 300, dtype=torch.float64),
          torch.randn(10, 300, dtype=torch.float64), torch.rand(300, dtype=torch.float64) + 1,
          torch.randn(300, dtype=torch.float64)]
    cpu = ops.rot_ln_epilogue(*la)
    cuda = ops.rot_ln_epilogue(*[t.cuda() for t in la])
    torch.testing.assert_close([t.cpu() for t in cuda], list(cpu), rtol=1e-10, atol=1e-10)


class _LinearThenEpilogues(torch.nn.Module):
    """nn.Linear producing psi and chi, then both epilogues: ordinary kernels interleaved with the ops."""

    def __init__(self, n=4, c=3, w=5):
        super().__init__()
        self.lin = torch.nn.Linear(w, w)
        self.epi = _TwoEpilogues(n, c)

    def forward(self, x):
        psi = self.lin(x)
        return self.epi(psi, psi.norm(dim=1))


@requires_cuda
@pytest.mark.parametrize("training", [False, True])
def test_cuda_graphs_reduce_overhead(training):
    """torch.compile(mode="reduce-overhead") replays CUDA graphs: a launch off the current stream
    would give stale or wrong results (pytorch/pytorch#157363). Several calls, forward and backward,
    in float64 so that compiled and eager differ only by rounding."""
    torch.manual_seed(0)
    mod = _LinearThenEpilogues().cuda().double().train(training)
    ref_mod = _LinearThenEpilogues().cuda().double().train(training)
    ref_mod.load_state_dict(mod.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(mod, mode="reduce-overhead", fullgraph=True)
    for i in range(4):
        x = torch.randn(6, 4, 3, 5, 5, device="cuda", dtype=torch.float64) * (1 + i)
        out_c = compiled(x)
        loss_c = sum(o.square().sum() for o in out_c)
        grads_c = [g.clone() for g in torch.autograd.grad(loss_c, list(mod.parameters()))]
        out_c = [o.clone() for o in out_c]
        out_e = ref_mod(x)
        grads_e = torch.autograd.grad(sum(o.square().sum() for o in out_e), list(ref_mod.parameters()))
        torch.testing.assert_close(out_c, list(out_e), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(grads_c, list(grads_e), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mod.epi.bn.running_mean, ref_mod.epi.bn.running_mean)
    torch.testing.assert_close(mod.epi.bn.running_var, ref_mod.epi.bn.running_var)
