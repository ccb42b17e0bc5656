"""Tests of the Rotating Features object-discovery evaluation (spec section 5, section 11 item 5)."""

import math

import pytest
import torch

from phasor.rotating_features.evaluation import (
    ari,
    cluster_objects,
    evaluate,
    kmeans,
    mbo,
    object_features,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randint(lo, hi, g):
    return int(torch.randint(lo, hi, (1,), generator=g))


def _random_label_batch(g, b=6):
    """Random (pred, gt) label maps with ignore regions and the special cases of ARI / MBO."""
    h, w = _randint(1, 13, g), _randint(1, 13, g)
    kp, kg = _randint(1, 7, g), _randint(1, 7, g)
    pred = torch.randint(0, kp, (b, h, w), generator=g)
    gt = torch.randint(0, kg, (b, h, w), generator=g)
    ignore = torch.rand(b, h, w, generator=g) < 0.15
    gt = torch.where(ignore, torch.full_like(gt, -1), gt)
    if b >= 6:
        gt[0] = torch.where(gt[0] > 0, torch.zeros_like(gt[0]), gt[0])  # no foreground
        pred[1] = gt[1].clamp_min(0) * 3 + 7  # identical partition (relabelled)
        pred[2] = 4  # a single predicted cluster
        gt[3] = torch.where(gt[3] >= 0, torch.full_like(gt[3], 2), gt[3])  # a single GT object
        pred[3] = 1  # single cluster on both sides
        gt[4] = -1  # everything ignored
    return pred, gt


# ----------------------------------------------------------------------------------------------------------
# ARI
# ----------------------------------------------------------------------------------------------------------


def test_ari_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    g = _gen(0)
    for _ in range(60):
        pred, gt = _random_label_batch(g)
        for fg in (True, False):
            got = ari(pred, gt, foreground_only=fg)
            assert got.dtype == torch.float64 and got.shape == (pred.shape[0],)
            for i in range(pred.shape[0]):
                keep = (gt[i] > 0) if fg else (gt[i] >= 0)
                ref = sk.adjusted_rand_score(gt[i][keep].numpy(), pred[i][keep].numpy())
                assert abs(got[i].item() - ref) <= 1e-10, (fg, i, got[i].item(), ref)


def test_ari_known_values():
    def one(a, b):
        gt = torch.tensor(a)[None, None] + 1  # all foreground
        pred = torch.tensor(b)[None, None]
        return ari(pred, gt).item()

    assert one([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0
    assert abs(one([0, 0, 1, 2], [0, 0, 1, 1]) - 4 / 7) < 1e-12
    assert one([0, 0, 0, 0], [0, 1, 2, 3]) == 0.0
    assert abs(one([0, 0, 1, 1], [0, 1, 0, 1]) + 0.5) < 1e-12
    assert one([0, 0, 0], [5, 5, 5]) == 1.0
    # No pixel to evaluate: 1.0 (scikit-learn on empty input), or empty_value.
    gt = torch.tensor([[[0, -1], [0, 0]]])
    pred = torch.tensor([[[0, 1], [2, 3]]])
    assert ari(pred, gt).item() == 1.0
    assert math.isnan(ari(pred, gt, empty_value=float("nan")).item())
    # Ignore pixels never count, also without foreground_only.
    gt = torch.tensor([[[1, 1, -1, 2, 2]]])
    pred = torch.tensor([[[0, 0, 0, 1, 1]]])
    assert ari(pred, gt, foreground_only=False).item() == 1.0


def test_ari_large_batch_chunks():
    # Many distinct labels: the contingency table is processed in several chunks.
    g = _gen(1)
    pred = torch.randint(0, 300, (40, 16, 16), generator=g)
    gt = torch.randint(-1, 300, (40, 16, 16), generator=g)
    full = ari(pred, gt)
    single = torch.cat([ari(pred[i : i + 1], gt[i : i + 1]) for i in range(40)])
    torch.testing.assert_close(full, single, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# MBO
# ----------------------------------------------------------------------------------------------------------


def _mbo_reference(pred, gt):
    """Per-image MBO written like the official eval_utils (loops, no batching); NaN when skipped."""
    out = []
    for i in range(gt.shape[0]):
        p = pred[i].clone().double()
        t = gt[i]
        p[t < 0] = -1
        gt_ids = [v for v in torch.unique(t).tolist() if v > 0]
        if not gt_ids:
            out.append(float("nan"))
            continue
        pred_ids = [v for v in torch.unique(p).tolist() if v != -1]
        best = []
        for gi in gt_ids:
            gm = t == gi
            ious = []
            for pi in pred_ids:
                pm = p == pi
                inter = (gm & pm).sum().item()
                union = (gm | pm).sum().item()
                ious.append(inter / (union + 1e-9))
            best.append(max(ious))
        out.append(sum(best) / len(best))
    return torch.tensor(out, dtype=torch.float64)


def test_mbo_matches_reference():
    g = _gen(2)
    for _ in range(40):
        pred, gt = _random_label_batch(g)
        got = mbo(pred, gt)
        ref = _mbo_reference(pred, gt)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12, equal_nan=True)


def test_mbo_special_cases():
    gt = torch.tensor([[[1, 1, 0, 2]], [[0, 0, -1, 0]]])
    pred = torch.tensor([[[3, 3, 3, 0]], [[1, 1, 1, 1]]])
    got = mbo(pred, gt)
    assert abs(got[0].item() - (2 / 3 + 1) / 2) < 1e-9
    assert math.isnan(got[1].item())
    # Predicted labels in the ignore region do not enlarge the predicted masks.
    gt = torch.tensor([[[1, 1, -1, -1]]])
    pred = torch.tensor([[[0, 0, 0, 0]]])
    assert abs(mbo(pred, gt).item() - 1.0) < 1e-9


# ----------------------------------------------------------------------------------------------------------
# k-means
# ----------------------------------------------------------------------------------------------------------


def _blobs(g, b, p, d, k, spread=0.05):
    centres = torch.randn(b, k, d, generator=g) * 5
    true = torch.randint(0, k, (b, p), generator=g)
    true[:, :k] = torch.arange(k)  # every cluster present
    pts = centres.gather(1, true[..., None].expand(b, p, d)) + spread * torch.randn(b, p, d, generator=g)
    return pts, true


def test_kmeans_recovers_blobs():
    g = _gen(3)
    for k in (1, 2, 5, 8):
        pts, true = _blobs(g, 6, 200, 4, k)
        labels, inertia = kmeans(pts, k)
        assert labels.dtype == torch.int64 and labels.shape == (6, 200)
        assert labels.min() >= 0 and labels.max() < k
        assert torch.all(ari(labels[:, None], true[:, None], foreground_only=False) == 1.0)
        assert torch.isfinite(inertia).all()


def test_kmeans_inertia_parity_with_sklearn():
    cluster = pytest.importorskip("sklearn.cluster")
    g = _gen(4)
    b, p, d, k = 24, 256, 8, 5
    x = torch.randn(b, p, d, generator=g)
    x[12:] = torch.nn.functional.normalize(_blobs(g, 12, p, d, k, spread=2.0)[0], dim=-1)
    _, inertia = kmeans(x, k, n_init=10, seed=0)
    ratios = []
    for i in range(b):
        km = cluster.KMeans(n_clusters=k, n_init=10, random_state=0).fit(x[i].numpy())
        ratios.append(inertia[i].item() / km.inertia_)
    ratios = torch.tensor(ratios)
    assert (ratios <= 1.01).float().mean() >= 0.9, ratios
    assert ratios.mean() <= 1.005, ratios


def test_kmeans_valid_mask():
    g = _gen(5)
    pts, true = _blobs(g, 4, 120, 3, 3)
    valid = torch.rand(4, 120, generator=g) > 0.3
    outliers = pts.clone()
    outliers[~valid] = 1e3  # would grab a cluster if they took part
    labels, inertia = kmeans(outliers, 3, valid=valid)
    assert torch.all(labels[~valid] == -1)
    assert torch.all(labels[valid] >= 0)
    gt = torch.where(valid, true + 1, torch.full_like(true, -1))
    assert torch.all(ari(labels[:, None], gt[:, None], foreground_only=False) == 1.0)
    # The inertia only counts valid points.
    for i in range(4):
        v = valid[i]
        x, lab = pts[i][v], labels[i][v]
        ref = sum(((x[lab == c] - x[lab == c].mean(0)) ** 2).sum() for c in range(3))
        assert abs(inertia[i].item() - float(ref)) <= 1e-4 * max(1.0, float(ref))


def test_kmeans_deterministic():
    g = _gen(6)
    x = torch.randn(10, 300, 8, generator=g)
    a = kmeans(x, 5, seed=3)
    b = kmeans(x, 5, seed=3)
    c = kmeans(x, 5, seed=3, chunk_size=3)  # chunking does not change the result
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0], c[0]) and torch.allclose(a[1], c[1])


def test_kmeans_degenerate_inputs():
    # All points identical (including all zero), fewer distinct points than k, fewer points than k,
    # and no valid point at all.
    x = torch.zeros(6, 50, 8)
    x[1] = 0.3
    x[2, :25, 0] = 1.0  # two distinct points
    x[3, ::7] = torch.eye(8)[:1]  # two distinct points, unevenly
    valid = torch.ones(6, 50, dtype=torch.bool)
    valid[4, 3:] = False  # three valid points
    valid[5] = False  # none
    for dtype in (torch.float32, torch.float64):
        labels, inertia = kmeans(x.to(dtype), 5, valid=valid)
        assert torch.isfinite(inertia).all()
        assert torch.all(inertia.abs() < 1e-5)
        assert torch.all(labels[valid] >= 0) and torch.all(labels[valid] < 5)
        assert torch.all(labels[~valid] == -1)
        assert ari(labels[2:3, None], (x[2:3, None, :, 0] > 0).long(), foreground_only=False).item() == 1.0


# ----------------------------------------------------------------------------------------------------------
# Object features
# ----------------------------------------------------------------------------------------------------------


def test_object_features_single_channel():
    g = _gen(7)
    out = torch.randn(3, 6, 1, 5, 4, generator=g, dtype=torch.float64)
    scale = torch.rand(3, 1, 1, 5, 4, generator=g, dtype=torch.float64) * 0.3
    out = out / torch.linalg.vector_norm(out, dim=1, keepdim=True) * scale  # magnitudes in [0, 0.3)
    out[0, :, 0, 0, 0] = 0.0
    out[0, :, 0, 0, 1] = out[0, :, 0, 0, 1] / out[0, :, 0, 0, 1].norm() * 0.1  # exactly at threshold: masked
    feats = object_features(out, threshold=0.1)
    assert feats.shape == (3, 20, 6)
    mag = torch.linalg.vector_norm(out, dim=1)[:, 0].reshape(3, 20)
    fn = torch.linalg.vector_norm(feats, dim=-1)
    keep = mag > 0.1
    torch.testing.assert_close(fn[keep], torch.ones_like(fn[keep]))
    assert torch.all(feats[~keep] == 0)
    unit = torch.nn.functional.normalize(out[:, :, 0], dim=1).reshape(3, 6, 20).transpose(1, 2)
    torch.testing.assert_close(feats[keep], unit[keep])


def test_object_features_multi_channel():
    g = _gen(8)
    b, n, c, h, w = 2, 4, 3, 3, 3
    out = torch.randn(b, n, c, h, w, generator=g, dtype=torch.float64)
    out[:, :, 1] *= 0.01  # channel 1 masked almost everywhere
    out[0, :, :, 0, 0] = 0.0  # a pixel masked in every channel
    feats = object_features(out, threshold=0.1)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                acc = torch.zeros(n, dtype=torch.float64)
                cnt = 0
                for ch in range(c):
                    v = out[i, :, ch, y, x]
                    if v.norm() > 0.1:
                        acc += v / v.norm()
                        cnt += 1
                ref = acc / (cnt + 1e-8)
                torch.testing.assert_close(feats[i, y * w + x], ref)
    assert torch.all(feats[0, 0] == 0)


# ----------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------


def _synthetic_scene(g, b, n, h, w, num_objects):
    """GT with rectangles (later ones on top), an overlap band of -1, and a rotating output whose objects
    have distinct random orientations (magnitude 1) and whose background has magnitude 0."""
    gt = torch.zeros(b, h, w, dtype=torch.long)
    for i in range(b):
        for o in range(1, num_objects + 1):
            y0, x0 = _randint(0, h - 4, g), _randint(0, w - 4, g)
            hh, ww = _randint(3, h // 2, g), _randint(3, w // 2, g)
            gt[i, y0 : y0 + hh, x0 : x0 + ww] = o
        gt[i, _randint(0, h, g), :3] = -1
    dirs = torch.nn.functional.normalize(torch.randn(b, num_objects + 1, n, generator=g), dim=-1)
    vec = dirs.gather(1, gt.clamp_min(0).reshape(b, -1, 1).expand(b, h * w, n))
    mag = (gt.reshape(b, -1, 1) > 0).float()
    rot = (vec * mag).transpose(1, 2).reshape(b, n, 1, h, w)
    return rot, gt


def test_cluster_objects_end_to_end():
    g = _gen(9)
    rot, gt = _synthetic_scene(g, 8, 8, 24, 24, 4)
    pred = cluster_objects(rot, gt, num_objects=4, n_init=10, seed=0)
    assert pred.shape == gt.shape and pred.dtype == torch.int64
    assert torch.all(pred[gt == -1] == 5)  # "none" label k for the excluded overlap pixels
    assert torch.all((pred[gt >= 0] >= 0) & (pred[gt >= 0] < 5))
    res = evaluate(rot, gt, num_objects=4)
    assert torch.equal(res["pred_labels"], pred)
    assert torch.all(res["ARI-BG_per_image"] == 1.0)
    torch.testing.assert_close(res["MBO_i_per_image"], torch.ones(8, dtype=torch.float64))
    assert res["ARI-BG"] == 1.0 and abs(res["MBO_i"] - 1.0) < 1e-9


def test_cluster_objects_upsampled_gt_and_class_labels():
    g = _gen(10)
    rot, gt_small = _synthetic_scene(g, 4, 6, 12, 12, 3)
    rot = rot * 2 + 0.0
    gt_small = gt_small.clamp_min(0)  # no overlaps: mask_overlap is off on a different grid anyway
    gt = gt_small.repeat_interleave(3, 1).repeat_interleave(3, 2)  # 36 x 36
    pred = cluster_objects(rot, gt, num_objects=3)
    assert pred.shape == (4, 36, 36)
    cls = (gt > 0).long() * (1 + gt % 2)
    res = evaluate(rot, gt, num_objects=3, labels_gt_class=cls, batch_size=2)
    assert res["ARI-BG"] == 1.0 and abs(res["MBO_i"] - 1.0) < 1e-9
    assert 0.0 < res["MBO_c"] <= 1.0 and res["MBO_c_per_image"].shape == (4,)
    with pytest.raises(ValueError, match="mask_overlap"):
        cluster_objects(rot, gt, num_objects=3, mask_overlap=True)


def test_evaluate_aggregation_without_foreground():
    g = _gen(11)
    rot, gt = _synthetic_scene(g, 4, 4, 12, 12, 2)
    gt[1] = torch.where(gt[1] > 0, torch.zeros_like(gt[1]), gt[1])
    res = evaluate(rot, gt, num_objects=2, n_init=2)
    assert math.isnan(res["MBO_i_per_image"][1].item())
    assert res["ARI-BG_per_image"][1].item() == 1.0  # scikit-learn's value on empty input
    assert abs(res["MBO_i"] - 1.0) < 1e-9  # the image without foreground is skipped
    gt[:] = 0
    res = evaluate(rot, gt, num_objects=2, n_init=2)
    assert res["MBO_i"] == 0.0  # no valid image: 0.0, like the official batch score


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_evaluate_cuda_matches_cpu():
    g = _gen(12)
    rot, gt = _synthetic_scene(g, 16, 8, 32, 32, 4)
    cpu = evaluate(rot, gt, num_objects=4)
    gpu = evaluate(rot.cuda(), gt.cuda(), num_objects=4)
    assert gpu["pred_labels"].is_cuda
    torch.testing.assert_close(gpu["ARI-BG_per_image"].cpu(), cpu["ARI-BG_per_image"])
    torch.testing.assert_close(gpu["MBO_i_per_image"].cpu(), cpu["MBO_i_per_image"], equal_nan=True)
    pred, gtc = cpu["pred_labels"], gt
    torch.testing.assert_close(ari(pred.cuda(), gtc.cuda()).cpu(), ari(pred, gtc))
    torch.testing.assert_close(mbo(pred.cuda(), gtc.cuda()).cpu(), mbo(pred, gtc), equal_nan=True)


# ----------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------


def test_bad_inputs():
    rot = torch.randn(2, 4, 1, 5, 5)
    gt = torch.zeros(2, 5, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="rot_out"):
        object_features(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="rot_out"):
        object_features(torch.zeros(2, 4, 1, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="points"):
        kmeans(torch.randn(10, 3), 2)
    with pytest.raises(ValueError, match="k must"):
        kmeans(torch.randn(1, 10, 3), 0)
    with pytest.raises(ValueError, match="n_init"):
        kmeans(torch.randn(1, 10, 3), 2, n_init=0)
    with pytest.raises(ValueError, match="valid"):
        kmeans(torch.randn(1, 10, 3), 2, valid=torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="tol"):
        kmeans(torch.randn(1, 10, 3), 2, tol=-1.0)
    with pytest.raises(ValueError, match="labels_gt"):
        cluster_objects(rot, gt[:1], 2)
    with pytest.raises(ValueError, match="labels_gt"):
        cluster_objects(rot, gt.float(), 2)
    with pytest.raises(ValueError, match="num_objects"):
        cluster_objects(rot, gt, -1)
    with pytest.raises(ValueError, match="pred"):
        ari(gt[:, :4], gt)
    with pytest.raises(ValueError, match="gt"):
        ari(gt, gt[0])
    with pytest.raises(ValueError, match="pred"):
        mbo(gt.float(), gt)
    with pytest.raises(ValueError, match="labels_gt_class"):
        evaluate(rot, gt, 2, n_init=1, labels_gt_class=gt[:, :3])
