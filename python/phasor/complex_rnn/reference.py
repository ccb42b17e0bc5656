"""Plain-PyTorch cv-RNN recurrence (Liboni et al. 2023, arXiv 2311.16943): the test oracle and the
benchmark baseline of :mod:`phasor.complex_rnn.ops`.

One node per pixel (row-major, the node of pixel (h, w) is h * W + w), positions on the unit square
(h / H, w / W), Gaussian-sheet coupling with self-loop and no wrap (the official ``gaussian_sheet.m``)

    K[(h, w), (h', w')] = alpha * exp(-|p - p'|^2 / (2 sigma^2)) = alpha * G_r[h, h'] * G_c[w, w'],

and the discrete recurrence of SI eq. S7, with the second layer's masked coupling (rows and columns
of masked nodes zeroed, omega = 0 there)

    x <- m * (i * omega * x + K (m * x)).

The Gaussian factorises over the two axes, so K x = alpha * vec(G_r X G_c^T): a step costs
O(HW (H + W)) instead of O((HW)^2). The system is linear and unstable (|x| grows ~400x per layer-1
step), so runs divide each image by its max |x| after every update: a positive scalar, which leaves
every phase unchanged (never per node, which would make it Kuramoto's nonlinear model).
"""
from __future__ import annotations

import torch


def gaussian_axis(n: int, sigma: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """G[p, q] = exp(-((p - q) / n)^2 / (2 sigma^2)), the coupling along one image axis of n pixels."""
    pos = torch.arange(n, dtype=torch.float64, device=device) / n
    return torch.exp(-(pos[:, None] - pos[None, :]) ** 2 / (2 * sigma**2)).to(dtype)


def gaussian_sheet(H: int, W: int, alpha: float, sigma: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """The dense coupling K [HW, HW] with Euclidean distances between pixel positions (row-major nodes)."""
    r = torch.arange(H, dtype=torch.float64, device=device) / H
    c = torch.arange(W, dtype=torch.float64, device=device) / W
    pr, pc = torch.meshgrid(r, c, indexing="ij")
    p = torch.stack([pr.reshape(-1), pc.reshape(-1)], 1)
    d2 = torch.cdist(p, p).square()
    return (alpha * torch.exp(-d2 / (2 * sigma**2))).to(dtype)


def _masked(x, mask):
    return x if mask is None else x * mask


def step_dense(x: torch.Tensor, omega: torch.Tensor, K: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One update over x [B, n] complex with any real coupling K [n, n]."""
    coupled = _masked(x, mask) @ K.t().to(x.dtype)
    return _masked(1j * omega * x + coupled, mask)


def step_separable(X: torch.Tensor, omega: torch.Tensor, alpha: float, G_r: torch.Tensor, G_c: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """One update over images X [B, H, W] complex: K x = alpha * G_r X G_c^T (G_r [H, H], G_c [W, W])."""
    coupled = alpha * (G_r.to(X.dtype) @ _masked(X, mask) @ G_c.t().to(X.dtype))
    return _masked(1j * omega * X + coupled, mask)


def renormalise(x: torch.Tensor) -> torch.Tensor:
    """Divide each image (dim 0) by its max |x| (images that are all zero stay as they are)."""
    peak = x.abs().flatten(1).amax(1)
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    return x / peak.view(-1, *([1] * (x.dim() - 1)))


def phase(x: torch.Tensor) -> torch.Tensor:
    """torch.angle, but 0 at nodes that are exactly 0 (masked ones), whatever the signs of the zeros."""
    return torch.where(x == 0, torch.zeros((), dtype=x.real.dtype, device=x.device), torch.angle(x))


def _run(step, x0, steps, renorm, save_start, save_stop, save_phase):
    torch._check(steps >= 0, lambda: f"steps must be >= 0, got {steps}")
    torch._check(0 <= save_start <= save_stop <= steps + 1,
                 lambda: f"the save window must satisfy 0 <= save_start <= save_stop <= steps + 1, "
                         f"got {save_start}, {save_stop}")
    x, saved = x0, []
    for t in range(save_stop):
        if t > 0:
            x = step(x)
            if renorm:
                x = renormalise(x)
        if t >= save_start:
            saved.append(phase(x) if save_phase else x)
    if not saved:
        return torch.empty((x0.shape[0], 0, *x0.shape[1:]), dtype=x0.real.dtype if save_phase else x0.dtype,
                           device=x0.device)
    return torch.stack(saved, 1)


def run_separable_ref(x0, omega, mask, alpha, sigma, steps, renorm=True, save_start=0, save_stop=None,
                      save_phase=False):
    """The S-step run over images x0 [B, H, W] with the separable step; returns samples
    save_start .. save_stop - 1 (sample t = state after t updates) as [B, T, H, W]."""
    if not (sigma > 0):
        raise ValueError(f"sigma must be > 0, got {sigma}")
    save_stop = steps + 1 if save_stop is None else save_stop
    H, W = x0.shape[-2:]
    G_r = gaussian_axis(H, sigma, x0.real.dtype, x0.device)
    G_c = gaussian_axis(W, sigma, x0.real.dtype, x0.device)
    return _run(lambda x: step_separable(x, omega, alpha, G_r, G_c, mask), x0, steps, renorm, save_start, save_stop,
                save_phase)


def run_dense_ref(x0, omega, K, mask, steps, renorm=True, save_start=0, save_stop=None, save_phase=False):
    """The S-step run over x0 [B, n] with a dense coupling K [n, n]; returns [B, T, n]."""
    save_stop = steps + 1 if save_stop is None else save_stop
    return _run(lambda x: step_dense(x, omega, K, mask), x0, steps, renorm, save_start, save_stop, save_phase)


def exact_power(x0: torch.Tensor, omega: torch.Tensor, K: torch.Tensor, ts, mask: torch.Tensor | None = None):
    """x_t = B^t x0 = V Lambda^t V^-1 x0 for each t in ts (SI eq. S7), B = m (diag(i omega) + K) m, one
    image x0 [n] (float64 / complex128). O(n^3): analysis and tests only. Returns [len(ts), n]."""
    n = x0.shape[-1]
    Bm = torch.diag(1j * omega.to(torch.complex128)) + K.to(torch.complex128)
    if mask is not None:
        m = mask.to(torch.complex128)
        Bm = m[:, None] * Bm * m[None, :]
    lam, V = torch.linalg.eig(Bm)
    c = torch.linalg.solve(V, x0.to(torch.complex128).reshape(n))
    ts = list(ts)
    powers, p = [], torch.ones_like(lam)  # lam^t by repeated products (0^0 = 1 for the masked nodes' zeros)
    for t in range(max(ts) + 1 if ts else 0):
        powers.append(p)
        p = p * lam
    lam_t = torch.stack([powers[t] for t in ts]) if ts else lam.new_zeros(0, n)
    return (V[None] * lam_t[:, None, :] * c[None, None, :]).sum(-1)
