"""Object-discovery evaluation for Rotating Features (Löwe et al. 2023, arXiv 2306.00600).

Pipeline (spec section 5, mirroring the official ``rotation_utils.run_evaluation`` / ``eval_utils``)::

    out  : [b, n, c, h, w]   decoder rotating output (before the output model)
    mag  = ||out||_2 over n
    mask = 1[mag > threshold]                               binary, not magnitude weighted
    c==1 : o = normalize(out, dim=n) * mask
    c>1  : o = sum_c normalize(out)_c * mask_c / (sum_c mask_c + 1e-8)
    points = o per pixel in R^n  (masked pixels are the zero vector: a de-facto background cluster)
    per image: k-means, k = num_objects + 1, 10 k-means++ restarts, best inertia kept;
               pixels with GT label < 0 (overlaps) take no part and get the label k ("none")
    labels resized (nearest) to the GT grid if the grids differ
    ARI-BG : adjusted Rand index on pixels with GT > 0
    MBO    : mean over GT masks (GT > 0) of the best IoU over predicted masks, GT < 0 ignored

Everything is plain torch, batched over images (and, in k-means, over restarts too), and runs on whichever
device the inputs live on. Images are processed in chunks to bound memory.

k-means (project implementation, statistically on par with ``sklearn.cluster.KMeans``, not bit-identical):

* initialisation: *greedy* k-means++ as in scikit-learn: every new centre is the best (lowest resulting
  potential) of ``2 + int(log(k))`` candidates sampled proportionally to the squared distance to the
  nearest centre chosen so far;
* Lloyd iterations as in scikit-learn's ``_kmeans_single_lloyd``: stop on strict convergence (labels
  unchanged) or when the total squared centre shift is ``<= tol * mean(var(X, axis=0))`` (the tolerance is
  relative to the data variance of each image), or after ``max_iter`` iterations; empty clusters are
  re-seeded with the points farthest from their assigned centre (which are removed from their old cluster),
  like scikit-learn's ``_relocate_empty_clusters``;
* a final assignment step with the final centres, exact inertia, and per image the restart with the lowest
  inertia (the first on ties).

Randomness comes from one ``torch.Generator`` seeded with ``seed`` on the CPU: all uniforms that k-means++
needs are drawn up front for the whole batch, so the result does not depend on the chunk size or the device.

Deviations from the official evaluation (all documented in the function docstrings):

* k-means is a batched torch re-implementation, so labels are not bit-identical to scikit-learn's (the spec
  asks for statistical parity). Images with fewer valid points than ``k`` do not raise (scikit-learn does).
* ``ari`` of an image with no pixel to evaluate is 1.0, which is what ``sklearn.metrics.adjusted_rand_score``
  returns on empty input and therefore what the official per-image average uses (``empty_value`` changes it).
* means in :func:`evaluate` are over images (ARI-BG) and over valid images (MBO); the official code averages
  per batch of 64 and then over batches, available here with ``batch_size=64``.
* no modal smoothing of resized labels (the official ``smooth_labels`` option, used for Pascal/FoodSeg only).
* GT labels < 0 are all treated as "ignore" (the official code tests ``== -1``; the datasets only use -1).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "object_features",
    "kmeans",
    "cluster_objects",
    "ari",
    "mbo",
    "evaluate",
]

# Upper bound on the number of elements of one batched contingency table chunk ([images, Kpred, Kgt]).
_TABLE_BUDGET = 1 << 22


# --------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------


def _check_tensor(x, name: str, ndim: Optional[int] = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {tuple(x.shape)}")


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, torch.Tensor) or float(value) != int(value):
                raise TypeError
            value = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_labels(x, name: str) -> None:
    _check_tensor(x, name, 3)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer label tensor, got dtype {x.dtype}")


# --------------------------------------------------------------------------------------------------------------
# Object features
# --------------------------------------------------------------------------------------------------------------


def object_features(rot_out: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """Masked unit orientations of the rotating output, one point in R^n per pixel.

    Args:
        rot_out: decoder rotating output ``[b, n, c, h, w]`` (floating point).
        threshold: pixels (per channel) with magnitude ``<= threshold`` are masked out (binary mask).

    Returns:
        ``[b, h*w, n]`` (pixels in row-major order). For ``c == 1`` the orientation ``normalize(out, dim=n)``
        times the binary mask; for ``c > 1`` the mean of the unit orientations over the unmasked channels,
        ``sum_c normalize(out)_c * mask_c / (sum_c mask_c + 1e-8)``. Masked pixels are zero vectors.
    """
    _check_tensor(rot_out, "rot_out", 5)
    if not rot_out.is_floating_point():
        raise ValueError(f"rot_out must be a floating-point tensor, got dtype {rot_out.dtype}")
    b, n, c, h, w = rot_out.shape
    if n < 1 or c < 1:
        raise ValueError(f"rot_out must have n >= 1 and c >= 1, got shape {tuple(rot_out.shape)}")
    mag = torch.linalg.vector_norm(rot_out, dim=1)  # [b, c, h, w]
    mask = (mag > threshold).to(rot_out.dtype)  # exactly binary
    unit = F.normalize(rot_out, p=2.0, dim=1)  # eps 1e-12, like the official code
    if c == 1:
        o = unit[:, :, 0] * mask[:, None, 0]  # [b, n, h, w]
    else:
        o = (unit * mask[:, None]).sum(dim=2) / (mask.sum(dim=1)[:, None] + 1e-8)
    return o.reshape(b, n, h * w).transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------------------------
# Batched k-means
# --------------------------------------------------------------------------------------------------------------


def _sqdist(centres: torch.Tensor, x: torch.Tensor, xnorm: torch.Tensor) -> torch.Tensor:
    """Squared distances between centres [B, M, D] and points [B, P, D] -> [B, M, P] (clamped at 0)."""
    cn = (centres * centres).sum(-1)  # [B, M]
    d = torch.baddbmm(cn[:, :, None] + xnorm[:, None, :], centres, x.transpose(1, 2), beta=1.0, alpha=-2.0)
    return d.clamp_min_(0.0)


def _gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, P, D], idx [B, ...] (point indices) -> [B, ..., D]."""
    b, p, d = x.shape
    flat = idx.reshape(b, -1)
    out = x.gather(1, flat[:, :, None].expand(b, flat.shape[1], d))
    return out.reshape(*idx.shape, d)


def _kmeanspp(x, w, xnorm, u_first, u_cand, k):
    """Greedy k-means++ for all images and restarts at once.

    x [B, P, D], w [B, P] (1 valid / 0 invalid), xnorm [B, P], u_first [B, R], u_cand [B, R, k-1, T].
    Returns centres [B, R, k, D].
    """
    bsz, p, d = x.shape
    r = u_first.shape[1]
    t = u_cand.shape[-1]
    w64 = w.to(torch.float64)
    cw = w64.cumsum(-1)  # [B, P]
    any_valid = cw[:, -1] > 0  # [B]
    first_valid = w.argmax(-1)  # [B] (index 0 when there is no valid point)

    def sample(prob64: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """prob64 [B, R, P] >= 0, u [B, R, S] in [0, 1) -> indices [B, R, S] with prob > 0 where possible."""
        cs = prob64.cumsum(-1)
        tot = cs[..., -1:]
        # Degenerate potential (all valid points already sit on centres): sample uniformly among valid points.
        deg = tot <= 0
        cs = torch.where(deg, cw[:, None, :].expand_as(cs), cs)
        prob64 = torch.where(deg, w64[:, None, :].expand_as(prob64), prob64)
        tot = cs[..., -1:]
        idx = torch.searchsorted(cs.contiguous(), (u.to(torch.float64) * tot).contiguous(), right=True)
        idx = idx.clamp_(max=p - 1)
        # Rounding could land on a zero-probability point: fall back to the most probable one.
        ok = prob64.gather(-1, idx) > 0
        fallback = prob64.argmax(-1, keepdim=True).expand_as(idx)
        idx = torch.where(ok, idx, fallback)
        # Images without any valid point: use index 0 (results are discarded later anyway).
        return torch.where(any_valid[:, None, None], idx, first_valid[:, None, None].expand_as(idx))

    centres = x.new_zeros(bsz, r, k, d)
    idx0 = sample(w64[:, None, :].expand(bsz, r, p), u_first[..., None])  # [B, R, 1]
    c0 = _gather_points(x, idx0[..., 0])  # [B, R, D]
    centres[:, :, 0] = c0
    closest = _sqdist(c0, x, xnorm)  # [B, R, P]
    for j in range(1, k):
        prob = closest.to(torch.float64) * w64[:, None, :]
        cand = sample(prob, u_cand[:, :, j - 1])  # [B, R, T]
        cpts = _gather_points(x, cand)  # [B, R, T, D]
        dc = _sqdist(cpts.reshape(bsz, r * t, d), x, xnorm).reshape(bsz, r, t, p)
        dc = torch.minimum(dc, closest[:, :, None, :])
        pot = (dc * w[:, None, None, :]).sum(-1)  # [B, R, T]
        best = pot.argmin(-1)  # [B, R]
        closest = dc.gather(2, best[:, :, None, None].expand(bsz, r, 1, p))[:, :, 0]
        centres[:, :, j] = cpts.gather(2, best[:, :, None, None].expand(bsz, r, 1, d))[:, :, 0]
    return centres


def _assign(x, xnorm, centres):
    """x [B, P, D], centres [B, R, k, D] -> (labels [B, R, P], squared distance to assigned centre [B, R, P])."""
    bsz, r, k, d = centres.shape
    p = x.shape[1]
    dist = _sqdist(centres.reshape(bsz, r * k, d), x, xnorm).reshape(bsz, r, k, p)
    dmin, labels = dist.min(dim=2)
    return labels, dmin


def _lloyd_step(x, w, xnorm, centres):
    """One scikit-learn style Lloyd iteration: assign, average, relocate empty clusters.

    Returns (labels [B, R, P], new centres [B, R, k, D]).
    """
    bsz, r, k, d = centres.shape
    p = x.shape[1]
    labels, dmin = _assign(x, xnorm, centres)
    ar = torch.arange(k, device=x.device)
    onehot = (labels[:, :, None, :] == ar[None, None, :, None]).to(x.dtype) * w[:, None, None, :]
    sums = torch.bmm(onehot.reshape(bsz, r * k, p), x).reshape(bsz, r, k, d)
    counts = onehot.sum(-1)  # [B, R, k]
    empty = counts == 0
    if bool(empty.any()):
        kk = min(k, p)
        far = torch.where(w[:, None, :] > 0, dmin, torch.full_like(dmin, -1.0))  # invalid points never chosen
        fval, fidx = far.topk(kk, dim=-1)  # [B, R, kk], farthest first
        rank = empty.long().cumsum(-1) - 1  # i-th empty cluster takes the i-th farthest point
        rank_c = rank.clamp(0, kk - 1)
        pidx = fidx.gather(-1, rank_c)  # [B, R, k]
        do = empty & (rank < kk) & (fval.gather(-1, rank_c) >= 0)
        pts = _gather_points(x, pidx)  # [B, R, k, D]
        old = labels.gather(-1, pidx)  # [B, R, k]
        dof = do.to(x.dtype)
        sums = sums.scatter_add(2, old[..., None].expand(bsz, r, k, d), -pts * dof[..., None])
        counts = counts.scatter_add(2, old, -dof)
        sums = torch.where(do[..., None], pts, sums)
        counts = torch.where(do, torch.ones_like(counts), counts)
        still_empty = empty & ~do
    else:
        still_empty = empty
    new = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1e-30)[..., None], sums)
    # A cluster that stays empty (fewer valid points than clusters) keeps its centre.
    new = torch.where(still_empty[..., None], centres, new)
    return labels, new


def _kmeans_chunk(x, valid, k, u_first, u_cand, max_iter, tol):
    bsz, p, d = x.shape
    r = u_first.shape[1]
    w = valid.to(x.dtype)
    xnorm = (x * x).sum(-1)
    nval = w.sum(-1)  # [B]
    # scikit-learn: tol * mean over features of the (population) variance of the data.
    mean = (x * w[..., None]).sum(1) / nval.clamp_min(1)[:, None]
    var = (((x - mean[:, None]) ** 2) * w[..., None]).sum(1) / nval.clamp_min(1)[:, None]
    tol_img = var.mean(-1) * tol  # [B]

    centres = _kmeanspp(x, w, xnorm, u_first, u_cand, k)

    active = (nval > 0)[:, None].expand(bsz, r).clone()  # [B, R]
    labels_old = torch.full((bsz, r, p), -1, dtype=torch.long, device=x.device)
    # Working set: images with at least one active restart (compacted as runs converge).
    work = torch.arange(bsz, device=x.device)
    wx, ww, wn, wc = x, w, xnorm, centres
    wact, wold = active, labels_old
    wvalid = valid
    wtol = tol_img
    for _ in range(max_iter):
        if work.numel() == 0:
            break
        labels, new = _lloyd_step(wx, ww, wn, wc)
        shift = ((new - wc) ** 2).sum((-1, -2))  # [W, R]
        strict = ((labels == wold) | ~wvalid[:, None, :]).all(-1)
        wc = torch.where(wact[..., None, None], new, wc)
        done = wact & (strict | (shift <= wtol[:, None]))
        wact = wact & ~done
        wold = labels
        img_active = wact.any(-1)
        n_act = int(img_active.sum())
        if n_act < work.numel():
            # Write back and shrink the working set when it has become noticeably smaller.
            if n_act == 0 or n_act <= 0.75 * work.numel():
                centres[work] = wc
                active[work] = wact
                keep = img_active.nonzero().squeeze(1)
                work = work[keep]
                wx, ww, wn, wc = wx[keep], ww[keep], wn[keep], wc[keep]
                wact, wold, wvalid, wtol = wact[keep], wold[keep], wvalid[keep], wtol[keep]
    if work.numel() > 0:
        centres[work] = wc

    labels, _ = _assign(x, xnorm, centres)  # final assignment with the final centres
    cpts = centres.gather(2, labels[..., None].expand(bsz, r, p, d))  # [B, R, P, D]
    inertia_runs = (((x[:, None] - cpts) ** 2).sum(-1) * w[:, None, :]).sum(-1)  # [B, R], exact
    best = inertia_runs.argmin(-1)  # first minimum on ties
    best_labels = labels.gather(1, best[:, None, None].expand(bsz, 1, p))[:, 0]
    best_labels = torch.where(valid, best_labels, torch.full_like(best_labels, -1))
    inertia = inertia_runs.gather(1, best[:, None])[:, 0]
    return best_labels, inertia


def kmeans(
    points: torch.Tensor,
    k: int,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    valid: Optional[torch.Tensor] = None,
    *,
    chunk_size: int = 64,
):
    """Batched k-means: an independent clustering of every image, all restarts at once.

    Args:
        points: ``[B, P, D]`` floating point (half precision is computed in float32).
        k: number of clusters (>= 1).
        n_init: number of k-means++ restarts per image; the one with the lowest inertia is kept.
        max_iter: maximum number of Lloyd iterations per restart.
        tol: relative tolerance: a restart stops once the total squared centre shift is
            ``<= tol * mean_d var(points[..., d])`` (per image, over valid points), as in scikit-learn;
            it also stops when its labels no longer change.
        seed: seed of the ``torch.Generator`` (CPU) that draws the k-means++ samples: same seed, same result.
        valid: optional ``[B, P]`` bool; invalid points take no part and get label -1.
        chunk_size: images processed at once (bounds memory to roughly
            ``chunk_size * n_init * P * max(k, 2 + log k) * 3`` elements).

    Returns:
        ``(labels [B, P] int64, inertia [B])``. Initialisation is the greedy k-means++ of scikit-learn
        (``2 + int(log(k))`` local trials). Empty clusters are re-seeded with the farthest points. Images with
        fewer distinct (valid) points than ``k`` work (some clusters then share a centre or stay empty); an
        image without valid points gets all labels -1 and inertia 0.
    """
    _check_tensor(points, "points", 3)
    if not points.is_floating_point():
        raise ValueError(f"points must be a floating-point tensor, got dtype {points.dtype}")
    k = _check_int(k, "k", 1)
    n_init = _check_int(n_init, "n_init", 1)
    max_iter = _check_int(max_iter, "max_iter", 1)
    chunk_size = _check_int(chunk_size, "chunk_size", 1)
    seed = _check_int(seed, "seed", -(1 << 63))
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    bsz, p, d = points.shape
    if valid is None:
        valid = torch.ones(bsz, p, dtype=torch.bool, device=points.device)
    else:
        _check_tensor(valid, "valid", 2)
        if tuple(valid.shape) != (bsz, p):
            raise ValueError(f"valid must have shape {(bsz, p)} (matching points), got {tuple(valid.shape)}")
        if valid.device != points.device:
            raise ValueError(f"valid must be on the device of points ({points.device}), got {valid.device}")
        valid = valid.to(torch.bool)
    x = points.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("points must be finite (no NaN or inf)")

    # All randomness up front (CPU generator): independent of chunking and device.
    n_trials = 2 + int(math.log(k))
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    u_first = torch.rand(bsz, n_init, generator=gen, dtype=torch.float64)
    u_cand = torch.rand(bsz, n_init, max(k - 1, 0), n_trials, generator=gen, dtype=torch.float64)
    u_first = u_first.to(x.device)
    u_cand = u_cand.to(x.device)

    labels = torch.full((bsz, p), -1, dtype=torch.long, device=x.device)
    inertia = x.new_zeros(bsz)
    if p == 0 or bsz == 0:
        return labels, inertia
    for s in range(0, bsz, chunk_size):
        e = min(bsz, s + chunk_size)
        lab, ine = _kmeans_chunk(
            x[s:e].contiguous(), valid[s:e], k, u_first[s:e], u_cand[s:e], max_iter, float(tol)
        )
        labels[s:e] = lab
        inertia[s:e] = ine
    return labels, inertia


# --------------------------------------------------------------------------------------------------------------
# Clustering of the rotating output
# --------------------------------------------------------------------------------------------------------------


def cluster_objects(
    rot_out: torch.Tensor,
    labels_gt: torch.Tensor,
    num_objects: int,
    threshold: float = 0.1,
    n_init: int = 10,
    seed: int = 0,
    *,
    mask_overlap: Optional[bool] = None,
    max_iter: int = 300,
    tol: float = 1e-4,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Predicted object label maps from the rotating output (official ``apply_kmeans`` + resize).

    Args:
        rot_out: ``[b, n, c, h, w]`` decoder rotating output.
        labels_gt: ``[b, H, W]`` integer GT instance labels (0 background, > 0 objects, -1 ignore/overlap).
        num_objects: objects per image; k-means uses ``k = num_objects + 1``.
        threshold: magnitude mask threshold (see :func:`object_features`).
        n_init, seed, max_iter, tol, chunk_size: passed to :func:`kmeans`.
        mask_overlap: exclude pixels with GT < 0 from k-means and label them ``k`` ("none"), like the
            official ``mask_overlap=1`` (4Shapes configs). Default (None): on when the GT grid equals the
            prediction grid, off otherwise (the official Pascal/FoodSeg configs use ``mask_overlap=0``);
            requesting it with different grids raises ValueError.

    Returns:
        ``[b, H, W]`` int64 labels in ``[0, k]``; resized with nearest neighbour to the GT grid when the grids
        differ (no modal smoothing).
    """
    _check_tensor(rot_out, "rot_out", 5)
    _check_labels(labels_gt, "labels_gt")
    num_objects = _check_int(num_objects, "num_objects", 0)
    b, n, c, h, w = rot_out.shape
    if labels_gt.shape[0] != b:
        raise ValueError(
            f"labels_gt batch size {labels_gt.shape[0]} does not match rot_out batch size {b}"
        )
    gh, gw = labels_gt.shape[1:]
    same_grid = (gh, gw) == (h, w)
    if mask_overlap is None:
        mask_overlap = same_grid
    elif mask_overlap and not same_grid:
        raise ValueError(
            f"mask_overlap needs labels_gt on the prediction grid {(h, w)}, got {(gh, gw)}"
        )
    k = num_objects + 1
    feats = object_features(rot_out, threshold)  # [b, h*w, n]
    labels_gt = labels_gt.to(feats.device)
    valid = (labels_gt >= 0).reshape(b, h * w) if mask_overlap else None
    labels, _ = kmeans(
        feats, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed, valid=valid, chunk_size=chunk_size
    )
    labels = torch.where(labels < 0, torch.full_like(labels, k), labels)
    pred = labels.reshape(b, h, w)
    if not same_grid:
        pred = F.interpolate(pred[:, None].float(), size=(gh, gw), mode="nearest")[:, 0].round().long()
    return pred


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------


def _contingency(pred: torch.Tensor, gt: torch.Tensor, keep: torch.Tensor):
    """Batched contingency tables over the kept pixels.

    pred, gt, keep: [b, N]. Labels are compacted over the batch (torch.unique), so the table is
    [b, Kp, Kg] int64 with Kp/Kg the numbers of distinct kept pred/gt values in the batch. Also returns the
    pred / gt label values of the table rows / columns.
    """
    b = pred.shape[0]
    pv, pinv = torch.unique(pred[keep], return_inverse=True)
    gv, ginv = torch.unique(gt[keep], return_inverse=True)
    kp, kg = max(pv.numel(), 1), max(gv.numel(), 1)
    img = torch.arange(b, device=pred.device)[:, None].expand_as(pred)[keep]
    key = (img * kp + pinv) * kg + ginv
    table = torch.bincount(key, minlength=b * kp * kg).reshape(b, kp, kg)
    return table, pv, gv


def _chunks(b: int, per_image: int):
    step = max(1, _TABLE_BUDGET // max(per_image, 1))
    return [(s, min(b, s + step)) for s in range(0, b, step)]


def _ari_from_table(table: torch.Tensor) -> tuple:
    """Pair-confusion counts as scikit-learn's ``pair_confusion_matrix`` (int64): (tp, fp, fn, tn, n)."""
    n = table.sum((1, 2))
    ss = (table * table).sum((1, 2))
    rows = table.sum(2)  # pred marginals
    cols = table.sum(1)  # gt marginals
    sum_c = (cols * cols).sum(1)
    sum_k = (rows * rows).sum(1)
    tp = ss - n
    fp = sum_k - ss
    fn = sum_c - ss
    tn = n * n - fp - fn - ss
    return tp, fp, fn, tn, n


def ari(
    pred: torch.Tensor, gt: torch.Tensor, foreground_only: bool = True, *, empty_value: float = 1.0
) -> torch.Tensor:
    """Adjusted Rand index per image (ARI-BG when ``foreground_only``), float64 ``[b]``.

    Evaluated on the pixels with ``gt > 0`` (``foreground_only``, the official "ARI" key) or ``gt >= 0``;
    pixels with ``gt < 0`` are always excluded. Equals ``sklearn.metrics.adjusted_rand_score`` per image,
    including its special case (no disagreeing pair, e.g. identical partitions or a single cluster on both
    sides -> 1.0). An image with no pixel to evaluate scores ``empty_value``: 1.0 by default, which is what
    scikit-learn returns on empty input and what the official per-image average therefore counts; pass
    ``float('nan')`` to have such images skipped instead.
    """
    _check_labels(pred, "pred")
    _check_labels(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} does not match gt shape {tuple(gt.shape)}")
    gt = gt.to(pred.device)
    b = pred.shape[0]
    out = torch.empty(b, dtype=torch.float64, device=pred.device)
    if b == 0:
        return out
    p2 = pred.reshape(b, -1).long()
    g2 = gt.reshape(b, -1).long()
    keep = g2 > 0 if foreground_only else g2 >= 0
    kp = max(int(torch.unique(p2[keep]).numel()), 1)
    kg = max(int(torch.unique(g2[keep]).numel()), 1)
    for s, e in _chunks(b, kp * kg):
        table, _, _ = _contingency(p2[s:e], g2[s:e], keep[s:e])
        tp, fp, fn, tn, n = _ari_from_table(table)
        tp, fp, fn, tn = (v.to(torch.float64) for v in (tp, fp, fn, tn))
        num = 2.0 * (tp * tn - fn * fp)
        den = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
        perfect = (fn == 0) & (fp == 0)
        val = torch.where(perfect, torch.ones_like(num), num / torch.where(perfect, torch.ones_like(den), den))
        val = torch.where(n == 0, torch.full_like(val, float(empty_value)), val)
        out[s:e] = val
    return out


def mbo(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean best overlap per image (official ``mean_best_overlap_single_sample``), float64 ``[b]``.

    Predicted labels inside GT-ignore regions (``gt < 0``) are set to -1 and, like negative predicted labels in
    general, form no predicted mask. For every GT mask (label > 0) the best IoU over the predicted masks is
    taken (``intersection / (union + 1e-9)``), and these are averaged over the GT masks. Images without
    foreground GT are NaN (the official code skips them; :func:`evaluate` reports 0.0 if none is valid).
    Use class labels as ``gt`` for MBO_c.
    """
    _check_labels(pred, "pred")
    _check_labels(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} does not match gt shape {tuple(gt.shape)}")
    gt = gt.to(pred.device)
    b = pred.shape[0]
    out = torch.full((b,), float("nan"), dtype=torch.float64, device=pred.device)
    if b == 0:
        return out
    g2 = gt.reshape(b, -1).long()
    keep = g2 >= 0  # pred in the ignore region is -1, hence in no predicted mask
    p2 = pred.reshape(b, -1).long()
    kp = max(int(torch.unique(p2[keep]).numel()), 1)
    kg = max(int(torch.unique(g2[keep]).numel()), 1)
    for s, e in _chunks(b, kp * kg):
        table, pv, gv = _contingency(p2[s:e], g2[s:e], keep[s:e])
        if pv.numel() == 0 or gv.numel() == 0:
            continue  # nothing kept in this chunk: no foreground, NaN
        t = table.to(torch.float64)
        gsize = t.sum(1)  # [c, Kg]: pixels of each GT mask (including those with a negative pred)
        psize = t.sum(2)  # [c, Kp]: pixels of each predicted mask outside the ignore region
        iou = t / (gsize[:, None, :] + psize[:, :, None] - t + 1e-9)
        iou = torch.where((pv >= 0)[None, :, None], iou, torch.zeros_like(iou))
        best = iou.amax(1)  # [c, Kg]
        present = (gsize > 0) & (gv > 0)[None, :]
        cnt = present.sum(1)
        tot = torch.where(present, best, torch.zeros_like(best)).sum(1)
        out[s:e] = torch.where(cnt > 0, tot / cnt.clamp_min(1), torch.full_like(tot, float("nan")))
    return out


def _mean(values: torch.Tensor, skip_nan: bool, batch_size: Optional[int]) -> float:
    """Official-style aggregation. skip_nan: mean over non-NaN values, 0.0 when there are none."""

    def one(v: torch.Tensor) -> float:
        if skip_nan:
            v = v[~torch.isnan(v)]
            return float(v.mean()) if v.numel() > 0 else 0.0
        return float(v.mean()) if v.numel() > 0 else float("nan")

    if batch_size is None:
        return one(values)
    parts = [one(values[s : s + batch_size]) for s in range(0, values.shape[0], batch_size)]
    return sum(parts) / len(parts) if parts else float("nan")


def evaluate(
    rot_out: torch.Tensor,
    labels_gt: torch.Tensor,
    num_objects: int,
    threshold: float = 0.1,
    n_init: int = 10,
    seed: int = 0,
    *,
    labels_gt_class: Optional[torch.Tensor] = None,
    mask_overlap: Optional[bool] = None,
    batch_size: Optional[int] = None,
    max_iter: int = 300,
    tol: float = 1e-4,
    chunk_size: int = 64,
) -> dict:
    """Full object-discovery evaluation of a batch (or a whole test set) of rotating outputs.

    Returns a dict with
        ``"pred_labels"``: ``[b, H, W]`` int64 predicted label maps (see :func:`cluster_objects`);
        ``"ARI-BG"`` / ``"MBO_i"`` (and ``"MBO_c"`` when ``labels_gt_class`` is given): the means (float);
        ``"ARI-BG_per_image"`` / ``"MBO_i_per_image"`` (/ ``"MBO_c_per_image"``): float64 ``[b]`` tensors;
        MBO is NaN for images without foreground GT.

    ARI-BG is averaged over all images (an image without foreground scores 1.0, as scikit-learn and the
    official code do); MBO over the images with foreground GT (0.0 if there is none). With ``batch_size`` the
    mean is taken per consecutive batch first and then over batches, as the official code does (it uses 64
    with ``drop_last=True``; dropping the partial batch is up to the caller).
    """
    if batch_size is not None:
        batch_size = _check_int(batch_size, "batch_size", 1)
    pred = cluster_objects(
        rot_out,
        labels_gt,
        num_objects,
        threshold=threshold,
        n_init=n_init,
        seed=seed,
        mask_overlap=mask_overlap,
        max_iter=max_iter,
        tol=tol,
        chunk_size=chunk_size,
    )
    labels_gt = labels_gt.to(pred.device)
    ari_img = ari(pred, labels_gt, foreground_only=True)
    mbo_img = mbo(pred, labels_gt)
    result = {
        "pred_labels": pred,
        "ARI-BG": _mean(ari_img, skip_nan=True, batch_size=batch_size),
        "MBO_i": _mean(mbo_img, skip_nan=True, batch_size=batch_size),
        "ARI-BG_per_image": ari_img,
        "MBO_i_per_image": mbo_img,
    }
    if labels_gt_class is not None:
        _check_labels(labels_gt_class, "labels_gt_class")
        if labels_gt_class.shape != labels_gt.shape:
            raise ValueError(
                f"labels_gt_class shape {tuple(labels_gt_class.shape)} does not match labels_gt shape "
                f"{tuple(labels_gt.shape)}"
            )
        mbo_c = mbo(pred, labels_gt_class.to(pred.device))
        result["MBO_c"] = _mean(mbo_c, skip_nan=True, batch_size=batch_size)
        result["MBO_c_per_image"] = mbo_c
    return result
