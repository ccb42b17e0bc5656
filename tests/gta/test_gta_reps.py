"""GTA representations: Wigner-D (computed J, Euler-free vs official Euler path), SE(3) blocks, SO(2) layout."""
import math

import torch

from gta_cases import random_extrinsics, random_rotations
from phasor.gta import reps


def test_wigner_j_symmetric_involution():
    for l in (1, 2):
        J = reps.wigner_j(l)
        torch.testing.assert_close(J, J.T, atol=1e-12, rtol=0)
        torch.testing.assert_close(J @ J, torch.eye(2 * l + 1, dtype=J.dtype), atol=1e-12, rtol=0)
    # closed form of the spec for degree 1
    torch.testing.assert_close(reps.wigner_j(1), torch.tensor([[0., 1, 0], [1, 0, 0], [0, 0, -1]], dtype=torch.float64),
                               atol=1e-12, rtol=0)


def test_wigner_d_homomorphism_orthogonal_identity():
    gen = torch.Generator().manual_seed(1)
    R1, R2 = random_rotations(8, gen=gen), random_rotations(8, gen=gen)
    for D in (reps.wigner_d1, reps.wigner_d2, reps.so3_blocks):
        torch.testing.assert_close(D(R1 @ R2), D(R1) @ D(R2), atol=1e-12, rtol=0)
        M = D(R1)
        torch.testing.assert_close(M.transpose(-1, -2) @ M, torch.eye(M.shape[-1], dtype=M.dtype).expand_as(M),
                                   atol=1e-12, rtol=0)
        I = torch.eye(3, dtype=torch.float64)
        torch.testing.assert_close(D(I), torch.eye(D(I).shape[-1], dtype=torch.float64), atol=1e-14, rtol=0)


def test_euler_free_matches_official_euler_pipeline():
    R = random_rotations(16, gen=torch.Generator().manual_seed(2))
    assert (R[:, 2, 2].abs() < 1 - 1e-3).all()  # away from the singular branches
    torch.testing.assert_close(reps.wigner_d_euler(1, R), reps.wigner_d1(R), atol=1e-12, rtol=0)
    torch.testing.assert_close(reps.wigner_d_euler(2, R), reps.wigner_d2(R), atol=1e-12, rtol=0)


def test_se3_blocks_are_inverse_for_any_scale_and_not_orthogonal():
    E = random_extrinsics(2, 3, gen=torch.Generator().manual_seed(3))
    for s in (0.01, 1.0, 10.0):
        P, Pinv = reps.se3_blocks(E, torch.tensor(s, dtype=torch.float64))
        torch.testing.assert_close(P @ Pinv, torch.eye(4, dtype=torch.float64).expand_as(P), atol=1e-12, rtol=0)
        assert (P.transpose(-1, -2) @ P - torch.eye(4, dtype=torch.float64)).abs().max() > 1e-3
    torch.testing.assert_close(reps.canonicalize(E, E[:, 0])[:, 0], torch.eye(4, dtype=torch.float64).expand(2, 4, 4),
                               atol=1e-12, rtol=0)


def test_so2_layout_frequency_major_axis_minor():
    F = 3
    freqs = reps.so2_frequencies(F, "nvs")
    torch.testing.assert_close(freqs, 2 * math.pi * torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64))
    phi = reps.so2_angles(torch.tensor([[0.1, 0.3]], dtype=torch.float64), freqs)
    assert phi.shape == (1, 2 * F)
    torch.testing.assert_close(phi[0, 2 * 1 + 1], 0.3 * freqs[1])  # pair p = 2f + a
    torch.testing.assert_close(reps.so2_frequencies(4, "rope"), torch.pow(10000.0, -torch.arange(4.0, dtype=torch.float64) / 4))
