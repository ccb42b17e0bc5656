"""PDE generators against known properties: Burgers converges to the Cole-Hopf solution, KS
conserves the mean and ETDRK4 is consistent under step halving, NS2D reproduces the Taylor-Green
decay with a divergence-free velocity; HDF5 cache round trip with parameters."""
import math

import pytest
import torch

from phasor.quantized_pde import datasets, pde_data


def test_burgers_converges_to_cole_hopf():
    nu, t = 0.1, 0.3
    errors = []
    for nx in (32, 64, 128):
        x = (torch.arange(nx, dtype=torch.float64) + 0.5) / nx
        h = 0.5 / nx  # cell averages of sin(2 pi x)
        u0 = (torch.cos(2 * math.pi * (x - h)) - torch.cos(2 * math.pi * (x + h))) / (4 * math.pi * h)
        u = pde_data.burgers_solve(u0[None], nu, [t])[0, 0]
        exact = pde_data.burgers_cole_hopf(lambda s: torch.sin(2 * math.pi * s), nu, t, nx)
        errors.append((u - exact).abs().max().item())
    assert errors[-1] < 2e-3
    assert errors[0] / errors[1] > 2.5 and errors[1] / errors[2] > 2.5  # about second order


def test_burgers_dataset_shapes_and_determinism():
    a, p = pde_data.generate_burgers(3, nx=64, nt=5, t_end=0.2, seed=7)
    b, _ = pde_data.generate_burgers(3, nx=64, nt=5, t_end=0.2, seed=7)
    assert a.shape == (3, 5, 1, 64) and torch.equal(a, b) and p["nu"] == 0.01
    assert torch.isfinite(a).all()


def test_ks_grid_mean_conservation_and_step_halving():
    u, p, L = pde_data.generate_ks(2, nx=256, nt=6, burn_in=2.0, seed=1)
    assert 0.15 < p["dt"] < 0.25 and 0.2 < p["dx"] < 0.3  # the PDEArena datapipe's ranges
    mean = u.double().mean(-1)
    torch.testing.assert_close(mean, mean[:, :1].expand_as(mean), rtol=0, atol=1e-6)
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(128, dtype=torch.float64) / 128
    u0 = torch.sin(2 * math.pi * x) * 0.5 + 0.3 * torch.cos(4 * math.pi * x + torch.rand(1, generator=gen, dtype=torch.float64))
    Ls = torch.tensor([22.0], dtype=torch.float64)
    coarse = pde_data.ks_solve(u0[None], Ls, 0.05, 40, 40)[:, -1]
    fine = pde_data.ks_solve(u0[None], Ls, 0.025, 80, 80)[:, -1]
    assert (coarse - fine).abs().max() < 1e-6 * max(1.0, fine.abs().max().item())


def test_ns2d_taylor_green_decay_and_divergence_free():
    n, L, nu = 32, 2 * math.pi, 0.05
    solver = pde_data.SpectralNS2d(n, L, nu, buoyancy=0.0)
    xs = torch.arange(n, dtype=torch.float64) * L / n
    X, Y = xs[None, :], xs[:, None]
    w0 = (2 * torch.sin(X) * torch.sin(Y))[None]
    out = solver.run(w0, torch.zeros_like(w0), [0.0, 1.0])
    exact = w0 * math.exp(-2 * nu * 1.0)
    torch.testing.assert_close(out[:, 1, 1], exact, rtol=0, atol=1e-9)
    # a random state: the spectral velocity is divergence-free to rounding
    w = torch.randn(1, n, n, dtype=torch.float64)
    u, v = solver.velocity(torch.fft.rfft2(w))
    div = torch.fft.irfft2(1j * solver.kx * torch.fft.rfft2(u) + 1j * solver.ky * torch.fft.rfft2(v), s=(n, n))
    assert div.abs().max() < 1e-10 * u.abs().max()


def test_ns2d_smoke_dataset_conserves_scalar_mean():
    u, p = pde_data.generate_ns2d(2, n=16, nt=4, seed=3)
    assert u.shape == (2, 4, 2, 16, 16) and "periodic" in p["note"]
    s_mean = u[:, :, 0].double().mean((-1, -2))
    torch.testing.assert_close(s_mean, s_mean[:, :1].expand_as(s_mean), rtol=0, atol=1e-6)
    assert u[:, -1, 1].abs().max() > 0  # buoyancy generated vorticity


@pytest.mark.parametrize("use_h5", [True, False])
def test_cache_round_trip_with_parameters(tmp_path, monkeypatch, use_h5):
    if use_h5:
        pytest.importorskip("h5py")
    monkeypatch.setattr(datasets, "HAVE_H5PY", use_h5)
    u, p = datasets.get("burgers1d", 2, 5, str(tmp_path), nx=32, nt=3, t_end=0.1)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == (".h5" if use_h5 else ".pt")
    u2, p2 = datasets.get("burgers1d", 2, 5, str(tmp_path), nx=32, nt=3, t_end=0.1)
    assert torch.equal(u, u2) and p2["nx"] == 32 and p2["pde"] == "burgers1d"
