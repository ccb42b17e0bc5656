"""The wave-RNN paper's tasks, laid out as the official code lays them out (time-major tensors).

- Copy (``copy/utils.get_batch``): ``T' + 10`` steps; data tokens from {1..8} at steps 0-9; the
  delimiter 9 at step ``T' - 1`` (the 11th from the end: one step earlier than the paper's text,
  and for ``T' = 10`` it overwrites the 10th data token, which the target then copies); blanks (0)
  elsewhere. Target: 0 everywhere but the last 10 steps, which hold the (possibly overwritten)
  first 10 inputs. Loss: cross-entropy over every step, divided once more by the batch size.
- Adding (``adding/utils.get_batch``): values ~ U[0, 1], one indicator in ``[0, T//2)`` and one in
  ``[T//2, T)``; input (value, indicator); target the sum of the two marked values; MSE; "solved"
  when the training MSE is <= 0.05.
- Sequential digits: the offline stand-in for sMNIST / psMNIST. scikit-learn's bundled 8x8
  ``load_digits`` (1,797 images, intensities 0-16) scaled by 1/16 to [0, 1] (as ``ToTensor()``),
  read as 64 steps of one pixel in row (raster) order, or in one fixed, seeded permutation.

Every generator takes a ``torch.Generator`` (the official code draws from the global numpy RNG), so
batches are reproducible from a seed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COPY_MEMORY = 10          # data tokens to remember
COPY_CLASSES = 10         # 0 blank, 1..8 data, 9 delimiter
COPY_DELIMITER = 9
ADDING_SOLVED_MSE = 0.05  # the official "solved" threshold on the training loss
DIGITS_STEPS = 64
DIGITS_SPLIT = (1297, 250, 250)  # train / val / test, spec section 5.2


def copy_batch(batch: int, T: int, generator: torch.Generator | None = None, memory: int = COPY_MEMORY,
               one_hot: bool = True):
    """Returns x [T + memory, batch, 10] (one-hot float; [T + memory, batch, 1] tokens if not one_hot)
    and y [T + memory, batch] (int64 targets). T is the official ``T'`` (sequence length minus 10)."""
    length = T + memory
    if T < 1:
        raise ValueError(f"T must be >= 1 (the delimiter sits at step T - 1), got {T}")
    X = torch.zeros(batch, length, dtype=torch.int64)
    X[:, :memory] = torch.randint(1, 9, (batch, memory), generator=generator)
    X[:, -(memory + 1)] = COPY_DELIMITER  # written before the target is copied, as official
    Y = torch.zeros(batch, length, dtype=torch.int64)
    Y[:, -memory:] = X[:, :memory]
    X, Y = X.t().contiguous(), Y.t().contiguous()
    x = F.one_hot(X, COPY_CLASSES).float() if one_hot else X.unsqueeze(-1).float()
    return x, Y


def copy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The official copy objective: mean cross-entropy over every step and sample, divided by the
    batch size (logits [L, B, 10], targets [L, B]). The paper reports this quantity as "MSE"."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return ce / float(targets.shape[1])


def copy_recall_accuracy(logits: torch.Tensor, targets: torch.Tensor, memory: int = COPY_MEMORY) -> float:
    """Fraction of the last ``memory`` (recalled) tokens predicted exactly."""
    return (logits[-memory:].argmax(-1) == targets[-memory:]).float().mean().item()


def adding_batch(T: int, batch: int, generator: torch.Generator | None = None):
    """Returns x [T, batch, 2] (value, indicator) and y [batch] (the sum of the two marked values)."""
    if T < 2:
        raise ValueError(f"T must be >= 2, got {T}")
    values = torch.rand(T, batch, generator=generator)
    half = T // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, T, (batch,), generator=generator)
    indicators = torch.zeros(T, batch)
    cols = torch.arange(batch)
    indicators[first, cols] = 1.0
    indicators[second, cols] = 1.0
    return torch.stack((values, indicators), dim=-1), (values * indicators).sum(0)


def digits_permutation(seed: int, steps: int = DIGITS_STEPS) -> torch.Tensor:
    """The fixed pixel order of 'permuted digits' (psMNIST's randperm, but seeded)."""
    return torch.randperm(steps, generator=torch.Generator().manual_seed(seed))


def load_digits_sequences(split_seed: int = 0, perm_seed: int | None = None, split=DIGITS_SPLIT) -> dict:
    """scikit-learn's digits as sequences. Returns {'train', 'val', 'test'}: (x [64, N, 1] in [0, 1],
    y [N] int64), 'perm' (the time order used: arange(64) or the seeded permutation) and the seeds.
    The sample split is a seeded shuffle (same for row order and permuted); perm_seed=None keeps
    row order."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    images = torch.as_tensor(data.data, dtype=torch.float32) / 16.0   # [1797, 64], raster order
    labels = torch.as_tensor(data.target, dtype=torch.int64)
    if sum(split) > len(images):
        raise ValueError(f"split {split} needs {sum(split)} images, digits has {len(images)}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(split_seed))
    perm = torch.arange(DIGITS_STEPS) if perm_seed is None else digits_permutation(perm_seed)
    out = {"perm": perm, "split_seed": split_seed, "perm_seed": perm_seed}
    start = 0
    for name, size in zip(("train", "val", "test"), split):
        idx = order[start:start + size]
        start += size
        x = images[idx][:, perm].t().unsqueeze(-1).contiguous()       # [64, N, 1], time-major
        out[name] = (x, labels[idx])
    return out
