"""Readout of the cv-RNN segmentation (official ``spatiotemporal_segmentation.m``): phasor similarity
over the saved window, spectral projection, k-means.

For the unit phasors P [N, T] of the unmasked nodes over the window, rho = P P^H / T is the phasor
similarity (Hermitian, rank <= T). Its top eigenvectors are the left singular vectors of P, so a thin
SVD of P [N, T] replaces the N x N eigendecomposition (eigenvalues of rho = singular values^2 / T);
it is computed through the T x T Hermitian eigenproblem of P^H P (T = 41), U = P W / sqrt(lambda).
The projection is Re(rho) Re(V[:, :3]) as in the official code; since an eigenvector's complex phase
is arbitrary and only real parts are used, each is fixed to a canonical phase: its largest-magnitude
entry real and positive (the official LAPACK call leaves it arbitrary, so exact MATLAB parity is
impossible; the spec reports that this choice does not move the mean ARI).
"""
from __future__ import annotations

import torch


def unit_phasors(phases: torch.Tensor) -> torch.Tensor:
    """exp(i * phase), as complex128."""
    return torch.polar(torch.ones_like(phases, dtype=torch.float64), phases.double())


def spectral_projection(P: torch.Tensor, dim: int = 3) -> torch.Tensor:
    """P [N, T] unit phasors (complex) -> prj [N, dim] = Re(rho) Re(V[:, :dim]), rho = P P^H / T."""
    N, T = P.shape
    lam, Wv = torch.linalg.eigh(P.conj().t() @ P)  # ascending; lam = singular values^2 of P
    keep = min(dim, N, T)
    lam, Wv = lam.flip(0)[:keep], Wv.flip(1)[:, :keep]
    V = (P @ Wv) / lam.clamp_min(1e-300).sqrt()  # the top left singular vectors = eigenvectors of rho
    if V.shape[1] < dim:  # fewer nodes or samples than dim: pad with zero directions
        V = torch.cat([V, V.new_zeros(N, dim - V.shape[1])], 1)
    top = V.abs().argmax(0)
    ph = V[top, torch.arange(V.shape[1])]
    V = V * (ph.conj() / ph.abs().clamp_min(1e-300))
    # Re(rho) Re(V) without forming the N x N matrix: Re(P P^H) = Re P Re P^T + Im P Im P^T
    Pr, Pi, Vr = P.real, P.imag, V.real
    return (Pr @ (Pr.t() @ Vr) + Pi @ (Pi.t() @ Vr)) / T


def _sq_dist(x, c):
    return (x[:, None, :] - c[None, :, :]).square().sum(-1)


def kmeans(points: torch.Tensor, k: int, seed: int = 0, iters: int = 100) -> torch.Tensor:
    """Seeded k-means++ initialisation, then Lloyd iterations (squared Euclidean; MATLAB's defaults,
    one replicate). points [N, d] -> labels [N] in 0..k-1."""
    N = points.shape[0]
    if N <= k:
        return torch.arange(N)
    x = points.double()
    gen = torch.Generator().manual_seed(seed)
    centers = [x[int(torch.randint(0, N, (1,), generator=gen))]]
    for _ in range(1, k):
        d2 = _sq_dist(x, torch.stack(centers)).min(1).values
        if float(d2.sum()) <= 0:  # all points coincide with a centre: any point will do
            centers.append(x[int(torch.randint(0, N, (1,), generator=gen))])
        else:
            centers.append(x[int(torch.multinomial(d2, 1, generator=gen))])
    c = torch.stack(centers)
    labels = _sq_dist(x, c).argmin(1)
    for _ in range(iters):
        for j in range(k):  # an empty cluster keeps its centre
            members = labels == j
            if members.any():
                c[j] = x[members].mean(0)
        new = _sq_dist(x, c).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels
