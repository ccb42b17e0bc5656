"""Figure of `phasor repro gta`: held-out target views and each model's prediction, plus PSNR curves."""
from __future__ import annotations

import torch


def save_figure(path, test, models, results, n_scenes=4, baseline=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .repro import render_views
    kinds = list(models)
    idx = torch.arange(min(n_scenes, len(test["images"])))
    Vi = test["input_views"]
    preds = {k: render_views(models[k].eval(), test, idx) for k in kinds}
    cols = Vi + 1 + len(kinds)
    fig, axes = plt.subplots(len(idx) + 1, cols, figsize=(1.6 * cols, 1.6 * (len(idx) + 1) + 1.2), squeeze=False)
    titles = [f"input {v}" for v in range(Vi)] + ["target"] + [f"{k}" for k in kinds]
    for r, i in enumerate(idx):
        ims = [test["images"][i, v] for v in range(Vi + 1)] + [preds[k][r] for k in kinds]
        for c, im in enumerate(ims):
            ax = axes[r, c]
            ax.imshow(im.permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
    gs = axes[-1, 0].get_gridspec()
    for ax in axes[-1]:
        ax.remove()
    ax = fig.add_subplot(gs[-1, :])
    for k in kinds:
        h = results[k]["history"]
        ax.plot(h["eval_step"], h["eval_psnr"], marker="o", label=f"{k}: {results[k]['test_psnr']:.2f} dB")
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", lw=1, label=f"mean training image: {baseline:.2f} dB")
    ax.set_xlabel("step"), ax.set_ylabel("test PSNR (dB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
