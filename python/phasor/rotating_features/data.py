"""Deterministic synthetic Shapes datasets for Rotating Features (spec §6, §7).

Datasets: ``"4Shapes"`` (grayscale), ``"4Shapes_RGB"``, ``"4Shapes_RGBD"`` and
``"10Shapes"``. Every image is drawn from its own SplitMix64 stream keyed by
``(base_seed, dataset_id, split_id, image_id)``, so image ``i`` never depends on
the number of images generated, and small splits are prefixes of large ones.

Output format (the same as the official ``.npz`` files):

* ``images``: float32 ``[N, C, S, S]`` in ``[0, 1]``, background 0.
* ``labels``: int8 ``[N, S, S]``; 0 = background, ``k + 1`` = object ``k``,
  ``-1`` wherever two or more objects cover the pixel.

Generation uses only the Python standard library and torch; numpy is imported
lazily by the ``.npz`` cache helpers.
"""

from __future__ import annotations

import json
import math
import operator
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "SplitMix64",
    "DATASET_NAMES",
    "SPLITS",
    "OFFICIAL_SPLIT_SIZES",
    "GENERATOR_VERSION",
    "dataset_params",
    "num_objects",
    "num_channels",
    "image_size",
    "num_clusters",
    "hsv_palette",
    "generate_shapes",
    "shapes_file_name",
    "default_data_root",
    "save_shapes_npz",
    "load_shapes_npz",
    "load_shapes",
]

GENERATOR_VERSION = 1

# --------------------------------------------------------------------------
# SplitMix64 (spec §7.1)
# --------------------------------------------------------------------------

_MASK64 = 0xFFFFFFFFFFFFFFFF
_GOLD = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_TWO_M53 = 2.0 ** -53


def _fin(z: int) -> int:
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _mix(x: int) -> int:
    return _fin((x + _GOLD) & _MASK64)


class SplitMix64:
    """SplitMix64 generator with exact 64-bit arithmetic (spec §7.1).

    ``SplitMix64(state)`` starts from a raw 64-bit state;
    ``SplitMix64.for_image(base_seed, dataset_id, split_id, image_id)`` builds the
    per-image stream.
    """

    __slots__ = ("state",)

    def __init__(self, state: int = 0):
        self.state = int(state) & _MASK64

    @staticmethod
    def stream_state(base_seed: int, dataset_id: int, split_id: int, image_id: int) -> int:
        """Initial state of the per-image stream: ``h = mix(h ^ x)`` over the ids."""
        h = int(base_seed) & _MASK64
        for x in (dataset_id, split_id, image_id):
            h = _mix(h ^ (int(x) & _MASK64))
        return h

    @classmethod
    def for_image(cls, base_seed: int, dataset_id: int, split_id: int, image_id: int) -> "SplitMix64":
        """Generator for one image's stream."""
        return cls(cls.stream_state(base_seed, dataset_id, split_id, image_id))

    def next_u64(self) -> int:
        """Next raw 64-bit output."""
        self.state = (self.state + _GOLD) & _MASK64
        return _fin(self.state)

    def u(self) -> float:
        """Uniform float64 in ``[0, 1)`` (53 bits)."""
        self.state = (self.state + _GOLD) & _MASK64
        return (_fin(self.state) >> 11) * _TWO_M53

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in ``[lo, hi]`` (inclusive): ``lo + floor(u * (hi - lo + 1))``."""
        n = hi - lo + 1
        k = int(self.u() * n)  # u >= 0, so int() is floor
        return lo + (k if k < n else n - 1)

    def perm(self, k: int) -> List[int]:
        """Fisher-Yates permutation of ``range(k)`` as in spec §7.1."""
        a = list(range(k))
        for i in range(k - 1, 0, -1):
            j = int(self.u() * (i + 1))
            if j > i:
                j = i
            a[i], a[j] = a[j], a[i]
        return a


# --------------------------------------------------------------------------
# Parameters (spec §7.6)
# --------------------------------------------------------------------------

DATASET_NAMES = ("4Shapes", "4Shapes_RGB", "4Shapes_RGBD", "10Shapes")
SPLITS = {"train": 0, "val": 1, "test": 2}
OFFICIAL_SPLIT_SIZES = {"train": 50_000, "val": 10_000, "test": 10_000}

# 4Shapes shape types (fixed object order) and 10Shapes shape types.
FOUR_SHAPES_TYPES = ("square", "up_triangle", "down_triangle", "circle")
TEN_SHAPES_TYPES = ("square", "triangle", "circle")

_PARAMS = {
    "4Shapes": dict(dataset_id=0, S=32, C=1, K=4, Lmin=8, Lmax=10, rotate=False,
                    num_colors=0, depth_channel=False, min_excl=0.5),
    "4Shapes_RGB": dict(dataset_id=0, S=32, C=3, K=4, Lmin=8, Lmax=10, rotate=False,
                        num_colors=5, depth_channel=False, min_excl=0.5),
    "4Shapes_RGBD": dict(dataset_id=0, S=32, C=4, K=4, Lmin=8, Lmax=10, rotate=False,
                         num_colors=5, depth_channel=True, min_excl=0.5),
    "10Shapes": dict(dataset_id=1, S=48, C=4, K=10, Lmin=8, Lmax=12, rotate=True,
                     num_colors=10, depth_channel=True, min_excl=0.75),
}

_MAX_CANDIDATES = 100
_MAX_RESTARTS = 10_000


def _check_name(name: str) -> dict:
    if name not in _PARAMS:
        raise ValueError(f"name must be one of {DATASET_NAMES}, got {name!r}")
    return _PARAMS[name]


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    return SPLITS[split]


def _check_nonneg_int(value, arg: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{arg} must be a non-negative integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{arg} must be a non-negative integer, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{arg} must be a non-negative integer, got {value!r}")
    return int(value)


def dataset_params(name: str) -> dict:
    """Copy of the parameter table row for ``name`` (S, C, K, L range, min_excl, ...)."""
    return dict(_check_name(name))


def num_objects(name: str) -> int:
    """Number of objects K per image (4 or 10)."""
    return _check_name(name)["K"]


def num_channels(name: str) -> int:
    """Number of image channels C (1, 3 or 4)."""
    return _check_name(name)["C"]


def image_size(name: str) -> int:
    """Image side S (32 or 48)."""
    return _check_name(name)["S"]


def num_clusters(name: str) -> int:
    """k-means clusters used at evaluation: K + 1."""
    return _check_name(name)["K"] + 1


def hsv_palette(q_count: int) -> torch.Tensor:
    """Palette colour q = HSV(q/Q, 1, 1) -> RGB, computed exactly. float32 ``[Q, 3]``."""
    out = []
    for q in range(q_count):
        h6 = Fraction(6 * q, q_count)
        i = int(h6) % 6
        f = h6 - int(h6)
        v, p, qq, t = Fraction(1), Fraction(0), 1 - f, f
        rgb = [(v, t, p), (qq, v, p), (p, v, t), (p, qq, v), (t, p, v), (v, p, qq)][i]
        out.append([float(c) for c in rgb])
    return torch.tensor(out, dtype=torch.float32).reshape(q_count, 3)


# --------------------------------------------------------------------------
# Rasterisation (spec §7.2) on local windows
# --------------------------------------------------------------------------

def _margin(L: int, rotate: bool) -> int:
    return math.ceil(L / math.sqrt(2.0) - L / 2.0) if rotate else 0


_OFFSET_CACHE: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]] = {}
_TEMPLATE_CACHE: Dict[Tuple[int, int], torch.Tensor] = {}


def _offsets(L: int, m: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre offsets from the box centre on the window of side L + 2m.

    Window pixel (i, j) is image pixel (y0 - m + i, x0 - m + j); its offsets
    ``dy = i + 0.5 - m - L/2`` do not depend on (y0, x0). float64 ``[W, 1]`` and ``[1, W]``.
    """
    key = (L, m)
    if key not in _OFFSET_CACHE:
        w = L + 2 * m
        d = torch.arange(w, dtype=torch.float64) + (0.5 - m - L / 2.0)
        _OFFSET_CACHE[key] = (d.view(w, 1), d.view(1, w))
    return _OFFSET_CACHE[key]


def _axis_template(kind: int, L: int) -> torch.Tensor:
    """Axis-aligned 4Shapes mask on its L x L box. bool ``[L, L]``."""
    key = (kind, L)
    t = _TEMPLATE_CACHE.get(key)
    if t is None:
        dy, dx = _offsets(L, 0)
        half = L / 2.0
        if kind == 0:  # square
            t = torch.ones(L, L, dtype=torch.bool)
        elif kind in (1, 2):  # up / down triangle
            ty = dy + half  # (r + 0.5) - y0
            if kind == 2:
                ty = L - ty  # (y0 + L) - (r + 0.5)
            t = (ty >= 0) & (ty <= L) & (dx.abs() <= ty / 2.0)
        elif kind == 3:  # circle
            t = dy * dy + dx * dx <= half * half
        else:  # pragma: no cover
            raise AssertionError(kind)
        t = t.expand(L, L).contiguous()
        _TEMPLATE_CACHE[key] = t
    return t


def _rotated_mask(kind: int, L: int, m: int, theta: float) -> torch.Tensor:
    """10Shapes mask on the (L + 2m)^2 window around the box. bool ``[W, W]``."""
    dy, dx = _offsets(L, m)
    half = L / 2.0
    if kind == 2:  # circle: theta ignored
        return dy * dy + dx * dx <= half * half
    c, s = math.cos(theta), math.sin(theta)
    v = c * dy + s * dx
    h = c * dx - s * dy  # == -s*dy + c*dx exactly (the sum is commutative)
    if kind == 0:  # square
        return (v.abs() <= half) & (h.abs() <= half)
    # triangle: the up-triangle rotated about the box centre
    return (v >= -half) & (v <= half) & (h.abs() <= (v + half) / 2.0)


# --------------------------------------------------------------------------
# Placement (spec §7.3, §7.4)
# --------------------------------------------------------------------------

class _Obj:
    __slots__ = ("r0", "c0", "r1", "c1", "mask", "mask_i", "area", "need", "L", "y0", "x0", "theta")


def _overlaps(a: _Obj, b: _Obj) -> bool:
    return a.r0 < b.r1 and b.r0 < a.r1 and a.c0 < b.c1 and b.c0 < a.c1


def _place_objects(rng: SplitMix64, types: Sequence[int], p: dict, count: torch.Tensor):
    """Place all objects following §7.3 / §7.4. ``count`` (int16 [S, S]) is filled
    with the coverage count. Returns (objects, restarts)."""
    S, Lmin, Lmax = p["S"], p["Lmin"], p["Lmax"]
    rotate, min_excl = p["rotate"], p["min_excl"]
    restarts = 0
    while True:
        count.zero_()
        placed: List[_Obj] = []
        failed = False
        for kind in types:
            accepted = False
            for _ in range(_MAX_CANDIDATES):
                L = rng.randint(Lmin, Lmax)
                theta = 2.0 * math.pi * rng.u() if rotate else 0.0
                m = _margin(L, rotate)
                y0 = rng.randint(m, S - L - m)
                x0 = rng.randint(m, S - L - m)
                o = _Obj()
                o.L, o.y0, o.x0, o.theta = L, y0, x0, theta
                o.r0, o.c0 = y0 - m, x0 - m
                o.r1, o.c1 = y0 + L + m, x0 + L + m
                o.mask = _rotated_mask(kind, L, m, theta) if rotate else _axis_template(kind, L)
                o.mask_i = o.mask.to(torch.int16)
                o.area = int(o.mask_i.sum())
                o.need = min_excl * o.area
                touching = [q for q in placed if _overlaps(q, o)]
                window = count[o.r0:o.r1, o.c0:o.c1]
                window += o.mask_i
                ok = True
                if touching:
                    for q in [o] + touching:
                        excl = int(((count[q.r0:q.r1, q.c0:q.c1] == 1) & q.mask).sum())
                        if excl < q.need:
                            ok = False
                            break
                if ok:
                    placed.append(o)
                    accepted = True
                    break
                window -= o.mask_i
            if not accepted:
                failed = True
                break
        if not failed:
            return placed, restarts
        restarts += 1
        if restarts > _MAX_RESTARTS:  # pragma: no cover - never happens with §7.6 parameters
            raise RuntimeError("object placement failed repeatedly; parameters are infeasible")


def generate_shapes(
    name: str,
    split: str,
    num_images: int,
    base_seed: int = 0,
    start: int = 0,
    return_debug: bool = False,
    num_colors: Optional[int] = None,
) -> dict:
    """Generate images ``start .. start + num_images - 1`` of a Shapes dataset split.

    Args:
        name: ``"4Shapes"``, ``"4Shapes_RGB"``, ``"4Shapes_RGBD"`` or ``"10Shapes"``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_images: N >= 0.
        base_seed: non-negative 64-bit base seed (default 0).
        start: id of the first image (the image ids are ``start + i``).
        return_debug: also return per-object debug arrays (see below).
        num_colors: palette size Q for the 4Shapes RGB(-D) variants (default 5).

    Returns:
        dict with ``images`` float32 ``[N, C, S, S]`` in [0, 1] and ``labels`` int8
        ``[N, S, S]`` (0 background, 1..K objects, -1 where >= 2 objects overlap).
        With ``return_debug``, also:

        * ``visible_labels`` int8 ``[N, S, S]``: front-most object id + 1 (smallest
          depth; for grayscale, which has no depths, the lowest object index).
        * ``masks`` bool ``[N, K, S, S]``: full per-object masks.
        * ``types`` int64 ``[N, K]``: 4Shapes 0 square, 1 up-triangle, 2 down-triangle,
          3 circle; 10Shapes 0 square, 1 triangle, 2 circle.
        * ``boxes`` int64 ``[N, K, 3]``: (y0, x0, L).
        * ``angles`` float64 ``[N, K]``: θ (0 for the 4Shapes family).
        * ``colours`` int64 ``[N, K]``: palette index (-1 for grayscale).
        * ``depths`` float32 ``[N, K]``: (a[k] + 1) / K (0 for grayscale).
        * ``restarts`` int64 ``[N]``: placement restarts per image.
        * ``palette`` float32 ``[Q, 3]``.
    """
    p = dict(_check_name(name))
    split_id = _check_split(split)
    n = _check_nonneg_int(num_images, "num_images")
    start = _check_nonneg_int(start, "start")
    base_seed = _check_nonneg_int(base_seed, "base_seed")
    if base_seed > _MASK64:
        raise ValueError(f"base_seed must be < 2**64, got {base_seed!r}")
    if num_colors is not None:
        if name not in ("4Shapes_RGB", "4Shapes_RGBD"):
            raise ValueError(f"num_colors can only be set for 4Shapes_RGB / 4Shapes_RGBD, not {name!r}")
        num_colors = _check_nonneg_int(num_colors, "num_colors")
        if num_colors < 1:
            raise ValueError(f"num_colors must be >= 1, got {num_colors!r}")
        p["num_colors"] = num_colors

    S, C, K = p["S"], p["C"], p["K"]
    Q = p["num_colors"]
    rotate = p["rotate"]
    gray = Q == 0
    palette = hsv_palette(Q) if Q > 0 else torch.zeros(0, 3)

    images = torch.zeros(n, C, S, S, dtype=torch.float32)
    labels = torch.zeros(n, S, S, dtype=torch.int8)
    if return_debug:
        dbg_visible = torch.zeros(n, S, S, dtype=torch.int8)
        dbg_masks = torch.zeros(n, K, S, S, dtype=torch.bool)
        dbg_types = torch.zeros(n, K, dtype=torch.int64)
        dbg_boxes = torch.zeros(n, K, 3, dtype=torch.int64)
        dbg_angles = torch.zeros(n, K, dtype=torch.float64)
        dbg_colours = torch.full((n, K), -1, dtype=torch.int64)
        dbg_depths = torch.zeros(n, K, dtype=torch.float32)
        dbg_restarts = torch.zeros(n, dtype=torch.int64)

    count = torch.zeros(S, S, dtype=torch.int16)
    idsum = torch.zeros(S, S, dtype=torch.int16)
    fixed_types = list(range(4))

    for i in range(n):
        rng = SplitMix64.for_image(base_seed, p["dataset_id"], split_id, start + i)
        # 1. types
        types = [rng.randint(0, 2) for _ in range(K)] if rotate else fixed_types
        # 2. geometry
        objs, restarts = _place_objects(rng, types, p, count)
        # 3. colours, 4. depths
        if gray:
            colours = [-1] * K
            depths = None
        else:
            if rotate:
                colours = rng.perm(K)
            else:
                colours = [rng.randint(0, Q - 1) for _ in range(K)]
            a = rng.perm(K)
            depths = [(a[k] + 1) / K for k in range(K)]

        # labels: -1 where count >= 2, else the id of the single covering object
        idsum.zero_()
        for k, o in enumerate(objs):
            idsum[o.r0:o.r1, o.c0:o.c1] += o.mask_i * (k + 1)
        labels[i] = torch.where(count >= 2, torch.tensor(-1, dtype=torch.int16), idsum).to(torch.int8)

        # images: paint far-to-near so the nearest object is visible
        img = images[i]
        if gray:
            img[0] = (count > 0).to(torch.float32)
            order = list(range(K - 1, -1, -1))  # lowest index ends on top
        else:
            order = sorted(range(K), key=lambda k: -depths[k])
            for k in order:
                o = objs[k]
                vals = torch.empty(C, dtype=torch.float32)
                vals[:3] = palette[colours[k]]
                if C == 4:
                    vals[3] = depths[k]
                win = img[:, o.r0:o.r1, o.c0:o.c1]
                win.copy_(torch.where(o.mask, vals.view(C, 1, 1), win))

        if return_debug:
            vis = dbg_visible[i]
            for k in order:
                o = objs[k]
                vis[o.r0:o.r1, o.c0:o.c1].masked_fill_(o.mask, k + 1)
            for k, o in enumerate(objs):
                dbg_masks[i, k, o.r0:o.r1, o.c0:o.c1] = o.mask
                dbg_boxes[i, k, 0], dbg_boxes[i, k, 1], dbg_boxes[i, k, 2] = o.y0, o.x0, o.L
                dbg_angles[i, k] = o.theta
            dbg_types[i] = torch.tensor(types, dtype=torch.int64)
            dbg_colours[i] = torch.tensor(colours, dtype=torch.int64)
            if depths is not None:
                dbg_depths[i] = torch.tensor(depths, dtype=torch.float32)
            dbg_restarts[i] = restarts

    out = {"images": images, "labels": labels}
    if return_debug:
        out.update(
            visible_labels=dbg_visible,
            masks=dbg_masks,
            types=dbg_types,
            boxes=dbg_boxes,
            angles=dbg_angles,
            colours=dbg_colours,
            depths=dbg_depths,
            restarts=dbg_restarts,
            palette=palette,
        )
    return out


# --------------------------------------------------------------------------
# .npz cache
# --------------------------------------------------------------------------

def default_data_root() -> Path:
    """``$PHASOR_DATA`` if set, else ``~/.cache/phasor/data``."""
    env = os.environ.get("PHASOR_DATA")
    return Path(env) if env else Path.home() / ".cache" / "phasor" / "data"


def _official_stem(name: str, num_colors: int) -> str:
    if name == "4Shapes_RGBD":
        return f"4Shapes_RGBD_depth_{num_colors}"
    if name == "4Shapes_RGB":
        return f"4Shapes_RGBD_{num_colors}"
    return name  # "4Shapes", "10Shapes"


def shapes_file_name(name: str, split: str, num_images: int, base_seed: int = 0) -> str:
    """Cache file name: the official name (§2, §7.6) plus ``_n{N}_seed{seed}``.

    e.g. ``4Shapes_train_n5000_seed0.npz``, ``4Shapes_RGBD_depth_5_val_n1000_seed0.npz``.
    """
    p = _check_name(name)
    _check_split(split)
    n = _check_nonneg_int(num_images, "num_images")
    seed = _check_nonneg_int(base_seed, "base_seed")
    return f"{_official_stem(name, p['num_colors'])}_{split}_n{n}_seed{seed}.npz"


def _metadata(name: str, split: str, n: int, base_seed: int) -> dict:
    p = dataset_params(name)
    return dict(name=name, split=split, num_images=n, base_seed=base_seed, start=0,
                generator_version=GENERATOR_VERSION, **p)


def save_shapes_npz(path, data: dict, meta: Optional[dict] = None) -> None:
    """Atomically write ``images`` (float32) / ``labels`` (int8) and a JSON ``meta`` string.

    Writes a temporary file in the target directory, then ``os.replace``s it.
    """
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "images": data["images"].to(torch.float32).contiguous().numpy(),
        "labels": data["labels"].to(torch.int8).contiguous().numpy(),
        "meta": np.array(json.dumps(meta or {}, sort_keys=True)),
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_shapes_npz(path) -> dict:
    """Read a Shapes ``.npz``: ``images`` float32 ``[N, C, S, S]``, ``labels`` int8
    ``[N, S, S]`` and ``meta`` (dict; empty if the file has none, e.g. official files)."""
    import numpy as np

    with np.load(str(path), allow_pickle=False) as z:
        images = torch.from_numpy(np.ascontiguousarray(z["images"], dtype=np.float32))
        labels = torch.from_numpy(np.ascontiguousarray(z["labels"]).astype(np.int8, copy=False))
        meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
    return {"images": images, "labels": labels, "meta": meta}


def load_shapes(name: str, split: str, num_images: int, root=None, base_seed: int = 0) -> dict:
    """Load a generated split from the ``.npz`` cache, generating and caching it once.

    Args:
        root: cache directory (default ``default_data_root()``).

    Returns:
        dict with ``images`` float32 ``[N, C, S, S]``, ``labels`` int8 ``[N, S, S]``
        (identical to ``generate_shapes(name, split, num_images, base_seed)``) and
        ``meta`` (parameters used).
    """
    fname = shapes_file_name(name, split, num_images, base_seed)
    n = int(num_images)
    seed = int(base_seed)
    meta = _metadata(name, split, n, seed)
    path = Path(root) if root is not None else default_data_root()
    path = path / fname
    if path.exists():
        try:
            data = load_shapes_npz(path)
            if data["meta"] == json.loads(json.dumps(meta, sort_keys=True)) and data["images"].shape[0] == n:
                return data
        except Exception:  # corrupt or foreign file: regenerate
            pass
    data = generate_shapes(name, split, n, base_seed=seed)
    save_shapes_npz(path, data, meta)
    data["meta"] = meta
    return data
