"""The repro figure: per row an image, its phases at several samples (layer 1's near-global waves,
then layer 2's local dynamics on the foreground; cyclic colour map), the segmentation and the truth."""
from __future__ import annotations

import torch

from . import data
from .segmentation import segment, trajectory

SAMPLES = (2, 10, 60, 70, 100, 140, 180)  # official 1-based samples (1 = x0; 61.. = layer 2)


def save_figure(path, data_seed: int = 0, natural: torch.Tensor | None = None, seed: int = 0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for k in (2, 3):
        img, lab = data.shapes_image(k, data_seed, 0)
        rows.append((f"{k}Shapes", img, k, lab))
    if natural is not None:
        for name, img in zip(("china (sklearn)", "flower (sklearn)"), natural):
            rows.append((name, img, 2, None))
    ncol = 2 + len(SAMPLES) + 1
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.6 * ncol, 1.7 * len(rows)), squeeze=False)
    for r, (name, img, k, lab) in enumerate(rows):
        traj = trajectory(img, seed)
        pred = segment(img, k, seed=seed)
        ax = axes[r]
        ax[0].imshow(img.numpy(), cmap="gray")
        ax[0].set_ylabel(name, fontsize=8)
        for c, s in enumerate(SAMPLES, start=1):
            ph = traj[s - 1].double()
            if s <= 60:  # layer 1 synchronises globally: show each pixel's lead over the circular mean
                rel = torch.angle(torch.polar(torch.ones_like(ph), ph) * torch.polar(torch.ones_like(ph), ph).mean().conj())
                lim = float(rel.abs().max().clamp_min(1e-12))
                ax[c].imshow(rel.numpy(), cmap="coolwarm", vmin=-lim, vmax=lim)
            else:
                ax[c].imshow(ph.numpy(), cmap="twilight", vmin=-torch.pi, vmax=torch.pi)
            if r == 0:
                ax[c].set_title(f"{'L1 (rel.)' if s <= 60 else 'L2'} sample {s}", fontsize=7)
        ax[-2].imshow(pred.numpy(), cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        if lab is not None:
            ax[-1].imshow(lab.numpy(), cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        if r == 0:
            ax[0].set_title("input", fontsize=7)
            ax[-2].set_title("segmentation", fontsize=7)
            ax[-1].set_title("ground truth", fontsize=7)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
        if lab is None:
            ax[-1].axis("off")
    fig.suptitle("cv-RNN: phases over time (traveling waves) and segmentations", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
