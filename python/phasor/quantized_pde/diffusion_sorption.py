"""Diffusion-sorption 1-D, the PDEBench recipe of the spec (§5.5), solved in torch.

    u_t = D / R(u) u_xx on (0, 1),   R(u) = 1 + (1 - phi) / phi * rho_s * k_f * n_f * (u + 1e-6)^(n_f - 1)

* Left: Dirichlet u(0, t) = 1.  Right: the Cauchy (Robin) condition u(1, t) = -D u_x(1, t), i.e. the
  outgoing diffusive flux -D u_x equals the boundary concentration (PDEBench/FINN impose the same
  relation through a ghost value D (u_{N-2} - u_{N-1}) / dx; here it is imposed at the face).
* Initial condition: one constant u0 ~ U(0, 0.2) per trajectory.
* Space: cell-centred finite volumes (nx cells, dx = 1/nx). Face fluxes F = -D du/dx; the boundary
  faces use half-cell differences to the boundary value, so the semi-discrete system conserves
  sum_i c(u_i) dx exactly up to the two boundary fluxes, with c(u) the total (dissolved + sorbed)
  concentration, dc/du = R(u).
* Time: classical RK4 on the conserved c (u recovered by Newton) at a fixed safe step per frame
  interval, instead of PDEBench's adaptive RK45 on u.
  Gershgorin bounds the Jacobian's spectrum by 4 D / (R_min dx^2) (the Dirichlet cell has the
  largest row sum), so dt = cfl * R_min dx^2 / (2 D) keeps |lambda dt| <= 2 cfl, inside RK4's real
  stability interval (2.78) for cfl <= 1.39. R decreases with u and u <= max(1, max u0).
* The +1e-6 in R is kept: n_f - 1 < 0 makes u^(n_f - 1) singular at u = 0.

Small recipe: nx = 256, t in [0, 500], 101 frames (frame dt 5); PDEBench uses nx = 1024, 501 frames.
Returns float32 [trajectories, frames, 1, nx] and the parameters.
"""
from __future__ import annotations

import math

import torch

from . import argcheck

DT = torch.float64
EPS = 1e-6  # PDEBench's regulariser of (u + eps)^(n_f - 1)
PDEBENCH = dict(D=5e-4, phi=0.29, rho_s=2880.0, k_f=3.5e-4, n_f=0.874)


def _sorption_scale(phi, rho_s, k_f):
    return (1 - phi) / phi * rho_s * k_f


def retardation(u, phi=PDEBENCH["phi"], rho_s=PDEBENCH["rho_s"], k_f=PDEBENCH["k_f"], n_f=PDEBENCH["n_f"]):
    """R(u); u is clamped at 0 because round-off undershoot below -eps would make the power NaN."""
    return 1 + _sorption_scale(phi, rho_s, k_f) * n_f * (u.clamp_min(0) + EPS) ** (n_f - 1)


def total_concentration(u, phi=PDEBENCH["phi"], rho_s=PDEBENCH["rho_s"], k_f=PDEBENCH["k_f"], n_f=PDEBENCH["n_f"]):
    """c(u) = u + sorbed part, the conserved density: dc/du = R(u) everywhere (c(0) = 0, and c is
    continued linearly with slope R(0) below 0), so c is increasing and concave."""
    a = _sorption_scale(phi, rho_s, k_f)
    sorbed = a * ((u.clamp_min(0) + EPS) ** n_f - EPS ** n_f) + a * n_f * EPS ** (n_f - 1) * u.clamp_max(0)
    return u + sorbed


def invert_total_concentration(c, guess, tol: float = 1e-14, max_iter: int = 60, **sorb):
    """u with total_concentration(u) = c by Newton from `guess`; c is increasing and concave, so after
    the first step the iterates approach the root monotonically from below."""
    u = guess
    for _ in range(max_iter):
        r = total_concentration(u, **sorb) - c
        u = u - r / retardation(u, **sorb)
        if float(r.abs().max()) <= tol * (1 + float(c.abs().max())):
            return u
    raise RuntimeError("Newton inversion of c(u) did not converge")


def face_fluxes(u: torch.Tensor, D: float, dx: float) -> torch.Tensor:
    """Diffusive fluxes F = -D u_x (positive to the right) on the nx + 1 faces of u [B, nx]."""
    interior = -D * (u[..., 1:] - u[..., :-1]) / dx
    left = -D * (u[..., :1] - 1.0) / (0.5 * dx)  # Dirichlet u = 1 at x = 0
    kappa = 2 * D / dx
    right = kappa / (1 + kappa) * u[..., -1:]  # Robin u_b = -D u_x at x = 1: outflow flux = u_b
    return torch.cat([left, interior, right], -1)


def solve(u0: torch.Tensor, t_save, D: float = PDEBENCH["D"], phi: float = PDEBENCH["phi"],
          rho_s: float = PDEBENCH["rho_s"], k_f: float = PDEBENCH["k_f"], n_f: float = PDEBENCH["n_f"],
          cfl: float = 1.0):
    """RK4 from u0 [B, nx] (cell averages); returns the states at t_save [B, frames, nx] and the
    time-integrated net boundary inflow (left flux - right flux) up to each saved time [B, frames]."""
    argcheck.at_least("nx", u0.shape[-1], 3)
    argcheck.positive("D", D)
    argcheck.non_negative("k_f", k_f)
    if not 0 < cfl <= 1.39:
        raise ValueError(f"cfl must be in (0, 1.39] (RK4's real stability bound / 2), got {cfl!r}")
    t_save = [float(t) for t in t_save]
    if any(t < 0 for t in t_save) or any(b < a for a, b in zip(t_save, t_save[1:])):
        raise ValueError("t_save must be non-negative and non-decreasing")
    nx = u0.shape[-1]
    dx = 1.0 / nx
    sorb = dict(phi=phi, rho_s=rho_s, k_f=k_f, n_f=n_f)
    # R falls as u rises, and the maximum principle keeps u <= max(1, max u0): R_min is R there
    r_min = float(retardation(u0.to(DT).max().clamp_min(1.0), **sorb))

    def rhs(u):  # dc/dt per cell and the net boundary inflow
        F = face_fluxes(u, D, dx)
        return -(F[..., 1:] - F[..., :-1]) / dx, F[..., 0] - F[..., -1]

    def to_u(c, guess):
        return invert_total_concentration(c, guess, **sorb)

    # March the conserved c, not u: every RK stage then changes sum(c) dx by exactly dt times the
    # boundary fluxes, so the discrete mass balance holds to round-off.
    u = u0.to(DT).clone()
    c = total_concentration(u, **sorb)
    inflow = torch.zeros(u.shape[:-1], dtype=DT)
    t, frames, inflows = 0.0, [], []
    for ts in t_save:
        n_steps = math.ceil((ts - t) / (cfl * r_min * dx * dx / (2 * D)) - 1e-9)
        dt = (ts - t) / n_steps if n_steps > 0 else 0.0  # equal steps land exactly on the frame
        for _ in range(n_steps):
            k1, q1 = rhs(u)
            u2 = to_u(c + 0.5 * dt * k1, u)
            k2, q2 = rhs(u2)
            u3 = to_u(c + 0.5 * dt * k2, u2)
            k3, q3 = rhs(u3)
            k4, q4 = rhs(to_u(c + dt * k3, u3))
            c = c + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            u = to_u(c, u)
            inflow = inflow + dt / 6 * (q1 + 2 * q2 + 2 * q3 + q4)
        t = ts
        frames.append(u.clone())
        inflows.append(inflow.clone())
    return torch.stack(frames, 1), torch.stack(inflows, 1)


def generate_diffusion_sorption(n_traj: int = 4, nx: int = 256, nt: int = 101, t_end: float = 500.0, seed: int = 0,
                                u0_max: float = 0.2, **physics):
    """Trajectories [n_traj, nt, 1, nx] (float32) and their parameters; `physics` overrides PDEBENCH."""
    argcheck.at_least("n_traj", n_traj, 1)
    argcheck.at_least("nx", nx, 3)
    argcheck.at_least("nt", nt, 2)
    argcheck.positive("t_end", t_end)
    argcheck.non_negative("u0_max", u0_max)
    unknown = set(physics) - set(PDEBENCH)
    if unknown:
        raise ValueError(f"physics: unknown parameter(s) {sorted(unknown)}; expected some of {sorted(PDEBENCH)}")
    phys = {**PDEBENCH, **physics}
    gen = torch.Generator().manual_seed(seed)
    level = torch.rand(n_traj, 1, generator=gen, dtype=DT) * u0_max
    u0 = level.expand(n_traj, nx)
    u, _ = solve(u0, [t_end * i / (nt - 1) for i in range(nt)], **phys)
    params = dict(pde="diffusion_sorption1d", nx=nx, nt=nt, t_end=t_end, dt=t_end / (nt - 1), dx=1.0 / nx,
                  seed=seed, u0_max=u0_max, eps=EPS, **phys,
                  bc="u(0,t)=1; u(1,t)=-D u_x(1,t)", scheme="finite volumes + RK4 at a Gershgorin-safe step")
    return u.float().unsqueeze(2), params
