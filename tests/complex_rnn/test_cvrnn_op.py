"""Fused cv-RNN run (separable Gaussian sheet and dense coupling) against the plain-PyTorch reference."""
import math

import pytest
import torch

from helpers import assert_bad_input, check_opcheck, cpu_isa, device_params, noncontiguous, requires_cuda  # noqa: F401
from phasor.complex_rnn import ops, reference as ref

# (B, H, W, sigma): odd and non-square sizes, a single row / column, sides below one vector (8 floats)
# and above several, the paper's layer-2 (local) and layer-1 (near-global) widths, batch 1, empty batch.
SHAPES = [(3, 7, 5, 0.3), (2, 32, 32, 0.0313), (2, 32, 32, 0.9), (1, 13, 17, 0.1), (2, 1, 9, 0.2),
          (2, 6, 1, 0.2), (1, 3, 40, 0.05), (0, 4, 4, 0.3), (2, 20, 33, 0.0313),
          (1, 24, 37, 0.9)]  # the last: non-square near-global coupling (the low-rank path), W not a vector multiple


def node_inputs(shape, dtype=torch.complex128, seed=0, masked=True, device="cpu"):
    B, H, W = shape
    g = torch.Generator().manual_seed(seed)
    x0 = torch.polar(torch.rand(B, H, W, generator=g, dtype=torch.float64) + 0.5,
                     2 * math.pi * torch.rand(B, H, W, generator=g, dtype=torch.float64))
    omega = torch.randn(B, H, W, generator=g, dtype=torch.float64)
    mask = torch.rand(B, H, W, generator=g) > 0.3 if masked else None
    rdt = dtype.to_real()
    return x0.to(device, dtype), omega.to(device, rdt), None if mask is None else mask.to(device)


def phasor_error(a, b):
    """Max |exp(i a) - exp(i b)|: phase differences without the 2 pi wrap."""
    return (torch.polar(torch.ones_like(a.double()), a.double()) - torch.polar(torch.ones_like(b.double()), b.double())
            ).abs().max().item() if a.numel() else 0.0


def max_error(a, b):
    return (a.to(torch.complex128) - b.to(torch.complex128)).abs().max().item() if a.numel() else 0.0


def check_against_reference(fused_out, run_ref, x0, omega, mask, save_phase, run_fused=None):
    """complex128: 1e-10 (relative to the renormalised scale, max |x| = 1). complex64 states:
    FlashAttention's rule, error against the complex128 truth at most twice that of the reference
    run in complex64, plus four ulps. complex64 phases: those of the fused complex states (a phase
    near a node's zero crossing is ill-conditioned, so its error against the truth is a lottery;
    the states themselves are checked in the complex runs)."""
    err = phasor_error if save_phase else max_error
    if save_phase and x0.dtype == torch.complex64:
        states = run_fused()
        assert fused_out.dtype == torch.float32 and fused_out.shape == states.shape
        assert phasor_error(fused_out.cpu(), ref.phase(states).cpu()) <= 1e-6
        return
    if x0.dtype == torch.complex128:
        want = run_ref(x0, omega, mask)
        assert fused_out.dtype == want.dtype and fused_out.shape == want.shape
        assert err(fused_out, want) <= 1e-10 * (1.0 if save_phase else max(1.0, max_error(want, 0 * want)))
        return
    truth = run_ref(x0.to(torch.complex128), omega.double(), mask)
    same = run_ref(x0, omega, mask)
    assert fused_out.dtype == same.dtype and fused_out.shape == same.shape
    e_f, e_s = err(fused_out.cpu(), truth.cpu()), err(same.cpu(), truth.cpu())
    assert e_f <= 2 * e_s + 4 * torch.finfo(torch.float32).eps, f"error {e_f:.3e} vs same-precision {e_s:.3e}"


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("save_phase", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_run_matches_reference(shape, save_phase, masked, dtype, device, cpu_isa):
    if device == "cuda" and dtype == torch.complex128:
        pytest.skip("the CUDA kernel is complex64 only")
    *size, sigma = shape
    x0, omega, mask = node_inputs(size, dtype, masked=masked, device=device)
    steps, start, stop = 25, 3, 26
    out = ops.cvrnn_run(x0, omega, 0.5, sigma, steps, mask=mask, save_start=start, save_stop=stop,
                        save_phase=save_phase)
    check_against_reference(
        out, lambda x, o, m: ref.run_separable_ref(x.cpu(), o.cpu(), None if m is None else m.cpu(), 0.5, sigma, steps,
                                                   True, start, stop, save_phase),
        x0, omega, mask, save_phase,
        lambda: ops.cvrnn_run(x0, omega, 0.5, sigma, steps, mask=mask, save_start=start, save_stop=stop))


@pytest.mark.parametrize("window", [(0, 1), (0, 9), (4, 4), (8, 9), (2, 6)])
def test_windows_and_no_renorm(window):
    """Every window (sample 0 = x0 as given, unmasked; empty windows) with and without renormalisation."""
    x0, omega, mask = node_inputs((2, 9, 11))
    for renorm in (False, True):
        out = ops.cvrnn_run(x0, omega, 0.3, 0.2, 8, mask=mask, renorm=renorm, save_start=window[0], save_stop=window[1])
        want = ref.run_separable_ref(x0, omega, mask, 0.3, 0.2, 8, renorm, *window)
        assert out.shape == (2, window[1] - window[0], 9, 11)
        torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10 * max(1.0, max_error(want, 0 * want)))


def test_noncontiguous_inputs(cpu_isa):
    x0, omega, mask = node_inputs((3, 8, 10))
    want = ops.cvrnn_run(x0, omega, 0.5, 0.1, 10, mask=mask)
    got = ops.cvrnn_run(noncontiguous(x0), noncontiguous(omega), 0.5, 0.1, 10, mask=noncontiguous(mask))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_separable_step_equals_dense_step():
    """The factorised step equals the dense gaussian_sheet step in float64 (1e-10 relative), with and
    without the layer-2 mask, on square and non-square sheets."""
    for (B, H, W, sigma) in [(2, 7, 9, 0.3), (2, 32, 32, 0.0313), (1, 32, 32, 0.9), (3, 5, 12, 0.15)]:
        x0, omega, mask = node_inputs((B, H, W))
        K = ref.gaussian_sheet(H, W, 0.5, sigma)
        G_r, G_c = ref.gaussian_axis(H, sigma), ref.gaussian_axis(W, sigma)
        for m in (None, mask):
            sep = ref.step_separable(x0, omega, 0.5, G_r, G_c, m)
            dense = ref.step_dense(x0.reshape(B, -1), omega.reshape(B, -1), K,
                                   None if m is None else m.reshape(B, -1)).reshape(B, H, W)
            rel = (sep - dense).abs().max() / dense.abs().max()
            assert rel <= 1e-10, f"{(H, W, sigma)}: relative difference {rel:.2e}"


def test_fused_separable_equals_fused_dense():
    """The two fused paths agree in float64 when K is the Gaussian sheet (1e-10 relative)."""
    B, H, W, sigma = 2, 12, 10, 0.12
    x0, omega, mask = node_inputs((B, H, W))
    K = ref.gaussian_sheet(H, W, 0.5, sigma)
    sep = ops.cvrnn_run(x0, omega, 0.5, sigma, 30, mask=mask)
    dense = ops.cvrnn_run_dense(x0.reshape(B, -1), omega.reshape(B, -1), K, 30, mask=mask.reshape(B, -1))
    assert (sep.reshape(dense.shape) - dense).abs().max() <= 1e-10


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("save_phase", [False, True])
@pytest.mark.parametrize("size", [(3, 20), (1, 1), (0, 6), (2, 37)])
def test_dense_matches_reference(size, save_phase, masked, dtype, cpu_isa):
    """The dense path with an arbitrary (non-symmetric, signed) coupling matrix."""
    B, n = size
    x0, omega, mask = node_inputs((B, 1, n), dtype, masked=masked)
    x0, omega = x0.reshape(B, n), omega.reshape(B, n)
    mask = None if mask is None else mask.reshape(B, n)
    K = (torch.randn(n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64) / max(n, 1) ** 0.5)
    K = K.to(dtype.to_real())
    out = ops.cvrnn_run_dense(x0, omega, K, 15, mask=mask, save_start=1, save_phase=save_phase)
    check_against_reference(
        out, lambda x, o, m: ref.run_dense_ref(x, o, K.to(x.real.dtype), m, 15, True, 1, 16, save_phase),
        x0, omega, mask, save_phase, lambda: ops.cvrnn_run_dense(x0, omega, K, 15, mask=mask, save_start=1))


@pytest.mark.parametrize("masked", [False, True])
def test_iterated_equals_exact_solution(masked):
    """x_t = V Lambda^t V^-1 x0 (SI eq. S7) against the iterated op, without and with renormalisation."""
    H, W, alpha, sigma, steps = 6, 5, 0.3, 0.25, 12
    x0, omega, mask = node_inputs((1, H, W), masked=masked)
    K = ref.gaussian_sheet(H, W, alpha, sigma)
    m = None if mask is None else mask.reshape(-1)
    exact = ref.exact_power(x0.reshape(-1), omega.reshape(-1), K, range(steps + 1), m).reshape(steps + 1, H, W)
    plain = ops.cvrnn_run(x0, omega, alpha, sigma, steps, mask=mask, renorm=False)[0]
    scale = exact.flatten(1).abs().amax(1).view(-1, 1, 1)
    assert ((plain - exact).abs() / scale).max() <= 1e-9
    normed = ops.cvrnn_run(x0, omega, alpha, sigma, steps, mask=mask, renorm=True)[0]
    assert ((normed[1:] - exact[1:] / scale[1:]).abs()).max() <= 1e-9


def test_renormalisation_leaves_phases_unchanged():
    x0, omega, mask = node_inputs((3, 16, 16))
    for m in (None, mask):
        a = ops.cvrnn_run(x0, omega, 0.5, 0.9, 20, mask=m, renorm=True)
        b = ops.cvrnn_run(x0, omega, 0.5, 0.9, 20, mask=m, renorm=False)
        assert b.abs().max() > 1e20  # the unnormalised run grows by orders of magnitude
        torch.testing.assert_close(a.abs().flatten(2).amax(2)[:, 1:], torch.ones(3, 20, dtype=torch.float64))
        assert phasor_error(ref.phase(a), ref.phase(b)) <= 1e-12
        pa = ops.cvrnn_run(x0, omega, 0.5, 0.9, 20, mask=m, renorm=True, save_phase=True)
        pb = ops.cvrnn_run(x0, omega, 0.5, 0.9, 20, mask=m, renorm=False, save_phase=True)
        assert phasor_error(pa, pb) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_saved_phases_are_the_angles_of_the_saved_states(dtype, cpu_isa):
    """The phase window (float: a vectorised atan2, within 1 ulp of the correctly rounded float) against torch.angle of the
    complex window from the same run: within one rounding of the angle's float, 0 at masked nodes,
    and phases in (-pi, pi]."""
    x0, omega, mask = node_inputs((2, 13, 21), dtype)
    for m, sigma in ((mask, 0.1), (None, 0.9)):
        ph = ops.cvrnn_run(x0, omega, 0.5, sigma, 30, mask=m, save_start=1, save_phase=True)
        z = ops.cvrnn_run(x0, omega, 0.5, sigma, 30, mask=m, save_start=1)
        want = torch.angle(z.to(torch.complex128))  # the float64 angle of the same (rounded) states
        ulp = 2.4e-7 if dtype == torch.complex64 else 1e-15
        live = z != 0  # (torch.angle of a zero with a negative real part is pi; the op's phase is 0)
        assert phasor_error(ph[live], want[live]) <= ulp
        assert (ph[~live] == 0).all() and ph.abs().max() <= math.pi
        if m is not None:
            assert (~live).any()


def test_float32_overflows_without_renormalisation():
    """The spec's overflow guard: layer 1 in complex64 leaves the float range within ~14 updates
    unless each image is renormalised."""
    x0, omega, _ = node_inputs((1, 32, 32), torch.complex64, masked=False)
    plain = ops.cvrnn_run(x0, omega.sign(), 0.5, 0.9, 59, renorm=False)
    first_bad = int((~torch.isfinite(plain.abs()).flatten(1).all(1)).nonzero()[0])
    assert first_bad <= 20
    assert torch.isfinite(ops.cvrnn_run(x0, omega.sign(), 0.5, 0.9, 59)).all()


def test_forward_only_says_so():
    x0, omega, _ = node_inputs((1, 4, 4), masked=False)
    out = ops.cvrnn_run(x0.requires_grad_(), omega, 0.5, 0.2, 3)
    with pytest.raises(RuntimeError, match="forward-only"):
        out.abs().sum().backward()


def test_bad_inputs():
    x0, omega, mask = node_inputs((2, 5, 6))
    run = ops.cvrnn_run
    assert_bad_input(run, x0.real, omega, 0.5, 0.2, 3, names="x0")                       # not complex
    assert_bad_input(run, x0.to(torch.complex64), omega, 0.5, 0.2, 3, names="omega")     # dtype mismatch
    assert_bad_input(run, x0, omega[:, :4], 0.5, 0.2, 3, names="omega")                  # shape mismatch
    assert_bad_input(lambda: run(x0, omega, 0.5, 0.2, 3, mask=mask[:1]), names="mask")
    assert_bad_input(lambda: run(x0, omega, 0.5, 0.2, 3, mask=mask.float()), names="mask")
    assert_bad_input(run, x0[0], omega[0], 0.5, 0.2, 3, names="x0")                      # not [B, H, W]
    for sigma in (0.0, -0.1, float("nan")):
        assert_bad_input(run, x0, omega, 0.5, sigma, 3, names="sigma")
    assert_bad_input(run, x0, omega, 0.5, 0.2, -1, names="steps")
    assert_bad_input(lambda: run(x0, omega, 0.5, 0.2, 3, save_start=2, save_stop=5), names="save_stop")
    assert_bad_input(lambda: run(x0, omega, 0.5, 0.2, 3, save_start=3, save_stop=2), names="save_start")
    xd, od = x0.reshape(2, 30), omega.reshape(2, 30)
    K = torch.randn(30, 30, dtype=torch.float64)
    dense = ops.cvrnn_run_dense
    assert_bad_input(dense, xd, od, K[:, :29], 3, names="K")
    assert_bad_input(dense, xd, od, K.float(), 3, names="K")
    assert_bad_input(dense, xd.real, od, K, 3, names="x0")
    assert_bad_input(dense, xd, od, K, -2, names="steps")


def test_opcheck():
    x0, omega, mask = node_inputs((2, 6, 7))
    check_opcheck(torch.ops.phasor.cvrnn_run, [x0, omega, mask, 0.5, 0.2, 6, True, 2, 7, False], with_grad=False)
    check_opcheck(torch.ops.phasor.cvrnn_run, [x0.to(torch.complex64), omega.float(), None, 0.5, 0.9, 4, True, 0, 5,
                                               True], with_grad=False)
    K = torch.randn(42, 42, dtype=torch.float64) / 6
    check_opcheck(torch.ops.phasor.cvrnn_run_dense,
                  [x0.reshape(2, 42), omega.reshape(2, 42), K, mask.reshape(2, 42), 5, True, 0, 6, True],
                  with_grad=False)


def test_compile_fullgraph():
    x0, omega, mask = node_inputs((2, 8, 8), torch.complex64)

    def f(x0, omega, mask):
        ph = ops.cvrnn_run(x0, omega * 2, 0.5, 0.1, 12, mask=mask, save_start=4, save_phase=True)
        return torch.cos(ph).mean(1)
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True)(x0, omega, mask)
    torch.testing.assert_close(got, f(x0, omega, mask))


@requires_cuda
def test_cuda_rejects_complex128_and_matches_cpu_on_images():
    x0, omega, mask = node_inputs((3, 64, 64), torch.complex64, device="cuda")
    with pytest.raises(TypeError, match="complex64"):
        ops.cvrnn_run(x0.to(torch.complex128), omega.double(), 0.5, 0.1, 3)
    for sigma in (0.0313, 0.9):
        gpu = ops.cvrnn_run(x0, omega, 0.5, sigma, 140, mask=mask, save_start=80, save_stop=121, save_phase=True)
        cpu = ops.cvrnn_run(x0.cpu(), omega.cpu(), 0.5, sigma, 140, mask=mask.cpu(), save_start=80, save_stop=121,
                            save_phase=True)
        truth = ops.cvrnn_run(x0.cpu().to(torch.complex128), omega.cpu().double(), 0.5, sigma, 140, mask=mask.cpu(),
                              save_start=80, save_stop=121, save_phase=True)
        assert phasor_error(gpu.cpu(), truth) <= 2 * phasor_error(cpu, truth) + 1e-6


@requires_cuda
def test_cuda_large_image_near_the_shared_memory_limit():
    """A 90 x 97 image keeps ~210 KB of state in shared memory (the opt-in path, just under the
    H100/H200 limit of 227 KB): still the reference's result, for both couplings."""
    B, H, W = 2, 90, 97
    need = 6 * H * W * 4 + 2 * (H + W) * 4
    if torch.cuda.get_device_properties(0).shared_memory_per_block_optin < need + 1024:
        pytest.skip("needs a GPU with ~211 KB of shared memory per block (H100/H200)")
    x0, omega, mask = node_inputs((B, H, W), torch.complex64, device="cuda")
    for sigma in (0.0313, 0.9):
        out = ops.cvrnn_run(x0, omega, 0.5, sigma, 12, mask=mask, save_start=10)
        check_against_reference(
            out, lambda x, o, m: ref.run_separable_ref(x.cpu(), o.cpu(), m.cpu(), 0.5, sigma, 12, True, 10, 13),
            x0, omega, mask, False)


@requires_cuda
def test_cuda_image_too_large_for_shared_memory_is_a_clear_error():
    x0, omega, _ = node_inputs((1, 160, 160), torch.complex64, masked=False, device="cuda")
    with pytest.raises(RuntimeError, match="shared memory"):
        ops.cvrnn_run(x0, omega, 0.5, 0.1, 3)


@requires_cuda
def test_cuda_dense_op_is_cpu_only():
    """cvrnn_run_dense has no CUDA kernel (documented CPU only): a clear dispatcher error, not a crash."""
    x0, omega, _ = node_inputs((2, 1, 6), torch.complex64, masked=False, device="cuda")
    K = torch.randn(6, 6, device="cuda")
    with pytest.raises(NotImplementedError, match="CUDA"):
        ops.cvrnn_run_dense(x0.reshape(2, 6), omega.reshape(2, 6), K, 3)


@requires_cuda
def test_cuda_graphs_reduce_overhead():
    """torch.compile(mode="reduce-overhead") replays CUDA graphs: a launch off the current stream
    would give stale or wrong results (pytorch/pytorch#157363). The op between two ordinary kernels,
    several calls with new inputs."""
    lin = torch.nn.Linear(8, 8).cuda()

    def f(x0, omega, mask):
        ph = ops.cvrnn_run(x0, omega * 2, 0.5, 0.1, 12, mask=mask, save_start=4, save_phase=True)
        return lin(torch.cos(ph).mean(1))
    torch._dynamo.reset()
    compiled = torch.compile(f, mode="reduce-overhead", fullgraph=True)
    for i in range(4):
        x0, omega, mask = node_inputs((3, 8, 8), torch.complex64, seed=i, device="cuda")
        with torch.no_grad():
            got = compiled(x0, omega, mask).clone()
            want = f(x0, omega, mask)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
