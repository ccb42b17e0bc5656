"""Segmentation metrics: Hungarian-matched pixel accuracy (background fixed to 0) and foreground ARI."""
from __future__ import annotations

import itertools

import torch


def _contingency(a: torch.Tensor, b: torch.Tensor, na: int, nb: int) -> torch.Tensor:
    return torch.bincount(a.reshape(-1) * nb + b.reshape(-1), minlength=na * nb).view(na, nb)


def pixel_accuracy(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Fraction of all pixels labelled correctly: label 0 (background) must match 0, and the object
    labels 1..k of pred are matched to those of true by the best one-to-one assignment (exhaustive
    over permutations, which is the Hungarian optimum for the few objects here, k <= 8)."""
    pred, true = pred.long().reshape(-1), true.long().reshape(-1)
    k = int(max(pred.max(), true.max(), 0))
    if k > 8:
        raise ValueError(f"pixel_accuracy matches at most 8 objects, got {k}")
    C = _contingency(pred, true, k + 1, k + 1)
    best = max(sum(int(C[i + 1, j + 1]) for i, j in enumerate(perm)) for perm in itertools.permutations(range(k)))
    return (int(C[0, 0]) + best) / pred.numel()


def adjusted_rand_index(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Adjusted Rand index of two labelings (Hubert and Arabie), as sklearn's adjusted_rand_score."""
    pred, true = pred.long().reshape(-1), true.long().reshape(-1)
    _, a = torch.unique(pred, return_inverse=True)
    _, b = torch.unique(true, return_inverse=True)
    C = _contingency(a, b, int(a.max()) + 1 if a.numel() else 1, int(b.max()) + 1 if b.numel() else 1).double()
    n = C.sum()
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    index, rows, cols, total = comb(C).sum(), comb(C.sum(1)).sum(), comb(C.sum(0)).sum(), comb(n)
    expected = rows * cols / total if total > 0 else torch.tensor(0.0)
    top = (rows + cols) / 2
    if float(top - expected) == 0:
        return 1.0  # both labelings trivial (one cluster, or every point its own)
    return float((index - expected) / (top - expected))


def foreground_ari(pred: torch.Tensor, true: torch.Tensor) -> float:
    """ARI over the ground-truth object (non-background) pixels."""
    fg = true.reshape(-1) > 0
    return adjusted_rand_index(pred.reshape(-1)[fg], true.reshape(-1)[fg])
