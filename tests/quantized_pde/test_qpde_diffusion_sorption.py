"""Diffusion-sorption 1-D against known properties: with sorption off (R = 1) it converges at second
order to the series solution of the heat equation with the same Dirichlet/Robin boundaries; with
PDEBench's sorption the discrete mass balance holds to round-off and the grid self-convergence is
second order; the generated data stay in [0, 1], decrease in x and approach the steady state; the
dataset cache stores both new generators."""
import math

import pytest
import torch

from phasor.quantized_pde import datasets, diffusion_sorption as ds

F64 = torch.float64


def heat_series(c0: float, D: float, t: float, nx: int, n_terms: int = 400) -> torch.Tensor:
    """Cell averages at time t of u_t = D u_xx, u(x, 0) = c0, u(0) = 1, u(1) + D u_x(1) = 0.
    u = u_s + sum b_n exp(-D lam_n^2 t) sin(lam_n x) with the steady state u_s = 1 - x / (1 + D) and
    tan(lam) = -D lam, the n-th root lying in ((n - 1/2) pi, n pi)."""
    n = torch.arange(1, n_terms + 1, dtype=F64)
    lo, hi = (n - 0.5) * math.pi, n * math.pi

    def g(lam):
        return torch.sin(lam) + D * lam * torch.cos(lam)

    for _ in range(80):  # bisection: g changes sign on each bracket
        mid = 0.5 * (lo + hi)
        left = torch.sign(g(mid)) == torch.sign(g(lo))
        lo, hi = torch.where(left, mid, lo), torch.where(left, hi, mid)
    lam = 0.5 * (lo + hi)
    slope = 1 / (1 + D)
    # project u0 - u_s = c0 - 1 + slope x on sin(lam x) (the eigenfunctions are orthogonal)
    proj = (c0 - 1) * (1 - torch.cos(lam)) / lam + slope * (torch.sin(lam) / lam ** 2 - torch.cos(lam) / lam)
    b = proj / (0.5 - torch.sin(2 * lam) / (4 * lam))
    edges = torch.arange(nx + 1, dtype=F64) / nx
    cell_avg = (torch.cos(lam[:, None] * edges[:-1]) - torch.cos(lam[:, None] * edges[1:])) * nx / lam[:, None]
    centres = (edges[:-1] + edges[1:]) / 2
    return 1 - slope * centres + (b[:, None] * torch.exp(-D * lam[:, None] ** 2 * t) * cell_avg).sum(0)


def test_sorption_off_converges_to_heat_series():
    D, t, c0 = ds.PDEBENCH["D"], 100.0, 0.1
    assert float(ds.retardation(torch.zeros(3, dtype=F64), k_f=0.0).max()) == 1.0  # R -> 1 with k_f = 0
    errors = []
    for nx in (32, 64, 128):
        u, _ = ds.solve(torch.full((1, nx), c0, dtype=F64), [t], D=D, k_f=0.0)
        errors.append((u[0, 0] - heat_series(c0, D, t, nx)).abs().max().item())
    # measured 7.4e-4, 1.9e-4, 4.6e-5
    assert errors[-1] < 1e-4
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5


def test_mass_balance_to_round_off_and_grid_convergence():
    sorb = {k: v for k, v in ds.PDEBENCH.items() if k != "D"}
    u0 = torch.tensor([[0.1], [0.003]], dtype=F64).expand(2, 64)  # 0.003: near the singular R
    frames, inflow = ds.solve(u0, [0.0, 20.0, 50.0])
    mass = ds.total_concentration(frames, **sorb).sum(-1) / 64
    gained = mass - mass[:, :1]
    assert gained[:, -1].min() > 0.1
    assert (gained - inflow).abs().max() < 1e-12 * gained.abs().max()  # measured ~1e-15 relative
    # second-order self-convergence: successive grids, the finer one restricted by cell averaging
    levels = [ds.solve(torch.full((1, nx), 0.1, dtype=F64), [50.0])[0][0, 0] for nx in (32, 64, 128)]
    d1 = (levels[0] - levels[1].reshape(32, 2).mean(1)).abs().max().item()
    d2 = (levels[1] - levels[2].reshape(64, 2).mean(1)).abs().max().item()
    assert d2 < 2e-3 and d1 / d2 > 3.5  # measured 3.9e-3, 9.7e-4 (ratio 4.04)


def test_regulariser_keeps_retardation_finite_at_zero():
    a = (1 - 0.29) / 0.29 * 2880.0 * 3.5e-4
    r0 = ds.retardation(torch.zeros((), dtype=F64))
    torch.testing.assert_close(r0, torch.tensor(1 + a * 0.874 * 1e-6 ** (0.874 - 1), dtype=F64))
    u = torch.tensor([0.0, 0.05, 0.5], dtype=F64)
    torch.testing.assert_close(ds.invert_total_concentration(ds.total_concentration(u), torch.zeros(3, dtype=F64)),
                               u, rtol=0, atol=1e-13)


def test_generated_data_bounds_monotonicity_and_approach_to_steady_state():
    u, p = ds.generate_diffusion_sorption(2, nx=64, nt=11, t_end=200.0, seed=3)
    u2, _ = ds.generate_diffusion_sorption(2, nx=64, nt=11, t_end=200.0, seed=3)
    assert u.shape == (2, 11, 1, 64) and torch.equal(u, u2) and p["nx"] == 64 and p["D"] == 5e-4
    u = u[:, :, 0].double()
    level = u[:, 0, :1]
    assert torch.equal(u[:, 0], level.expand(2, 64)) and 0 <= level.min() and level.max() <= 0.2
    assert u.min() >= 0 and u.max() <= 1
    assert (u[:, 1:, 1:] - u[:, 1:, :-1]).max() <= 1e-7  # fed from the left: non-increasing in x
    assert (u[:, 1:, 0] - u[:, :-1, 0]).min() > 0  # the first cell rises monotonically toward u = 1
    # steady state 1 - x / (1 + D) for any R; the L1 distance of c(u) to it keeps shrinking
    x = (torch.arange(64, dtype=F64) + 0.5) / 64
    dist = (ds.total_concentration(u) - ds.total_concentration(1 - x / (1 + p["D"]))).abs().mean(-1)
    assert (dist[:, 1:] - dist[:, :-1]).max() < 0


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_traj=0), "n_traj"), (dict(nx=2), "nx"), (dict(nt=1), "nt"), (dict(t_end=-1.0), "t_end"),
    (dict(u0_max=-0.1), "u0_max"), (dict(D=0.0), "D"), (dict(k_f=-1.0), "k_f"), (dict(porosity=0.3), "physics")])
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ds.generate_diffusion_sorption(**{"n_traj": 1, "nx": 8, "nt": 2, "t_end": 1.0, **kwargs})


@pytest.mark.parametrize("use_h5", [True, False])
@pytest.mark.parametrize("name, kw", [("diffusion_sorption1d", dict(nx=16, nt=3, t_end=5.0)),
                                      ("shallow_water2d", dict(n=8, nt=2, frame_dt=0.1))])
def test_cache_round_trip_of_new_generators(tmp_path, monkeypatch, use_h5, name, kw):
    if use_h5:
        pytest.importorskip("h5py")
    monkeypatch.setattr(datasets, "HAVE_H5PY", use_h5)
    u, p = datasets.get(name, 2, 1, str(tmp_path), **kw)
    u2, p2 = datasets.get(name, 2, 1, str(tmp_path), **kw)
    assert len(list(tmp_path.iterdir())) == 1 and torch.equal(u, u2) and u.shape[:2] == (2, kw["nt"])
    assert p2 == p and p2["seed"] == 1
