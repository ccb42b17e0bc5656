"""f-plane shallow water (the local substitute, not PDEArena's data) against known properties: the
mean depth is conserved to round-off, energy is conserved up to the RK4 error without
hyperviscosity and decays with it, a finite-amplitude geostrophic jet is an exact steady state, and
a small inertia-gravity wave travels at omega^2 = f^2 + g H |k|^2."""
import math

import pytest
import torch

from phasor.quantized_pde import shallow_water as sw

F64 = torch.float64


def test_mass_round_off_and_energy_with_and_without_hyperviscosity():
    u0, _ = sw.generate_shallow_water(2, n=32, nt=1, nu4=0.0, k0=1.5, seed=1)
    u0 = u0[:, 0].double()
    times = [0.0, 0.5, 1.0, 1.5, 2.0]
    drift = {}
    for cfl in (0.4, 0.2):
        solver = sw.SpectralShallowWater2d(32, nu4=0.0)
        out = solver.run(u0, times, cfl=cfl)
        mean_h = out[:, :, 0].mean((-1, -2))
        assert (mean_h - mean_h[:, :1]).abs().max() < 1e-14  # measured 0 (exact)
        energy = solver.energy(out, H=1.0)
        drift[cfl] = ((energy[:, -1] - energy[:, 0]) / energy[:, 0]).abs().max().item()
    # measured 1.2e-6 and 3.5e-8: the drift is the RK4 time error (about dt^4), not the scheme's
    assert drift[0.2] < 1e-6 and drift[0.4] / drift[0.2] > 8
    damped = sw.SpectralShallowWater2d(32, nu4=1e-4)
    out = damped.run(u0, times)
    energy = damped.energy(out, H=1.0)
    loss = 1 - (energy[:, -1] / energy[:, 0]).max().item()  # measured 5.4e-3
    assert (energy[:, 1:] - energy[:, :-1]).max() < 0 and loss > 100 * drift[0.4]
    mean_h = out[:, :, 0].mean((-1, -2))
    assert (mean_h - mean_h[:, :1]).abs().max() < 1e-14


def _grid(n):
    x = torch.arange(n, dtype=F64) * 2 * math.pi / n
    return x[None, :].expand(n, n), x[:, None].expand(n, n)


def test_geostrophic_jet_is_steady():
    # h = H + a cos(2x), u = 0, f v = g h_x: every nonlinear term vanishes, so this is exact
    f, g, a = 1.5, 2.0, 0.3
    X, _ = _grid(32)
    state = torch.stack([1 + a * torch.cos(2 * X), torch.zeros_like(X), -g / f * 2 * a * torch.sin(2 * X)])[None]
    out = sw.SpectralShallowWater2d(32, g=g, f=f).run(state, [5.0])
    assert (out[:, 0] - state).abs().max() < 1e-12  # measured 9e-16


def test_inertia_gravity_wave_dispersion():
    n, f, g, H, a = 32, 1.0, 1.0, 1.0, 1e-6
    kvec = torch.tensor([2.0, 1.0], dtype=F64)
    kappa = float(kvec.norm())
    omega = math.sqrt(f * f + g * H * kappa ** 2)
    X, Y = _grid(n)
    phase = kvec[0] * X + kvec[1] * Y
    along, across = kvec / kappa, torch.stack([-kvec[1], kvec[0]]) / kappa  # across = z x along

    def mode(t):
        u_par = a * omega / (H * kappa) * torch.cos(phase - omega * t)
        u_perp = f * a / (H * kappa) * torch.sin(phase - omega * t)
        return torch.stack([H + a * torch.cos(phase - omega * t), u_par * along[0] + u_perp * across[0],
                            u_par * along[1] + u_perp * across[1]])[None]

    T = 2.25 * 2 * math.pi / omega
    out = sw.SpectralShallowWater2d(n, g=g, f=f).run(mode(0.0), [T], cfl=0.1)[:, 0]
    assert (out - mode(T)).abs().max() < 1e-4 * a  # measured 1.0e-5 a
    # the measured phase speed: project h - H on the mode
    eta = out[0, 0] - H
    c, s = 2 * (eta * torch.cos(phase)).mean(), 2 * (eta * torch.sin(phase)).mean()
    turned = math.atan2(float(s), float(c))
    turned += 2 * math.pi * round((omega * T - turned) / (2 * math.pi))
    assert abs(turned / T - omega) < 1e-6 * omega  # measured 4e-8; sqrt(g H) |k| alone is 8.7% off


def test_dataset_shapes_determinism_and_note():
    u, p = sw.generate_shallow_water(2, n=16, nt=3, frame_dt=0.5, seed=4)
    u2, _ = sw.generate_shallow_water(2, n=16, nt=3, frame_dt=0.5, seed=4)
    assert u.shape == (2, 3, 3, 16, 16) and torch.equal(u, u2) and p["channels"] == "h,u,v"
    assert "NOT PDEArena" in p["note"] and "NOT PDEArena" in sw.__doc__
    h = u[:, :, 0].double()
    assert h.min() > 0
    torch.testing.assert_close(h.mean((-1, -2)), torch.full((2, 3), p["H"], dtype=F64), rtol=0, atol=1e-6)
    assert not torch.equal(u[:, -1], u[:, 0]) and torch.isfinite(u).all()


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_traj=0), "n_traj"), (dict(n=3), "n"), (dict(nt=0), "nt"), (dict(frame_dt=0.0), "frame_dt"),
    (dict(H=-1.0), "H"), (dict(eta_max=2.0), "eta_max"), (dict(nu4=-1.0), "nu4"), (dict(k0=0.0), "k0"),
    (dict(g=0.0), "g")])
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"\b{name} must"):
        sw.generate_shallow_water(**{"n_traj": 1, "n": 8, "nt": 1, **kwargs})
