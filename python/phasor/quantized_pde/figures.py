"""Pareto plot of the quantized-PDE repro: rollout error vs BOPs per dataset x architecture."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .repro import pareto_front  # noqa: E402

STYLE = {"float32": ("k", "o"), "float32_ft": ("0.45", "o"), "W8A8": ("tab:blue", "s"), "W6A6": ("tab:green", "s"),
         "W4A4": ("tab:red", "s")}


def pareto_figure(metrics: dict, path):
    names = list(metrics)
    archs = sorted({a for n in names for a in metrics[n] if a != "dataset_params"})
    fig, axes = plt.subplots(len(names), len(archs), figsize=(3.2 * len(archs), 2.8 * len(names)), squeeze=False)
    for i, n in enumerate(names):
        for j, a in enumerate(archs):
            ax = axes[i][j]
            rows = metrics[n].get(a, {}).get("runs", [])
            if not rows:
                ax.axis("off")
                continue
            for r in rows:
                color, marker = STYLE.get(r["config"], ("tab:gray", "^"))
                ax.scatter(r["bops"], r["rollout_nmse"], c=color, marker=marker, s=30, zorder=3)
                ax.annotate(r["config"].replace("float32_res", "fp32 "), (r["bops"], r["rollout_nmse"]), fontsize=6)
            front = sorted((rows[k] for k in pareto_front(rows)), key=lambda r: r["bops"])
            ax.step([r["bops"] for r in front], [r["rollout_nmse"] for r in front], where="post", c="0.6", lw=1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{n} / {a}", fontsize=8)
            ax.tick_params(labelsize=6)
            if i == len(names) - 1:
                ax.set_xlabel("BOPs per sample (MAC x b_w x b_a)", fontsize=7)
            if j == 0:
                ax.set_ylabel("rollout NMSE", fontsize=7)
    fig.suptitle("QAT (W8A8/W6A6/W4A4) vs float32 (ft: same extra steps as QAT) and float32 at lower "
                 "resolution (grey line: Pareto front)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
