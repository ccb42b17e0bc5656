"""The cv-RNN CUDA kernels against each other and the CPU op: the cluster kernel (band and low-rank,
auto and forced cluster sizes) vs the block kernel (PHASOR_CVRNN_CUDA_KERNEL=block) vs the CPU, on odd
sizes, masks, batch 1 and 16, both couplings, windows as states and phases. Skipped without a GPU."""
import math

import pytest
import torch

from helpers import requires_cuda
from phasor.complex_rnn import data, ops
from phasor.complex_rnn import reference as ref
from phasor.complex_rnn.segmentation import Config, background_mask, initial_state

pytestmark = requires_cuda

EPS = torch.finfo(torch.float32).eps


def node_inputs(shape, seed=0, masked=True):
    B, H, W = shape
    g = torch.Generator().manual_seed(seed)
    x0 = torch.polar(torch.rand(B, H, W, generator=g, dtype=torch.float64) + 0.5,
                     2 * math.pi * torch.rand(B, H, W, generator=g, dtype=torch.float64))
    omega = torch.randn(B, H, W, generator=g, dtype=torch.float64)
    mask = torch.rand(B, H, W, generator=g) > 0.3 if masked else None
    return x0.to(torch.complex64), omega.float(), mask


def max_error(a, b):
    return (a.cpu().to(torch.complex128) - b.cpu().to(torch.complex128)).abs().max().item() if a.numel() else 0.0


def phasor_error(a, b):
    a, b = a.cpu().double(), b.cpu().double()
    return (torch.polar(torch.ones_like(a), a) - torch.polar(torch.ones_like(b), b)).abs().max().item() if a.numel() else 0.0


def run(x0, omega, mask, sigma, steps, start, stop, save_phase=False, device="cuda", kernel=None, cluster=None,
        monkeypatch=None, renorm=True):
    if monkeypatch is not None:
        for var, val in (("PHASOR_CVRNN_CUDA_KERNEL", kernel), ("PHASOR_CVRNN_CUDA_CLUSTER", cluster)):
            if val is None:
                monkeypatch.delenv(var, raising=False)
            else:
                monkeypatch.setenv(var, str(val))
    m = None if mask is None else mask.to(device)
    return ops.cvrnn_run(x0.to(device), omega.to(device), 0.5, sigma, steps, mask=m, renorm=renorm,
                         save_start=start, save_stop=stop, save_phase=save_phase)


def truth_of(x0, omega, mask, sigma, steps, start, stop, renorm=True):
    return ops.cvrnn_run(x0.to(torch.complex128), omega.double(), 0.5, sigma, steps, mask=mask, renorm=renorm,
                         save_start=start, save_stop=stop)


# (B, H, W): odd and non-square sizes, batch 1 and 16, the 64 x 64 bench size, the near-limit 90 x 97
CASES = [(1, 17, 23), (16, 64, 64), (2, 90, 97), (3, 32, 32), (16, 13, 9), (1, 1, 9), (2, 6, 1)]


@pytest.mark.parametrize("shape", CASES)
@pytest.mark.parametrize("sigma", [0.0313, 0.9])
@pytest.mark.parametrize("masked", [False, True])
def test_cluster_vs_block_vs_cpu(shape, sigma, masked, monkeypatch):
    """complex states: the cluster kernel's error against the complex128 CPU truth is at most twice the
    block kernel's and twice the CPU complex64 op's, plus four ulps; phases are those of its states."""
    x0, omega, mask = node_inputs(shape, seed=sum(shape), masked=masked)
    steps, start, stop = 30, 0, 31
    new = run(x0, omega, mask, sigma, steps, start, stop, monkeypatch=monkeypatch)
    old = run(x0, omega, mask, sigma, steps, start, stop, kernel="block", monkeypatch=monkeypatch)
    cpu = run(x0, omega, mask, sigma, steps, start, stop, device="cpu")
    truth = truth_of(x0, omega, mask, sigma, steps, start, stop)
    e_new, e_old, e_cpu = max_error(new, truth), max_error(old, truth), max_error(cpu, truth)
    assert e_new <= 2 * e_old + 4 * EPS, f"cluster {e_new:.3e} vs block {e_old:.3e}"
    assert e_new <= 2 * e_cpu + 4 * EPS, f"cluster {e_new:.3e} vs cpu {e_cpu:.3e}"
    ph = run(x0, omega, mask, sigma, steps, start, stop, save_phase=True, monkeypatch=monkeypatch)
    assert phasor_error(ph, ref.phase(new)) <= 1e-6
    assert torch.equal(new[:, 0].cpu(), x0)  # sample 0 is x0 as given


@pytest.mark.parametrize("cluster", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("kernel", ["auto", "band"])
@pytest.mark.parametrize("shape,sigma", [((2, 17, 23), 0.0313), ((2, 17, 23), 0.9), ((1, 64, 64), 0.0313),
                                         ((3, 90, 97), 0.9), ((2, 24, 37), 0.3)])
def test_forced_cluster_sizes(shape, sigma, kernel, cluster, monkeypatch):
    """Every cluster size (incl. ones that do not divide H) and the band path for the global coupling
    too, against the truth as above; the band path sums as the block kernel does."""
    x0, omega, mask = node_inputs(shape, seed=cluster)
    steps, start, stop = 20, 5, 21
    new = run(x0, omega, mask, sigma, steps, start, stop, kernel=kernel, cluster=cluster, monkeypatch=monkeypatch)
    old = run(x0, omega, mask, sigma, steps, start, stop, kernel="block", monkeypatch=monkeypatch)
    truth = truth_of(x0, omega, mask, sigma, steps, start, stop)
    e_new, e_old = max_error(new, truth), max_error(old, truth)
    assert e_new <= 2 * e_old + 4 * EPS, f"C={cluster} {kernel}: {e_new:.3e} vs block {e_old:.3e}"
    again = run(x0, omega, mask, sigma, steps, start, stop, kernel=kernel, cluster=cluster, monkeypatch=monkeypatch)
    assert torch.equal(new, again)  # bitwise repeatable


@pytest.mark.parametrize("window", [(0, 1), (0, 9), (8, 9), (2, 6), (1, 2)])
@pytest.mark.parametrize("renorm", [False, True])
@pytest.mark.parametrize("sigma", [0.0313, 0.9])
def test_windows_and_no_renorm(window, renorm, sigma, monkeypatch):
    """Every window (sample t - 1 is written in step t, the last after the loop) with and without
    renormalisation, C = 8, as complex states and phases."""
    x0, omega, mask = node_inputs((2, 32, 32), seed=3)
    new = run(x0, omega, mask, sigma, 8, *window, cluster=8, monkeypatch=monkeypatch, renorm=renorm)
    old = run(x0, omega, mask, sigma, 8, *window, kernel="block", monkeypatch=monkeypatch, renorm=renorm)
    assert new.shape == old.shape == (2, window[1] - window[0], 32, 32)
    assert torch.isfinite(torch.view_as_real(new)).all()
    assert max_error(new, old) <= 1e-4 * max(1.0, old.abs().max().item())
    ph = run(x0, omega, mask, sigma, 8, *window, save_phase=True, cluster=8, monkeypatch=monkeypatch, renorm=renorm)
    assert phasor_error(ph, ref.phase(new)) <= 1e-6


def test_bench_sizes_match_cpu_closely(monkeypatch):
    """The bench cases (batch 16, 32 and 64, both couplings, 200 steps): the cluster kernel vs the CPU
    op, relative to the truth's errors (the global case runs the CPU's low-rank factors on both)."""
    for N in (32, 64):
        for sigma, masked in ((0.0313, True), (0.9, False)):
            x0, omega, mask = node_inputs((16, N, N), seed=N, masked=masked)
            new = run(x0, omega, mask, sigma, 200, 200, 201, monkeypatch=monkeypatch)
            cpu = run(x0, omega, mask, sigma, 200, 200, 201, device="cpu")
            truth = truth_of(x0, omega, mask, sigma, 200, 200, 201)
            e_new, e_cpu = max_error(new, truth), max_error(cpu, truth)
            assert e_new <= 2 * e_cpu + 4 * EPS, f"{N} sigma {sigma}: {e_new:.3e} vs cpu {e_cpu:.3e}"


@pytest.mark.parametrize("num_objects,index,seed", [(2, 0, 0), (3, 1, 2)])
def test_two_layer_phases_within_spec_bound_on_cuda(num_objects, index, seed):
    """test_cvrnn_precision's bound on the CUDA op: 1e-5 rad against complex128 on well-conditioned
    nodes of both layers, and on 99% of the foreground layer-2 samples."""
    image, labels = data.shapes_image(num_objects, 0, index)
    cfg = Config()

    def states(dtype, device, fg=None):
        x0 = initial_state((1, *image.shape), seed, torch.complex128).to(dtype).to(device)
        omega = image[None].to(dtype.to_real()).to(device)
        a1, s1, n1 = cfg.layer1
        l1 = ops.cvrnn_run(x0, omega, a1, s1, n1).cpu()
        if fg is None:
            fg = ~background_mask(torch.angle(l1[:, -1]))
        fgd = fg.to(device)
        a2, s2, n2 = cfg.layer2
        l2 = ops.cvrnn_run(x0 * fgd, omega * fgd, a2, s2, n2, mask=fgd, save_start=1).cpu()
        return l1[0], l2[0], fg

    l1_64, l2_64, fg = states(torch.complex128, "cpu")
    l1_32, l2_32, _ = states(torch.complex64, "cuda", fg)
    for got, want, nodes in ((l1_32, l1_64, torch.ones_like(fg[0])), (l2_32, l2_64, fg[0])):
        err = (torch.angle(got.to(torch.complex128) * want.conj())).abs()[:, nodes]
        strong = (want.abs() >= 0.1 * want.abs().flatten(1).amax(1).view(-1, 1, 1))[:, nodes]
        assert err[strong].max() <= 1e-5, f"max phase error on well-conditioned nodes {err[strong].max():.2e}"
    err2 = torch.angle(l2_32.to(torch.complex128) * l2_64.conj()).abs()[:, fg[0]]
    assert err2.quantile(0.99) <= 1e-5


@pytest.mark.parametrize("sigma", [0.0313, 0.9])
def test_cuda_graph_capture_replays(sigma, monkeypatch):
    """Both paths inside torch.cuda.graph (after a warm-up call, as reduce-overhead does): the factors
    travel in the kernel parameters, so a replay with new inputs in the same buffers is right."""
    monkeypatch.delenv("PHASOR_CVRNN_CUDA_KERNEL", raising=False)
    monkeypatch.delenv("PHASOR_CVRNN_CUDA_CLUSTER", raising=False)
    x0, omega, mask = node_inputs((4, 32, 32), seed=7)
    sx, so, sm = x0.cuda(), omega.cuda(), mask.cuda()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.cvrnn_run(sx, so, 0.5, sigma, 12, mask=sm, save_start=4)  # warm-up: factors and occupancy cached
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = ops.cvrnn_run(sx, so, 0.5, sigma, 12, mask=sm, save_start=4)
    for seed in (8, 9):
        x1, o1, m1 = node_inputs((4, 32, 32), seed=seed)
        sx.copy_(x1.cuda()), so.copy_(o1.cuda()), sm.copy_(m1.cuda())
        g.replay()
        want = ops.cvrnn_run(x1.cuda(), o1.cuda(), 0.5, sigma, 12, mask=m1.cuda(), save_start=4)
        assert torch.equal(out, want)


def test_bad_env_values_are_clear_errors(monkeypatch):
    x0, omega, _ = node_inputs((1, 8, 8), masked=False)
    monkeypatch.setenv("PHASOR_CVRNN_CUDA_KERNEL", "fast")
    with pytest.raises(ValueError, match="PHASOR_CVRNN_CUDA_KERNEL"):
        ops.cvrnn_run(x0.cuda(), omega.cuda(), 0.5, 0.1, 3)
    monkeypatch.delenv("PHASOR_CVRNN_CUDA_KERNEL")
    monkeypatch.setenv("PHASOR_CVRNN_CUDA_CLUSTER", "9")
    with pytest.raises(ValueError, match="PHASOR_CVRNN_CUDA_CLUSTER"):
        ops.cvrnn_run(x0.cuda(), omega.cuda(), 0.5, 0.1, 3)
