"""The repro figure: learning curves of both models per task, and heat maps of the trained wRNN's
hidden state (ring position against time) on one input, where travelling waves show as diagonals."""
from __future__ import annotations

import torch

COLOURS = {"wrnn": "tab:blue", "irnn": "tab:orange"}
LABELS = {"wrnn": "wRNN", "irnn": "iRNN"}
TITLES = {"adding": "adding task (MSE)", "copy": "copy task (CE / batch)",
          "digits": "sequential digits (CE)", "pdigits": "permuted digits (CE)"}


def running_mean(values, window: int):
    """Trailing mean over `window` points (shorter at the start), for readable noisy curves."""
    t = torch.as_tensor(values, dtype=torch.float64)
    if len(t) == 0 or window <= 1:
        return t
    c = torch.cat([torch.zeros(1, dtype=torch.float64), t.cumsum(0)])
    idx = torch.arange(1, len(t) + 1)
    lo = (idx - window).clamp(min=0)
    return (c[idx] - c[lo]) / (idx - lo)


def most_active_channel(states: torch.Tensor) -> int:
    """states [T, c, n]: the channel whose activity varies most over time and ring."""
    return int(states.flatten(2).var(dim=(0, 2)).argmax()) if states.shape[1] > 1 else 0


def _plot_curves(ax, name: str, runs: dict):
    top = 0.0
    for kind, h in runs.items():
        if not h.get("step"):
            continue
        loss = torch.as_tensor(h["loss"], dtype=torch.float64).clamp(min=1e-30)
        window = max(1, len(loss) // 50)
        smooth = running_mean(loss, window)
        ax.plot(h["step"], loss.numpy(), color=COLOURS.get(kind), alpha=0.25, lw=0.5)
        ax.plot(h["step"], smooth.numpy(), color=COLOURS.get(kind), lw=1.4, label=f"{LABELS.get(kind, kind)} train")
        top = max(top, float(smooth[len(smooth) // 20:].max()))  # ignore the first 5% (initial blow-ups)
    ax.set_yscale("log")
    if top > 0:
        ax.set_ylim(top=top * 10)
    ax.set_xlabel("step")
    ax.set_title(TITLES.get(name, name), fontsize=10)
    if name in ("digits", "pdigits"):
        ax2 = ax.twinx()
        for kind, h in runs.items():
            acc = [e["val_accuracy"] for e in h.get("eval", [])]
            if acc:
                ax2.plot(h["eval_step"], acc, "o--", ms=3, color=COLOURS.get(kind), label=f"{LABELS.get(kind, kind)} val acc")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("val accuracy", fontsize=8)
    ax.legend(fontsize=7, loc="lower left")


def _plot_waves(ax, snap: dict):
    states = snap["states"]
    ch = most_active_channel(states)
    h = states[:, ch, :]
    # each time step scaled to its own maximum: activity grows along the ring (the conv bias adds
    # up), and one colour scale for all steps would show only the last few
    img = (h / h.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)).T.numpy()  # [n, T]
    ax.imshow(img, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("time step")
    ax.set_ylabel("ring position")
    x = snap["input"]
    if snap["task"] == "adding":
        marks = torch.nonzero(x[:, 1] > 0).flatten().tolist()
        what = "marked steps"
    else:
        marks = torch.nonzero(x[:, 1:9].sum(-1) > 0).flatten().tolist()  # data tokens 1..8
        what = "data tokens"
    for t in marks:
        ax.axvline(t, color="white", lw=0.6, ls=":")
    ax.set_title(f"trained wRNN's hidden state, one {snap['task']} sequence\n"
                 f"channel {ch} of {states.shape[1]}, each step scaled to its max; dotted: {what}", fontsize=9)


def save_figure(path, history: dict, snapshots: list, dpi: int = 110):
    """history: {task: {model: {'step', 'loss', 'eval_step', 'eval'}}}; snapshots: dicts with
    'task', 'states' [T, c, n] and 'input' [T, n_inp] (see repro.wave_snapshot)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(history)
    cols = max(len(names), 1)
    rows = 2 if snapshots else 1
    fig = plt.figure(figsize=(4.2 * cols, 3.8 * rows))
    # the heat maps share the bottom row, each as wide as the row allows
    per_map = max(cols // max(len(snapshots), 1), 1)
    grid = fig.add_gridspec(rows, max(cols, per_map * len(snapshots)))
    for i, name in enumerate(names):
        _plot_curves(fig.add_subplot(grid[0, i]), name, history[name])
    for i, snap in enumerate(snapshots):
        _plot_waves(fig.add_subplot(grid[1, i * per_map:(i + 1) * per_map]), snap)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
