"""The wave-RNN CUDA kernels (csrc/wave_rnn/wave_rnn_cuda.cu and the register-tiled wave_rnn_cuda_fast.cuh),
run from their own source on the CPU (tools/cuda_emu), against the CPU op.

Both kernel paths: PHASOR_WAVE_CUDA_KERNEL=auto takes the fast kernels where they apply (plain op,
f = 3, forward c <= 32 (float64: 16), backward c <= 32 (float64: 8), two thread teams above c = 16)
and the block kernels otherwise; =block forces the block kernels. Covered: every activation,
return_all and last-only, dL/dH and dL/dh_T alone (grad_is_last_only), odd c and n, f = 3 and 5,
float32 / float64 and 16-bit storage, the fast path's staging modes (16-byte cp.async rows, per-element
cp.async for unaligned rows, synchronous 16-bit loads) and vector / scalar output stores, several tiles
per thread group, and the fused tiny-input projection ops with V / dV in shared or global memory.

The backward gets the CPU forward's H on both sides, so a relu mask is the same on both (a mask flip of a
near-zero pre-activation would otherwise move single gradient entries by O(1))."""
import pytest
import torch

from helpers import emulated_cuda_ops, misaligned_copy

pytestmark = [pytest.mark.cuda_emu, pytest.mark.slow]

ENV = "PHASOR_WAVE_CUDA_KERNEL"
LOW = (torch.float16, torch.bfloat16)
ACTS = ("relu", "tanh", "identity")


@pytest.fixture(scope="module")
def emu():
    return emulated_cuda_ops("wave_rnn")


def _case(T, B, c, n, f, dtype, seed=0, n_inp=None):
    g = torch.Generator().manual_seed(seed)

    def rand(*s, scale=1.0):
        return torch.randn(*s, generator=g, dtype=torch.float64) * scale
    pdt = torch.float32 if dtype in LOW else dtype
    # a contraction near the shift init keeps the states O(1)
    w = rand(c, c, f, scale=0.3 / (f * c) ** 0.5)
    w[torch.arange(c), torch.arange(c), f // 2 + 1] += 0.7
    d = dict(weight=w.to(pdt), bias=rand(c, scale=0.1).to(pdt), h0=rand(B, c, n).to(dtype),
             gH=rand(T, B, c, n).to(dtype), gh=rand(B, c, n).to(dtype))
    if n_inp is None:
        d["u"] = rand(T, B, c, n, scale=0.5).to(dtype)
    else:
        d.update(x=rand(T, B, n_inp).to(dtype), V=rand(c * n, n_inp, scale=0.5 / n_inp ** 0.5).to(pdt),
                 bV=rand(c * n, scale=0.1).to(pdt))
    return d


def _tol(dtype, ref):
    """Outputs of O(1) terms summed over c * f taps and T steps in a different order than the CPU's:
    float32 within ~100 eps32 (float64: ~1e4 eps64) of the output's scale. 16-bit storage against
    the float32 CPU op on the same rounded inputs: the kernels compute in float32 and round each
    stored output once (half an ulp, eps / 2 relative), so rtol = eps of the storage type; their float32
    parameter gradients (from the same rounded states) get the float32 tolerance."""
    scale = max(1.0, ref.abs().max().item())
    if dtype == torch.float64:
        return dict(rtol=1e-12, atol=1e-12 * scale)
    if dtype == torch.float32:
        return dict(rtol=1e-5, atol=1e-5 * scale)
    return dict(rtol=torch.finfo(dtype).eps, atol=1e-5 * scale)


def _compare(got, want, dtype, what):
    assert len(got) == len(want)
    for i, (e, c) in enumerate(zip(got, want)):
        assert e.shape == c.shape, f"{what} [{i}] shape {tuple(e.shape)} vs {tuple(c.shape)}"
        assert e.dtype in (dtype, c.dtype), f"{what} [{i}] dtype {e.dtype}"  # states in dtype, parameter grads float32
        assert not torch.isnan(e).any(), f"{what} [{i}] has NaN (a read of memory no thread wrote?)"
        torch.testing.assert_close(e.double(), c.double(), **_tol(e.dtype, c), msg=lambda m, i=i: f"{what} [{i}]: {m}")


def _cpu(t):
    """The CPU op's input: 16-bit storage becomes float32 (the same rounded values)."""
    return t.float() if t.dtype in LOW else t


def _plain(ns, d, act, return_all, last_only, cpu=False):
    cv = _cpu if cpu else (lambda t: t)
    u, h0, w, b = cv(d["u"]), cv(d["h0"]), d["weight"], d["bias"]
    out = ns.wave_rnn_fwd(u, w, b, h0, act, return_all)
    # the backward gets the CPU forward's H (same relu masks on both sides)
    H = torch.ops.phasor.wave_rnn_fwd(_cpu(d["u"]), w, b, _cpu(d["h0"]), act, True)
    H = cv(H.to(d["u"].dtype))  # 16-bit: both sides read the same rounded states
    gH = cv(d["gh"] if last_only else d["gH"])
    return [out, *ns.wave_rnn_bwd(gH, H, h0, w, act)]


def _run_plain(emu, d, act, return_all, last_only, kernel, monkeypatch):
    monkeypatch.setenv(ENV, kernel)
    dtype = d["u"].dtype
    got = _plain(emu, d, act, return_all, last_only)
    want = _plain(torch.ops.phasor, d, act, return_all, last_only, cpu=True)
    _compare(got, want, dtype, f"{kernel} {act} return_all={return_all} last_only={last_only}")
    return got


# (T, B, c, n, f): odd c and n, tiny rings (n < f), one tile per thread and several (c = 16, n = 70:
# 18 tiles over 16 groups; c = 24: the backward's two teams with 5 groups over 7 tiles), c = 17 (the
# fast kernels' CM = 32 instantiation), n % 4 == 0 (16-byte staging and vector stores) and not, f = 5
# (block kernels under auto too), T = 1; c = 32 with 25 tiles over 8 forward / 4 backward groups; c = 1,
# n = 1030: 258 tiles over 256 threads; c = 10: c * c * f + c > 256 weight-gradient tasks, so the block
# backward has one j-slice (js = 1), where small models get several; T = 7, 8 > kStages = 5: the fast
# kernels' cp.async input ring wraps around (a slot refilled before its last read would show).
SHAPES = [(3, 2, 5, 7, 3), (2, 2, 3, 8, 3), (3, 1, 1, 5, 3), (2, 2, 3, 2, 3), (1, 2, 4, 9, 3),
          (2, 1, 16, 70, 3), (2, 1, 24, 25, 3), (2, 2, 17, 12, 3), (2, 1, 32, 100, 3), (2, 1, 1, 1030, 3),
          (2, 3, 10, 13, 3), (3, 2, 3, 7, 5), (2, 1, 5, 4, 5), (2, 1, 9, 33, 5), (8, 1, 5, 8, 3), (7, 1, 24, 9, 3)]


@pytest.mark.parametrize("kernel", ["auto", "block"])
@pytest.mark.parametrize("shape", SHAPES)
def test_plain_ops_float32(emu, shape, kernel, monkeypatch):
    d = _case(*shape, torch.float32, seed=sum(shape))
    for k, act in enumerate(ACTS):
        _run_plain(emu, d, act, return_all=k != 1, last_only=k == 2, kernel=kernel, monkeypatch=monkeypatch)
    _run_plain(emu, d, "tanh", return_all=False, last_only=True, kernel=kernel, monkeypatch=monkeypatch)


@pytest.mark.parametrize("kernel", ["auto", "block"])
@pytest.mark.parametrize("shape", [(3, 2, 5, 7, 3), (2, 1, 8, 12, 3), (2, 1, 12, 9, 3), (2, 2, 3, 6, 5)])
def test_plain_ops_float64(emu, shape, kernel, monkeypatch):
    """c = 5, 8: fast forward and backward in float64; c = 12: fast forward (c <= 16), block backward (c > 8)."""
    d = _case(*shape, torch.float64, seed=sum(shape))
    for k, act in enumerate(ACTS):
        _run_plain(emu, d, act, return_all=k != 0, last_only=k == 1, kernel=kernel, monkeypatch=monkeypatch)


@pytest.mark.parametrize("kernel", ["auto", "block"])
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("shape", [(3, 2, 5, 7, 3), (2, 2, 3, 8, 3), (2, 1, 17, 9, 3), (2, 2, 3, 5, 5), (7, 1, 3, 16, 3)])
def test_plain_ops_16_bit_storage(emu, shape, dtype, kernel, monkeypatch):
    """n = 8 in 16-bit: 16-byte staging rows; n = 7, 9: synchronous staging (no 4-byte cp.async of 2-byte values)."""
    d = _case(*shape, dtype, seed=sum(shape) + 1)
    for k, act in enumerate(ACTS):
        _run_plain(emu, d, act, return_all=k != 2, last_only=k == 0, kernel=kernel, monkeypatch=monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_kernels_with_unaligned_inputs(emu, dtype, monkeypatch):
    """Inputs one element past a 16-byte boundary with n % 8 == 0: the fast path stages element-wise
    (float32: 4-byte cp.async) or synchronously (16-bit) instead of 16-byte copies."""
    monkeypatch.setenv(ENV, "auto")
    d = _case(7, 2, 5, 8, 3, dtype, seed=4)
    H = torch.ops.phasor.wave_rnn_fwd(_cpu(d["u"]), d["weight"], d["bias"], _cpu(d["h0"]), "tanh", True)
    mis = {k: misaligned_copy(d[k]) for k in ("u", "h0", "gH")}
    got = [emu.wave_rnn_fwd(mis["u"], d["weight"], d["bias"], mis["h0"], "tanh", True),
           *emu.wave_rnn_bwd(mis["gH"], misaligned_copy(H.to(dtype)), mis["h0"], d["weight"], "tanh")]
    want = [H, *torch.ops.phasor.wave_rnn_bwd(_cpu(d["gH"]), _cpu(H.to(dtype)), _cpu(d["h0"]), d["weight"], "tanh")]
    _compare(got, want, dtype, "unaligned")


def test_auto_runs_a_different_kernel_than_block(emu, monkeypatch):
    """The fast kernels sum the weight gradient in another order than the block kernels: under auto
    (fast path) and block the bits differ, so the auto cases above do exercise the fast kernels."""
    d = _case(3, 2, 16, 64, 3, torch.float32, seed=5)
    runs = {}
    for kernel in ("auto", "block"):
        runs[kernel] = _run_plain(emu, d, "tanh", True, False, kernel, monkeypatch)
    assert not all(torch.equal(a, b) for a, b in zip(runs["auto"], runs["block"]))


def _proj(ns, d, act, return_all, last_only, cpu=False):
    cv = _cpu if cpu else (lambda t: t)
    x, h0, V, bV, w, b = cv(d["x"]), cv(d["h0"]), d["V"], d["bV"], d["weight"], d["bias"]
    out = ns.wave_rnn_proj_fwd(x, V, bV, w, b, h0, act, return_all)
    H = torch.ops.phasor.wave_rnn_proj_fwd(_cpu(d["x"]), V, bV, w, b, _cpu(d["h0"]), act, True)
    H = cv(H.to(d["x"].dtype))  # 16-bit: both sides read the same rounded states
    gH = cv(d["gh"] if last_only else d["gH"])
    return [out, *ns.wave_rnn_proj_bwd(gH, H, x, V, h0, w, act)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape,n_inp", [((3, 2, 5, 7, 3), 3), ((2, 2, 3, 9, 5), 16), ((2, 1, 4, 6, 3), 1)])
def test_projected_ops(emu, shape, n_inp, dtype, monkeypatch):
    """The fused tiny-input path (block kernels only), V and the dV accumulators in shared memory."""
    monkeypatch.setenv(ENV, "auto")
    d = _case(*shape, dtype, seed=sum(shape) + n_inp, n_inp=n_inp)
    for k, act in enumerate(ACTS):
        got = _proj(emu, d, act, k != 1, k == 2)
        want = _proj(torch.ops.phasor, d, act, k != 1, k == 2, cpu=True)
        _compare(got, want, dtype, f"proj {act}")


@pytest.mark.parametrize("c", [16, 32])
def test_projected_ops_with_global_memory_fallbacks(emu, c, monkeypatch):
    """float64, n_inp = 16, n = 64: at c = 16 the backward's V^T is read from global memory, at c = 32
    neither V^T nor the dV accumulators fit shared memory (forward: V^T from global)."""
    monkeypatch.setenv(ENV, "auto")
    d = _case(2, 1, c, 64, 3, torch.float64, seed=c, n_inp=16)
    for act in ("relu", "tanh"):
        _compare(_proj(emu, d, act, True, False), _proj(torch.ops.phasor, d, act, True, False, cpu=True),
                 torch.float64, f"proj c={c} {act}")


@pytest.mark.parametrize("kernel", ["auto", "block"])
def test_zero_steps(emu, kernel, monkeypatch):
    """T = 0: the forward returns h0 (last-only) or an empty H; the backward's dL/dh0 is dL/dh_T itself."""
    monkeypatch.setenv(ENV, kernel)
    d = _case(0, 2, 3, 5, 3, torch.float32)
    w, b, h0 = d["weight"], d["bias"], d["h0"]
    assert torch.equal(emu.wave_rnn_fwd(d["u"], w, b, h0, "tanh", False), h0)
    assert emu.wave_rnn_fwd(d["u"], w, b, h0, "tanh", True).shape == (0, 2, 3, 5)
    H = d["u"]
    got = emu.wave_rnn_bwd(d["gh"], H, h0, w, "tanh")
    want = torch.ops.phasor.wave_rnn_bwd(d["gh"], H, h0, w, "tanh")
    for e, c in zip(got, want):
        assert torch.equal(e, c)


def test_kernels_repeat_bitwise(emu, monkeypatch):
    """Per-sample partials summed in batch order, no atomics: two runs give identical bits."""
    d = _case(3, 3, 16, 20, 3, torch.float32, seed=6)
    for kernel in ("auto", "block"):
        monkeypatch.setenv(ENV, kernel)
        first, second = (_plain(emu, d, "tanh", True, False) for _ in range(2))
        assert all(torch.equal(a, b) for a, b in zip(first, second)), kernel


@pytest.mark.parametrize("schedule", ["reverse", "shuffle"])
@pytest.mark.parametrize("kernel", ["auto", "block"])
def test_other_thread_orders(emu, kernel, schedule, monkeypatch):
    """The threads run between barriers in reverse or shuffled order (PHASOR_CUDA_EMU_SCHEDULE): a missing
    barrier (a reader ahead of its writer, a writer overwriting what another thread still reads) would
    change the results. The fast backward's two teams (c = 24), 16-bit staging, and the fused projection."""
    monkeypatch.setenv("PHASOR_CUDA_EMU_SCHEDULE", schedule)
    for shape, dtype in (((7, 2, 5, 7, 3), torch.float32), ((7, 1, 24, 25, 3), torch.float32),
                         ((7, 2, 3, 8, 3), torch.bfloat16)):
        d = _case(*shape, dtype, seed=sum(shape) + 2)
        _run_plain(emu, d, "tanh", True, False, kernel, monkeypatch)
        _run_plain(emu, d, "relu", False, True, kernel, monkeypatch)
    d = _case(3, 2, 5, 7, 3, torch.float32, seed=9, n_inp=3)
    _compare(_proj(emu, d, "tanh", True, False), _proj(torch.ops.phasor, d, "tanh", True, False, cpu=True),
             torch.float32, f"proj {schedule}")
