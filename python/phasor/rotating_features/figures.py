"""The repro figure: inputs, reconstructions, orientation maps coloured by angle, predicted masks,
and the learning curves."""
from __future__ import annotations

import torch


def orientation_rgb(rot_out: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """[b, n, c, h, w] -> RGB [b, h, w, 3]: hue = angle of the mean unit orientation in its top-2
    principal plane (shared by all images shown), value = 1 where the magnitude exceeds the threshold."""
    import matplotlib.colors as mcolors

    mag = torch.linalg.vector_norm(rot_out, dim=1)                       # [b, c, h, w]
    mask = (mag > threshold).float()
    unit = torch.nn.functional.normalize(rot_out, dim=1) * mask.unsqueeze(1)
    orient = unit.sum(2) / (mask.sum(1, keepdim=True) + 1e-8)            # [b, n, h, w]
    pts = orient.permute(0, 2, 3, 1).reshape(-1, orient.shape[1])
    fg = pts[pts.norm(dim=1) > 0]
    if len(fg) >= 2:
        centred = fg - fg.mean(0)
        basis = torch.linalg.svd(centred, full_matrices=False).Vh[:2]    # top-2 principal directions
    else:
        basis = torch.eye(2, orient.shape[1])
    proj = (pts - (fg.mean(0) if len(fg) else 0)) @ basis.T
    hue = (torch.atan2(proj[:, 1], proj[:, 0]) / (2 * torch.pi)) % 1.0
    value = (mask.amax(1).reshape(-1) > 0).float()
    hsv = torch.stack([hue, torch.ones_like(hue), value], dim=1).numpy()
    return torch.from_numpy(mcolors.hsv_to_rgb(hsv)).reshape(*orient.shape[0:1], *orient.shape[2:], 3)


def save_figure(path, data: dict, recon, rot_out, pred_labels, history: dict, num_show: int = 8):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = data["images"][:num_show]
    k = min(num_show, len(images))
    colours = orientation_rgb(rot_out[:k])
    fig = plt.figure(figsize=(2 * k, 10.5))
    grid = fig.add_gridspec(5, k, height_ratios=[1, 1, 1, 1, 1.6])
    rows = [("input", lambda i: images[i].permute(1, 2, 0).squeeze(-1), "gray"),
            ("reconstruction", lambda i: recon[i].permute(1, 2, 0).squeeze(-1).clamp(0, 1), "gray"),
            ("orientation (hue = angle)", lambda i: colours[i], None),
            ("predicted objects", lambda i: pred_labels[i], "tab10")]
    for r, (title, get, cmap) in enumerate(rows):
        for i in range(k):
            ax = fig.add_subplot(grid[r, i])
            img = get(i)
            kwargs = {"vmin": 0, "vmax": 1} if cmap == "gray" else ({"vmin": 0, "vmax": 9} if cmap else {})
            ax.imshow(img.numpy() if hasattr(img, "numpy") else img, cmap=cmap, interpolation="nearest", **kwargs)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(title, fontsize=9)
    ax = fig.add_subplot(grid[4, :])
    if history.get("step"):
        ax.plot(history["step"], history["loss"], lw=0.6, color="tab:blue", label="train MSE")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("MSE")
        ax2 = ax.twinx()
        ax2.plot(history["val_step"], history["val_ARI-BG"], "o-", color="tab:red", label="val ARI-BG")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("ARI-BG")
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
