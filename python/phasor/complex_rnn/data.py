"""Inputs of the cv-RNN segmentation: seeded 2Shapes / 3Shapes images and natural demo images.

Shapes (spec section 5): a 32 x 32 canvas at -1 with a hollow square (13 x 13, 3-px border,
120 px) and one (2Shapes) or two (3Shapes: one pointing down, one up) hollow triangles (9 rows of
widths 17, 15, ..., 1; rows 1-3 and 7-9 solid, rows 4-6 only their 3 outer pixels each side;
72 px) at +1, placed at random without overlap and at least 1 px apart. Labels: 0 background,
1 square, 2 (and 3) triangles. Each image comes from its own generator seeded by (seed, index), so
image i is the same whatever the number of images asked for.
"""
from __future__ import annotations

import torch

CANVAS = 32


def square_template() -> torch.Tensor:
    t = torch.ones(13, 13, dtype=torch.bool)
    t[3:10, 3:10] = False
    return t


def triangle_template(pointing_up: bool = False) -> torch.Tensor:
    t = torch.zeros(9, 17, dtype=torch.bool)
    for row, width in enumerate(range(17, 0, -2)):
        lo = (17 - width) // 2
        if 3 <= row <= 5:  # the two 3-px sides
            t[row, lo:lo + 3] = True
            t[row, lo + width - 3:lo + width] = True
        else:
            t[row, lo:lo + width] = True
    return t.flip(0) if pointing_up else t


def _place(templates, gen, size=CANVAS, max_tries=10_000):
    """Random non-overlapping positions with >= 1 px between objects; returns the label map."""
    for _ in range(max_tries):
        labels = torch.zeros(size, size, dtype=torch.long)
        halo = torch.zeros(size + 2, size + 2, dtype=torch.bool)  # occupied pixels grown by 1 px
        ok = True
        for k, tpl in enumerate(templates, start=1):
            h, w = tpl.shape
            r = int(torch.randint(0, size - h + 1, (1,), generator=gen))
            c = int(torch.randint(0, size - w + 1, (1,), generator=gen))
            if (halo[r + 1:r + 1 + h, c + 1:c + 1 + w] & tpl).any():
                ok = False
                break
            labels[r:r + h, c:c + w][tpl] = k
            # the shape grown by 1 px covers canvas rows r-1 .. r+h, i.e. halo rows r .. r+h+1
            padded = torch.nn.functional.pad(tpl.float(), (1, 1, 1, 1))
            halo[r:r + h + 2, c:c + w + 2] |= torch.nn.functional.max_pool2d(padded[None, None], 3, 1, 1)[0, 0].bool()
        if ok:
            return labels
    raise RuntimeError("could not place the shapes without overlap")


def shapes_image(num_objects: int, seed: int, index: int):
    """One 2Shapes (num_objects=2) or 3Shapes (3) image [32, 32] in {-1, +1} and its labels [32, 32]."""
    if num_objects not in (2, 3):
        raise ValueError(f"num_objects must be 2 or 3, got {num_objects}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    if num_objects == 2:
        up = bool(torch.randint(0, 2, (1,), generator=gen))
        templates = [square_template(), triangle_template(up)]
    else:
        templates = [square_template(), triangle_template(False), triangle_template(True)]
    labels = _place(templates, gen)
    image = torch.where(labels > 0, 1.0, -1.0).to(torch.float64)
    return image, labels


def shapes_dataset(num_objects: int, count: int, seed: int = 0, start: int = 0):
    """Images [count, 32, 32] float64 and labels [count, 32, 32] long, images start .. start + count - 1."""
    pairs = [shapes_image(num_objects, seed, i) for i in range(start, start + count)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def natural_images(size: int = 64) -> torch.Tensor:
    """scikit-learn's two bundled photographs (china, flower; offline), grayscale, centre-cropped to a
    square, area-resized to size x size and z-scored (SI section VIII): [2, size, size] float64."""
    from sklearn.datasets import load_sample_images
    out = []
    for rgb in load_sample_images().images:
        gray = torch.tensor(rgb, dtype=torch.float64).mean(-1)
        h, w = gray.shape
        s = min(h, w)
        gray = gray[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        small = torch.nn.functional.adaptive_avg_pool2d(gray[None, None], size)[0, 0]
        out.append((small - small.mean()) / small.std())
    return torch.stack(out)
