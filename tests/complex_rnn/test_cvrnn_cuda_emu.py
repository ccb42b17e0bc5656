"""The cv-RNN CUDA kernels (csrc/complex_rnn/complex_rnn_cuda.cu), run from their own source on the CPU
(tools/cuda_emu), against the CPU op: the one-block-per-image kernel (PHASOR_CVRNN_CUDA_KERNEL=block), the
cluster kernel's band path (=band) and, under auto, its low-rank path for near-global coupling, with
cluster sizes 1 to 8 (PHASOR_CVRNN_CUDA_CLUSTER; the emulated device is an H100, so clusters run, their
blocks sharing memory through map_shared_rank and meeting at cluster barriers). Images whose rows do not
divide over the cluster's blocks (13 x 11, 32 x 32 over 3 or 5 blocks, more blocks than rows), masks,
renormalisation on and off, every kind of save window, as complex states and as phases.

Tolerance (complex64, S steps): each update adds O(1) relative rounding errors of float32 (a few eps32
from the complex product, the band / low-rank sums and the renormalising division) to states of
magnitude <= max |x|; to first order the errors of S steps add up, so the kernels and the CPU op, each
within ~S * eps32 * max |x| of the exact run, differ by at most 8 * S * eps32 * max |x| (a margin of ~4
over the worst per-step count). The kernels must also be as accurate as the CPU op itself: their error
against the complex128 CPU run at most twice the complex64 CPU op's, plus four ulps."""
import math

import pytest
import torch

from helpers import emulated_cuda_ops
from test_cvrnn_cuda_kernels import node_inputs as _inputs  # same seeded inputs as the GPU tests

pytestmark = [pytest.mark.cuda_emu, pytest.mark.slow]

EPS = torch.finfo(torch.float32).eps
LOCAL, GLOBAL = 0.0313, 0.9  # band coupling; near-global coupling (the low-rank path under auto)


@pytest.fixture(scope="module")
def emu():
    return emulated_cuda_ops("complex_rnn")


def _set_kernel(monkeypatch, kernel, cluster):
    monkeypatch.setenv("PHASOR_CVRNN_CUDA_KERNEL", kernel)
    if cluster is None:
        monkeypatch.delenv("PHASOR_CVRNN_CUDA_CLUSTER", raising=False)
    else:
        monkeypatch.setenv("PHASOR_CVRNN_CUDA_CLUSTER", str(cluster))


def _run(ns, x0, omega, mask, sigma, steps, window, renorm=True, save_phase=False):
    return ns.cvrnn_run(x0, omega, mask, 0.5, sigma, steps, renorm, window[0], window[1], save_phase)


def _check(emu_ns, x0, omega, mask, sigma, steps, window, renorm=True, what=""):
    """Complex states and phases of the emulated kernel against the CPU op (complex64) and its truth."""
    new = _run(emu_ns, x0, omega, mask, sigma, steps, window, renorm)
    cpu = _run(torch.ops.phasor, x0, omega, mask, sigma, steps, window, renorm)
    truth = _run(torch.ops.phasor, x0.to(torch.complex128), omega.double(), mask, sigma, steps, window, renorm)
    assert new.shape == cpu.shape and new.dtype == torch.complex64, what
    assert torch.isfinite(torch.view_as_real(new)).all(), f"{what}: non-finite (a read of memory no thread wrote?)"
    if new.numel() == 0:
        return
    scale = max(1.0, truth.abs().max().item())
    err_cpu = (new.to(torch.complex128) - cpu.to(torch.complex128)).abs().max().item()
    assert err_cpu <= 8 * steps * EPS * scale, f"{what}: {err_cpu:.3e} from the CPU op"
    e_new = (new.to(torch.complex128) - truth).abs().max().item()
    e_cpu = (cpu.to(torch.complex128) - truth).abs().max().item()
    assert e_new <= 2 * e_cpu + 4 * EPS * scale, f"{what}: {e_new:.3e} from the truth, CPU op {e_cpu:.3e}"
    if window[0] == 0:
        assert torch.equal(new[:, 0], x0), what  # sample 0 is x0 as given
    # phases: those of the kernel's own states, and the CPU's where |x| is not tiny (weighted by |x|)
    ph = _run(emu_ns, x0, omega, mask, sigma, steps, window, renorm, save_phase=True)
    ph_cpu = _run(torch.ops.phasor, x0, omega, mask, sigma, steps, window, renorm, save_phase=True)
    assert ph.shape == cpu.shape and ph.dtype == torch.float32, what
    assert torch.isfinite(ph).all(), what
    # a float32 atan2 is within a few ulps of pi; zero states (masked nodes) have no phase to compare
    unit = lambda p: torch.polar(torch.ones_like(p.double()), p.double())  # noqa: E731
    own = (new.abs().double() * (unit(ph) - unit(torch.angle(new))).abs()).max().item()
    assert own <= 4 * math.pi * EPS * scale, f"{what}: saved phases {own:.3e} from those of the saved states"
    weighted = (cpu.abs().double() * (unit(ph) - unit(ph_cpu)).abs()).max().item()
    assert weighted <= 2 * 8 * steps * EPS * scale, f"{what}: phases {weighted:.3e} from the CPU op's"


# (kernel, cluster): the block kernel; the band path (and auto, low-rank for GLOBAL) with the device's
# choice (None: C = 8 for small batches on the emulated H100) and forced 1, 3 and 8 blocks per image.
KERNELS = [("block", None)] + [(k, c) for k in ("band", "auto") for c in (None, 1, 3, 8)]


@pytest.mark.parametrize("kernel,cluster", KERNELS)
@pytest.mark.parametrize("shape", [(2, 13, 11), (1, 32, 32)])
@pytest.mark.parametrize("sigma", [LOCAL, GLOBAL])
def test_kernels_match_the_cpu_op(emu, shape, sigma, kernel, cluster, monkeypatch):
    """13 rows over 3 blocks (5, 4, 4) and 8 blocks (2 or 1 rows each); 32 rows over 3 (11, 11, 10)."""
    _set_kernel(monkeypatch, kernel, cluster)
    masked = (cluster or 0) % 2 == 0
    x0, omega, mask = _inputs(shape, seed=sum(shape) + (cluster or 0), masked=masked)
    _check(emu, x0, omega, mask, sigma, 10, (0, 11), what=f"{kernel} C={cluster} {shape} sigma={sigma} mask={masked}")


@pytest.mark.parametrize("kernel", ["band", "auto"])
@pytest.mark.parametrize("cluster", [2, 5, 7])
@pytest.mark.parametrize("shape,sigma", [((1, 13, 11), 0.3), ((1, 32, 32), GLOBAL), ((2, 6, 1), LOCAL), ((1, 3, 9), GLOBAL)])
def test_more_cluster_sizes(emu, shape, sigma, kernel, cluster, monkeypatch):
    """Cluster sizes 2, 5, 7 (not dividing 13 or 32), W = 1, and more blocks asked for than the image has
    rows (capped at H: 3 rows give C = 3); sigma = 0.3 is a wide band (low-rank or not as the CPU chooses)."""
    _set_kernel(monkeypatch, kernel, cluster)
    x0, omega, mask = _inputs(shape, seed=cluster)
    _check(emu, x0, omega, mask, sigma, 12, (3, 13), what=f"{kernel} C={cluster} {shape} sigma={sigma}")


@pytest.mark.parametrize("window", [(0, 1), (0, 9), (8, 9), (2, 6), (1, 2)])
@pytest.mark.parametrize("renorm", [False, True])
@pytest.mark.parametrize("kernel,cluster", [("block", None), ("band", 8), ("auto", 8)])
def test_windows_and_renormalisation(emu, window, renorm, kernel, cluster, monkeypatch):
    """Every kind of window (sample t - 1 is written in step t of the cluster kernels, the last one after
    the loop), with and without renormalisation, as complex states and as phases."""
    _set_kernel(monkeypatch, kernel, cluster)
    x0, omega, mask = _inputs((1, 13, 11), seed=3)
    for sigma in (LOCAL, GLOBAL):
        _check(emu, x0, omega, mask, sigma, 8, window, renorm,
               what=f"{kernel} C={cluster} window={window} renorm={renorm} sigma={sigma}")


@pytest.mark.parametrize("steps", [5, 20])
def test_longer_and_shorter_runs(emu, steps, monkeypatch):
    """S = 5 and 20 on the default (auto) choice, both couplings, batch 3 (several clusters)."""
    _set_kernel(monkeypatch, "auto", None)
    x0, omega, mask = _inputs((3, 13, 11), seed=steps)
    for sigma in (LOCAL, GLOBAL):
        _check(emu, x0, omega, mask, sigma, steps, (0, steps + 1), what=f"S={steps} sigma={sigma}")


def test_kernels_repeat_bitwise(emu, monkeypatch):
    """No atomics, fixed sum orders (the low-rank partials added in rank order in every block): two runs
    of each kernel give identical bits."""
    x0, omega, mask = _inputs((2, 13, 11), seed=7)
    runs = {}
    for kernel, cluster in (("block", None), ("band", 5), ("auto", 5)):
        _set_kernel(monkeypatch, kernel, cluster)
        first, second = (_run(emu, x0, omega, mask, GLOBAL, 6, (0, 7)) for _ in range(2))
        assert torch.equal(first, second), kernel
        runs[kernel] = first
    # the low-rank path sums differently from the band: auto did not run the band path here
    assert not torch.equal(runs["auto"], runs["band"])


@pytest.mark.parametrize("schedule", ["reverse", "shuffle"])
@pytest.mark.parametrize("kernel,cluster,sigma", [("block", None, LOCAL), ("band", 3, LOCAL), ("band", 8, GLOBAL),
                                                  ("auto", 5, GLOBAL)])
def test_other_thread_orders(emu, kernel, cluster, sigma, schedule, monkeypatch):
    """The threads (of all blocks of a cluster) run between barriers in reverse or shuffled order
    (PHASOR_CUDA_EMU_SCHEDULE): a missing block or cluster barrier, or a push into a peer's buffer that
    the peer still reads (the double buffering by step parity), would change the results."""
    monkeypatch.setenv("PHASOR_CUDA_EMU_SCHEDULE", schedule)
    _set_kernel(monkeypatch, kernel, cluster)
    x0, omega, mask = _inputs((2, 13, 11), seed=11)
    _check(emu, x0, omega, mask, sigma, 6, (1, 7), what=f"{kernel} C={cluster} {schedule}")
