"""Rotating shallow water 2-D: the *local substitute* of the spec (§5.4). NOT PDEArena's data.

PDEArena's shallow-water set is SpeedyWeather.jl on the sphere (T62, 20 days, random2 initial
conditions, 64 x 128 grid); Julia is unavailable here, so this module solves a different problem:
doubly periodic f-plane rotating shallow water on an n x n grid of side L,

    u_t - (zeta + f) v = -d/dx (g h + |u|^2 / 2) - nu4 lap^2 u
    v_t + (zeta + f) u = -d/dy (g h + |u|^2 / 2) - nu4 lap^2 v
    h_t + d/dx (h u) + d/dy (h v) = -nu4 lap^2 h,       zeta = v_x - u_y,

in vector-invariant form (fewer transforms than the advective form; the same equations). Pseudo-
spectral: derivatives in Fourier space, products on the grid, every product's spectrum truncated by
the 2/3 rule (and the initial state too, so no mode beyond it is ever non-zero). Classical RK4 at
dt = cfl * dx / (sqrt(g max h) + max |u|) -- the gravity-wave CFL -- capped by the hyperviscous
bound. The mean of h is conserved exactly: its tendency is a divergence, zero at k = 0.

Initial condition (seeded): a random smooth relative vorticity (Gaussian random field with a
spectral peak at wavenumber k0) inverted to a non-divergent velocity scaled to max |u| = u_max, plus
a random smooth height perturbation of amplitude eta_max about the mean depth H.
Returns float32 [trajectories, frames, 3 (h, u, v), n, n] and the parameters.
"""
from __future__ import annotations

import math

import torch

from . import argcheck

DT = torch.float64


class SpectralShallowWater2d:
    """RK4 pseudo-spectral f-plane shallow water; the state is the rfft2 of (h, u, v), [B, 3, n, n//2+1]."""

    def __init__(self, n: int, L: float = 2 * math.pi, g: float = 1.0, f: float = 1.0, nu4: float = 0.0):
        argcheck.at_least("n", n, 4)
        argcheck.positive("L", L)
        argcheck.positive("g", g)
        argcheck.non_negative("nu4", nu4)
        self.n, self.L, self.g, self.f, self.nu4 = n, L, g, f, nu4
        k = 2 * math.pi * torch.fft.fftfreq(n, d=L / n, dtype=DT)
        kr = 2 * math.pi * torch.fft.rfftfreq(n, d=L / n, dtype=DT)
        self.ikx = 1j * kr[None, :].expand(n, -1)  # x is the last axis
        self.iky = 1j * k[:, None].expand(-1, n // 2 + 1)
        k2 = kr[None, :] ** 2 + k[:, None] ** 2
        self.damp = nu4 * k2 * k2
        kmax = n // 3
        self.dealias = ((torch.fft.fftfreq(n, 1 / n).abs()[:, None] <= kmax) &
                        (torch.fft.rfftfreq(n, 1 / n)[None, :] <= kmax)).to(DT)
        self.k_cut = 2 * math.pi / L * kmax

    def to_grid(self, state_hat):
        return torch.fft.irfft2(state_hat, s=(self.n, self.n))

    def to_spectral(self, fields):
        return torch.fft.rfft2(fields.to(DT)) * self.dealias

    def rhs(self, s_hat):
        h_hat, u_hat, v_hat = s_hat.unbind(-3)
        zeta_hat = self.ikx * v_hat - self.iky * u_hat
        h, u, v, zeta = self.to_grid(torch.stack([h_hat, u_hat, v_hat, zeta_hat], -3)).unbind(-3)
        # one forward transform for the five products, truncated by the 2/3 rule
        zv, zu, ke, hu, hv = self.to_spectral(torch.stack([zeta * v, zeta * u, 0.5 * (u * u + v * v), h * u, h * v],
                                                          -3)).unbind(-3)
        bernoulli = self.g * h_hat + ke
        du = zv + self.f * v_hat - self.ikx * bernoulli
        dv = -zu - self.f * u_hat - self.iky * bernoulli
        dh = -(self.ikx * hu + self.iky * hv)
        return torch.stack([dh, du, dv], -3) - self.damp * s_hat

    def step(self, s_hat, dt):
        k1 = self.rhs(s_hat)
        k2 = self.rhs(s_hat + 0.5 * dt * k1)
        k3 = self.rhs(s_hat + 0.5 * dt * k2)
        k4 = self.rhs(s_hat + dt * k3)
        return s_hat + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    def stable_dt(self, fields, cfl: float) -> float:
        h, u, v = fields.unbind(-3)
        if float(h.min()) <= 0:
            raise FloatingPointError("shallow water: the depth h reached <= 0 (initial state too strong)")
        speed = math.sqrt(self.g * float(h.max())) + float((u * u + v * v).sqrt().max())
        dt = cfl * (self.L / self.n) / speed
        if self.nu4 > 0:  # RK4's real stability interval is 2.78; keep the stiffest damping at 2
            dt = min(dt, 2.0 / (self.nu4 * self.k_cut ** 4))
        return dt

    def run(self, fields0, t_frames, cfl: float = 0.4):
        """(h, u, v) [B, 3, n, n] -> states [B, frames, 3, n, n] at the (non-decreasing) times t_frames."""
        if not 0 < cfl <= 1:
            raise ValueError(f"cfl must be in (0, 1], got {cfl!r}")
        t_frames = [float(t) for t in t_frames]
        if any(t < 0 for t in t_frames) or any(b < a for a, b in zip(t_frames, t_frames[1:])):
            raise ValueError("t_frames must be non-negative and non-decreasing")
        s_hat = self.to_spectral(fields0)
        t, out = 0.0, []
        for tf in t_frames:
            while t < tf - 1e-12:
                dt = min(self.stable_dt(self.to_grid(s_hat), cfl), tf - t)
                s_hat = self.step(s_hat, dt)
                t += dt
            out.append(self.to_grid(s_hat))
        return torch.stack(out, 1)

    def energy(self, fields, H: float):
        """Domain-mean energy per unit area: h |u|^2 / 2 + g (h - H)^2 / 2 (the g H^2 / 2 part is
        constant while the mean of h is)."""
        h, u, v = fields.unbind(-3)
        return (0.5 * h * (u * u + v * v) + 0.5 * self.g * (h - H) ** 2).mean((-1, -2))


def random_smooth_field(n_traj: int, n: int, k0: float, gen: torch.Generator) -> torch.Tensor:
    """Zero-mean Gaussian random field [n_traj, n, n] with spectrum ~ k^2 exp(-(k / k0)^2) (k in
    cycles per domain), scaled to unit max |.|."""
    kx = torch.fft.rfftfreq(n, 1 / n, dtype=DT)[None, :]
    ky = torch.fft.fftfreq(n, 1 / n, dtype=DT)[:, None]
    kk = (kx * kx + ky * ky).sqrt()
    amp = kk * torch.exp(-0.5 * (kk / k0) ** 2)  # zero at k = 0: no mean
    white = torch.fft.rfft2(torch.randn(n_traj, n, n, generator=gen, dtype=DT))
    field = torch.fft.irfft2(white * amp, s=(n, n))
    return field / field.abs().amax((-1, -2), keepdim=True)


def generate_shallow_water(n_traj: int = 4, n: int = 64, nt: int = 21, frame_dt: float = 1.0, L: float = 2 * math.pi,
                           g: float = 1.0, f: float = 1.0, H: float = 1.0, nu4: float = 1e-5, u_max: float = 0.3,
                           eta_max: float = 0.1, k0: float = 3.0, seed: int = 0):
    """Trajectories [n_traj, nt, 3, n, n] (h, u, v; float32) and the parameters (see the module doc)."""
    argcheck.at_least("n_traj", n_traj, 1)
    argcheck.at_least("n", n, 4)
    argcheck.at_least("nt", nt, 1)
    argcheck.positive("frame_dt", frame_dt)
    argcheck.positive("H", H)
    argcheck.non_negative("u_max", u_max)
    argcheck.non_negative("eta_max", eta_max)
    argcheck.positive("k0", k0)
    if not eta_max < H:
        raise ValueError(f"eta_max must be < H (the depth must stay positive), got {eta_max!r} >= {H!r}")
    gen = torch.Generator().manual_seed(seed)
    solver = SpectralShallowWater2d(n, L, g, f, nu4)
    zeta = random_smooth_field(n_traj, n, k0, gen)
    eta = random_smooth_field(n_traj, n, k0, gen) * eta_max
    # non-divergent velocity of zeta: lap psi = zeta, u = -psi_y, v = psi_x
    k2 = -(solver.ikx * solver.ikx + solver.iky * solver.iky).real
    psi_hat = -torch.fft.rfft2(zeta) / torch.where(k2 > 0, k2, torch.ones_like(k2)) * (k2 > 0)
    uv = torch.fft.irfft2(torch.stack([-solver.iky * psi_hat, solver.ikx * psi_hat], 1), s=(n, n))
    uv = uv * (u_max / uv.square().sum(1).sqrt().amax((-1, -2)).clamp_min(1e-30)[:, None, None, None])
    fields0 = torch.cat([(H + eta)[:, None], uv], 1)
    out = solver.run(fields0, [frame_dt * i for i in range(nt)])
    params = dict(pde="shallow_water2d_fplane", n=n, nt=nt, frame_dt=frame_dt, L=L, g=g, f=f, H=H, nu4=nu4,
                  u_max=u_max, eta_max=eta_max, k0=k0, seed=seed, channels="h,u,v",
                  note="local substitute: doubly periodic f-plane pseudo-spectral solver; NOT PDEArena's "
                       "SpeedyWeather.jl spherical shallow-water data")
    return out.float(), params
