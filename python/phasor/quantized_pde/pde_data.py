"""Seeded PDE trajectory generators in torch (small-scale recipes of the spec, §5).

* Burgers 1-D (PDEBench): u_t + (u^2/2)_x = (nu/pi) u_xx on (0, 1), periodic; second-order
  MUSCL finite volumes (minmod limiter, Rusanov flux) with a central diffusion flux and a
  two-stage predictor-corrector (Heun) step, dt = CFL * min(advective, diffusive limit).
* Kuramoto-Sivashinsky 1-D (LPSDA/PDEArena): u_t + u u_x + u_xx + u_xxxx = 0 on (0, L),
  periodic; ETDRK4 (Kassam & Trefethen 2005) with contour-integral coefficients, internal dt 0.05,
  every 4th step kept (frame dt 0.2), a burn-in discarded; L jittered +-10% per trajectory.
* Navier-Stokes 2-D, *periodic simplification* of PDEArena's smoke data (a different dataset:
  PDEArena's box is closed): vorticity form with a buoyant passive scalar,
  w_t + u.grad w = nu lap w + b ds/dx, s_t + u.grad s = nu lap s, u = curl(psi), lap psi = -w;
  pseudo-spectral with 2/3 de-aliasing and RK4 at a CFL-limited step.

Every generator returns a float32 tensor [trajectories, frames, channels, *grid] and the
parameters it used.
"""
from __future__ import annotations

import math

import torch

DT = torch.float64  # the solvers run in float64; datasets are stored as float32


# ---------------------------------------------------------------------------- Burgers 1-D
def burgers_initial(n_traj: int, nx: int, gen: torch.Generator) -> torch.Tensor:
    """PDEBench ``init_multi``: two sines with wavenumbers in {1..4} * 2 pi, random amplitude and
    phase; with p = 0.1 the absolute value, and with p = 0.1 a random tanh window."""
    x = (torch.arange(nx, dtype=DT) + 0.5) / nx
    k = torch.randint(1, 5, (n_traj, 2), generator=gen).to(DT) * 2 * math.pi
    amp = torch.rand(n_traj, 2, generator=gen, dtype=DT)
    phase = torch.rand(n_traj, 2, generator=gen, dtype=DT) * 2 * math.pi
    u = (amp[..., None] * torch.sin(k[..., None] * x + phase[..., None])).sum(1)
    take_abs = torch.rand(n_traj, generator=gen) < 0.1
    u[take_abs] = u[take_abs].abs()
    window = torch.rand(n_traj, generator=gen) < 0.1
    x0, x1 = torch.rand(n_traj, generator=gen, dtype=DT) * 0.4 + 0.1, torch.rand(n_traj, generator=gen, dtype=DT) * 0.4 + 0.5
    sharp = 10.0
    mask = 0.5 * (torch.tanh(sharp * (x - x0[:, None])) - torch.tanh(sharp * (x - x1[:, None])))
    u[window] = u[window] * mask[window]
    return u


def _minmod(a, b):
    return torch.where(a * b > 0, torch.sign(a) * torch.minimum(a.abs(), b.abs()), torch.zeros_like(a))


def burgers_rhs(u: torch.Tensor, dx: float, diff: float) -> torch.Tensor:
    """-(F_{i+1/2} - F_{i-1/2}) / dx with MUSCL-minmod reconstruction, Rusanov flux, central diffusion."""
    du = _minmod(u - torch.roll(u, 1, -1), torch.roll(u, -1, -1) - u)
    ul = u + 0.5 * du                         # left state at i+1/2
    ur = torch.roll(u - 0.5 * du, -1, -1)     # right state at i+1/2
    a = torch.maximum(ul.abs(), ur.abs())
    flux = 0.25 * (ul * ul + ur * ur) - 0.5 * a * (ur - ul)
    flux = flux - diff * (torch.roll(u, -1, -1) - u) / dx
    return -(flux - torch.roll(flux, 1, -1)) / dx


def burgers_solve(u0: torch.Tensor, nu: float, t_save, cfl: float = 0.3) -> torch.Tensor:
    """Integrate from u0 [B, nx] (cell averages) and return the states at the times t_save [nt]."""
    nx = u0.shape[-1]
    dx, diff = 1.0 / nx, nu / math.pi
    u, t, out = u0.to(DT).clone(), 0.0, []
    for ts in t_save:
        while t < ts - 1e-12:
            umax = float(u.abs().max().clamp_min(1e-6))
            dt = min(cfl * dx / umax, cfl * dx * dx / (2 * diff) if diff > 0 else math.inf, ts - t)
            k1 = burgers_rhs(u, dx, diff)
            k2 = burgers_rhs(u + dt * k1, dx, diff)
            u = u + 0.5 * dt * (k1 + k2)
            t += dt
        out.append(u.clone())
    return torch.stack(out, 1)


def burgers_cole_hopf(u0_fn, nu: float, t: float, nx: int, n_fine: int = 8192) -> torch.Tensor:
    """Exact solution by the Cole-Hopf transform for a zero-mean periodic u0 (cell averages on nx):
    phi_0 = exp(-int u0 / (2 D)), heat equation solved exactly in Fourier, u = -2 D phi_x / phi."""
    D = nu / math.pi
    xf = torch.arange(n_fine, dtype=DT) / n_fine
    u0 = u0_fn(xf)
    U = torch.cumsum(u0, 0) / n_fine  # int_0^x u0 (rectangle rule at 8192 points)
    U = U - U.mean()
    phi_hat = torch.fft.rfft(torch.exp(-U / (2 * D)))
    k = 2 * math.pi * torch.fft.rfftfreq(n_fine, d=1.0 / n_fine, dtype=DT)
    phi_hat = phi_hat * torch.exp(-D * k * k * t)
    phi = torch.fft.irfft(phi_hat, n_fine)
    phi_x = torch.fft.irfft(1j * k * phi_hat, n_fine)
    u = -2 * D * phi_x / phi
    return u.reshape(nx, n_fine // nx).mean(1)  # cell averages (shifted by half a fine cell: O(1/n_fine))


def generate_burgers(n_traj: int, nx: int = 256, nt: int = 51, t_end: float = 2.0, nu: float = 0.01, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    u0 = burgers_initial(n_traj, nx, gen)
    t_save = [t_end * i / (nt - 1) for i in range(nt)]
    u = burgers_solve(u0, nu, t_save)
    return u.float().unsqueeze(2), dict(pde="burgers1d", nx=nx, nt=nt, t_end=t_end, nu=nu, seed=seed, L=1.0)


# ---------------------------------------------------------------------------- Kuramoto-Sivashinsky 1-D
def ks_etdrk4_coefficients(L: torch.Tensor, nx: int, h: float, m: int = 32):
    """Kassam-Trefethen ETDRK4 coefficients for the linear operator k^2 - k^4 (per trajectory L)."""
    k = 2 * math.pi * torch.fft.rfftfreq(nx, d=1.0 / nx, dtype=DT)[None, :] / L[:, None]
    lin = k ** 2 - k ** 4
    E, E2 = torch.exp(h * lin), torch.exp(h * lin / 2)
    r = torch.exp(1j * math.pi * (torch.arange(1, m + 1, dtype=DT) - 0.5) / m)
    LR = h * lin[..., None] + r  # contour points around each h * lin
    Q = h * ((torch.exp(LR / 2) - 1) / LR).mean(-1).real
    f1 = h * ((-4 - LR + torch.exp(LR) * (4 - 3 * LR + LR ** 2)) / LR ** 3).mean(-1).real
    f2 = h * ((2 + LR + torch.exp(LR) * (-2 + LR)) / LR ** 3).mean(-1).real
    f3 = h * ((-4 - 3 * LR - LR ** 2 + torch.exp(LR) * (4 - LR)) / LR ** 3).mean(-1).real
    g = -0.5j * k  # nonlinear term -(u^2/2)_x
    return E, E2, Q, f1, f2, f3, g


def ks_solve(u0: torch.Tensor, L: torch.Tensor, h: float, n_steps: int, save_every: int) -> torch.Tensor:
    """ETDRK4 from u0 [B, nx]; returns the frames every `save_every` steps (the first is u0)."""
    nx = u0.shape[-1]
    E, E2, Q, f1, f2, f3, g = ks_etdrk4_coefficients(L, nx, h)
    dealias = torch.ones(nx // 2 + 1, dtype=DT)
    dealias[int(nx / 3):] = 0  # 2/3 rule on the nonlinear term
    g = g * dealias

    def nonlin(v):
        return g * torch.fft.rfft(torch.fft.irfft(v, nx) ** 2)

    v = torch.fft.rfft(u0.to(DT))
    frames = [u0.to(DT)]
    for step in range(1, n_steps + 1):
        Nv = nonlin(v)
        a = E2 * v + Q * Nv
        Na = nonlin(a)
        b = E2 * v + Q * Na
        Nb = nonlin(b)
        c = E2 * a + Q * (2 * Nb - Nv)
        Nc = nonlin(c)
        v = E * v + Nv * f1 + 2 * (Na + Nb) * f2 + Nc * f3
        if step % save_every == 0:
            frames.append(torch.fft.irfft(v, nx))
    return torch.stack(frames, 1)


def generate_ks(n_traj: int, nx: int = 256, nt: int = 140, L: float = 64.0, burn_in: float = 40.0, seed: int = 0,
                h: float = 0.05, save_every: int = 4):
    gen = torch.Generator().manual_seed(seed)
    Ls = L * (1 + 0.2 * (torch.rand(n_traj, generator=gen, dtype=DT) - 0.5))
    x = torch.arange(nx, dtype=DT) / nx  # fraction of each trajectory's own L
    A = torch.rand(n_traj, 10, generator=gen, dtype=DT) - 0.5
    phi = torch.rand(n_traj, 10, generator=gen, dtype=DT) * 2 * math.pi
    l = torch.randint(1, 3, (n_traj, 10), generator=gen).to(DT)
    u0 = (A[..., None] * torch.sin(2 * math.pi * l[..., None] * x + phi[..., None])).sum(1)
    burn = int(round(burn_in / (h * save_every)))
    u = ks_solve(u0, Ls, h, (burn + nt - 1) * save_every, save_every)[:, burn:]
    params = dict(pde="ks1d", nx=nx, nt=nt, L=L, L_jitter=0.1, burn_in=burn_in, h=h, save_every=save_every,
                  dt=h * save_every, dx=L / nx, seed=seed)
    return u.float().unsqueeze(2), params, Ls.float()


# ---------------------------------------------------------------------------- Navier-Stokes 2-D (periodic)
class SpectralNS2d:
    """Pseudo-spectral solver of periodic 2-D vorticity + buoyant scalar on an n x n grid of side L."""

    def __init__(self, n: int, L: float, nu: float, buoyancy: float):
        self.n, self.L, self.nu, self.b = n, L, nu, buoyancy
        k = 2 * math.pi * torch.fft.fftfreq(n, d=L / n, dtype=DT)
        kr = 2 * math.pi * torch.fft.rfftfreq(n, d=L / n, dtype=DT)
        self.kx, self.ky = kr[None, :].expand(n, -1), k[:, None].expand(-1, n // 2 + 1)  # x last axis
        self.k2 = self.kx ** 2 + self.ky ** 2
        self.k2_inv = torch.where(self.k2 > 0, 1 / self.k2.clamp_min(1e-30), torch.zeros_like(self.k2))
        kmax = n // 3
        self.dealias = ((torch.fft.fftfreq(n, 1 / n).abs()[:, None] <= kmax) &
                        (torch.fft.rfftfreq(n, 1 / n)[None, :] <= kmax)).to(DT)

    def velocity(self, w_hat):
        psi_hat = w_hat * self.k2_inv  # lap psi = -w
        u = torch.fft.irfft2(1j * self.ky * psi_hat, s=(self.n, self.n))   # u = d psi / dy
        v = torch.fft.irfft2(-1j * self.kx * psi_hat, s=(self.n, self.n))  # v = -d psi / dx
        return u, v

    def rhs(self, w_hat, s_hat):
        u, v = self.velocity(w_hat)
        n = (self.n, self.n)

        def advect(q_hat):
            qx = torch.fft.irfft2(1j * self.kx * q_hat, s=n)
            qy = torch.fft.irfft2(1j * self.ky * q_hat, s=n)
            return torch.fft.rfft2(u * qx + v * qy) * self.dealias

        dw = -advect(w_hat) - self.nu * self.k2 * w_hat + self.b * 1j * self.kx * s_hat
        ds = -advect(s_hat) - self.nu * self.k2 * s_hat
        return dw, ds

    def step(self, w_hat, s_hat, dt):
        k1 = self.rhs(w_hat, s_hat)
        k2 = self.rhs(w_hat + 0.5 * dt * k1[0], s_hat + 0.5 * dt * k1[1])
        k3 = self.rhs(w_hat + 0.5 * dt * k2[0], s_hat + 0.5 * dt * k2[1])
        k4 = self.rhs(w_hat + dt * k3[0], s_hat + dt * k3[1])
        w_hat = w_hat + dt / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        s_hat = s_hat + dt / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        return w_hat, s_hat

    def run(self, w0, s0, t_frames, cfl: float = 0.5, dt_max: float = 0.25):
        """States (s, w) [B, frames, 2, n, n] at the times t_frames."""
        w_hat, s_hat = torch.fft.rfft2(w0.to(DT)), torch.fft.rfft2(s0.to(DT))
        t, out, dx = 0.0, [], self.L / self.n
        for tf in t_frames:
            while t < tf - 1e-12:
                u, v = self.velocity(w_hat)
                vmax = float(torch.maximum(u.abs().max(), v.abs().max()).clamp_min(1e-6))
                dt = min(cfl * dx / vmax, dt_max, tf - t)
                w_hat, s_hat = self.step(w_hat, s_hat, dt)
                t += dt
            n = (self.n, self.n)
            out.append(torch.stack([torch.fft.irfft2(s_hat, s=n), torch.fft.irfft2(w_hat, s=n)], 1))
        return torch.stack(out, 1)


def smooth_noise(n_traj: int, n: int, L: float, length: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian-filtered white noise, normalised to unit max per sample (smoke-like |noise|)."""
    noise = torch.randn(n_traj, n, n, generator=gen, dtype=DT)
    k = 2 * math.pi * torch.fft.fftfreq(n, d=L / n, dtype=DT)
    kr = 2 * math.pi * torch.fft.rfftfreq(n, d=L / n, dtype=DT)
    filt = torch.exp(-0.5 * (k[:, None] ** 2 + kr[None, :] ** 2) * length ** 2)
    f = torch.fft.irfft2(torch.fft.rfft2(noise) * filt, s=(n, n)).abs()
    return f / f.amax((1, 2), keepdim=True)


def generate_ns2d(n_traj: int, n: int = 32, nt: int = 14, L: float = 32.0, nu: float = 0.01, buoyancy: float = 0.5,
                  frame_dt: float = 1.5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    s0 = smooth_noise(n_traj, n, L, L / 11, gen)
    w0 = torch.zeros_like(s0)
    solver = SpectralNS2d(n, L, nu, buoyancy)
    u = solver.run(w0, s0, [frame_dt * i for i in range(nt)])
    params = dict(pde="ns2d_periodic_smoke", n=n, nt=nt, L=L, nu=nu, buoyancy=buoyancy, frame_dt=frame_dt, seed=seed,
                  note="periodic pseudo-spectral simplification; PDEArena's smoke data is a closed box")
    return u.float(), params
