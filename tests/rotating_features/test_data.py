"""Tests for the deterministic Shapes generators (spec §7, §11 item 6)."""

import math

import pytest
import torch

from phasor.rotating_features.data import (
    SplitMix64,
    generate_shapes,
    hsv_palette,
    load_shapes,
    num_objects,
    shapes_file_name,
)

FOUR = ("4Shapes", "4Shapes_RGB", "4Shapes_RGBD")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def gray():
    return generate_shapes("4Shapes", "train", 500, return_debug=True)


@pytest.fixture(scope="module")
def rgb():
    return generate_shapes("4Shapes_RGB", "train", 100, return_debug=True)


@pytest.fixture(scope="module")
def rgbd():
    return generate_shapes("4Shapes_RGBD", "train", 100, return_debug=True)


@pytest.fixture(scope="module")
def ten():
    return generate_shapes("10Shapes", "train", 200, return_debug=True)


# ---------------------------------------------------------------- RNG

def test_rng_vectors():
    r = SplitMix64.for_image(0, 0, 0, 0)
    assert [r.u() for _ in range(3)] == [0.1296456182997474, 0.049920065672091285, 0.6703283700586791]
    r = SplitMix64.for_image(0, 1, 2, 7)
    assert [r.u() for _ in range(3)] == [0.2756877083649403, 0.22718350599725612, 0.08682616331380899]


def test_rng_randint_perm():
    r = SplitMix64.for_image(3, 0, 1, 11)
    vals = [r.randint(2, 5) for _ in range(2000)]
    assert min(vals) == 2 and max(vals) == 5
    for k in (1, 2, 4, 10):
        p = r.perm(k)
        assert sorted(p) == list(range(k))
    # randint / perm are defined through u() (spec §7.1)
    a, b = SplitMix64.for_image(5, 1, 0, 2), SplitMix64.for_image(5, 1, 0, 2)
    assert a.randint(8, 12) == 8 + math.floor(b.u() * 5)
    arr = list(range(4))
    for i in range(3, 0, -1):
        j = math.floor(b.u() * (i + 1))
        arr[i], arr[j] = arr[j], arr[i]
    assert a.perm(4) == arr


# ---------------------------------------------------------------- geometry

@pytest.mark.parametrize("name", FOUR)
def test_first_object_values(name):
    d = generate_shapes(name, "train", 1, return_debug=True)
    y0, x0, L = d["boxes"][0, 0].tolist()
    assert (L, y0, x0) == (8, 1, 16)
    assert d["types"][0].tolist() == [0, 1, 2, 3]


def _pixel_grid(S):
    rc = torch.arange(S, dtype=torch.float64) + 0.5
    return rc.view(S, 1), rc.view(1, S)


def _reference_mask(S, kind, y0, x0, L, theta, rotated):
    """Full-grid rasterisation straight from spec §7.2."""
    r, c = _pixel_grid(S)
    cy, cx = y0 + L / 2, x0 + L / 2
    dy, dx = r - cy, c - cx
    if not rotated:
        if kind == 0:
            m = (r >= y0) & (r < y0 + L) & (c >= x0) & (c < x0 + L)
        elif kind in (1, 2):
            t = (r - y0) if kind == 1 else ((y0 + L) - r)
            m = (t >= 0) & (t <= L) & ((c - cx).abs() <= t / 2)
        else:
            m = dy**2 + dx**2 <= (L / 2) ** 2
    else:
        if kind == 2:
            m = dy**2 + dx**2 <= (L / 2) ** 2
        else:
            v = math.cos(theta) * dy + math.sin(theta) * dx
            h = -math.sin(theta) * dy + math.cos(theta) * dx
            if kind == 0:
                m = (v.abs() <= L / 2) & (h.abs() <= L / 2)
            else:
                m = (v >= -L / 2) & (v <= L / 2) & (h.abs() <= (v + L / 2) / 2)
    return m.expand(S, S)


@pytest.mark.parametrize("which", ["gray", "ten"])
def test_masks_match_reference_rasterisation(which, request):
    d = request.getfixturevalue(which)
    rotated = which == "ten"
    S = d["labels"].shape[-1]
    for i in range(40):
        for k in range(d["types"].shape[1]):
            y0, x0, L = d["boxes"][i, k].tolist()
            if rotated:
                m = math.ceil(L / math.sqrt(2) - L / 2)
                assert 8 <= L <= 12 and m <= y0 <= S - L - m and m <= x0 <= S - L - m
                assert 0.0 <= d["angles"][i, k].item() < 2 * math.pi
            else:
                assert 8 <= L <= 10 and 0 <= y0 <= S - L and 0 <= x0 <= S - L
            ref = _reference_mask(S, int(d["types"][i, k]), y0, x0, L, float(d["angles"][i, k]), rotated)
            # a rotated triangle/square can differ only on exact boundary ties (measure zero)
            assert torch.equal(d["masks"][i, k], ref)


@pytest.mark.parametrize("which", ["gray", "rgb", "rgbd", "ten"])
def test_label_semantics(which, request):
    d = request.getfixturevalue(which)
    masks, labels = d["masks"], d["labels"]
    assert labels.dtype == torch.int8
    cov = masks.sum(1)
    assert torch.equal(labels == -1, cov >= 2)
    assert torch.equal(labels == 0, cov == 0)
    single = cov == 1
    owner = masks.to(torch.int64).argmax(1) + 1
    assert torch.equal(labels[single].to(torch.int64), owner[single])
    assert int(labels.min()) >= -1 and int(labels.max()) <= masks.shape[1]


@pytest.mark.parametrize("which,min_excl", [("gray", 0.5), ("ten", 0.75)])
def test_min_exclusive_pixels(which, min_excl, request):
    d = request.getfixturevalue(which)
    masks = d["masks"]
    cov = masks.sum(1, keepdim=True)
    area = masks.sum((2, 3))
    excl = (masks & (cov == 1)).sum((2, 3))
    assert bool((area > 0).all())
    assert bool((excl >= min_excl * area).all())
    assert int(d["restarts"].sum()) == 0  # spec: restarts essentially never happen


# ---------------------------------------------------------------- variants

def test_variants_share_geometry(gray, rgb, rgbd):
    n = rgb["labels"].shape[0]
    for d in (rgb, rgbd):
        for key in ("labels", "masks", "boxes", "types"):
            assert torch.equal(d[key], gray[key][:n]), key
    assert torch.equal(rgb["colours"], rgbd["colours"])
    assert torch.equal(rgb["depths"], rgbd["depths"])
    assert torch.equal(rgb["images"], rgbd["images"][:, :3])
    assert torch.equal(rgb["visible_labels"], rgbd["visible_labels"])


def test_grayscale_pixels(gray):
    img = gray["images"]
    assert img.shape == (500, 1, 32, 32) and img.dtype == torch.float32
    assert torch.equal(img[:, 0], (gray["masks"].any(1)).to(torch.float32))


def _check_colour_depth(d, K):
    img, masks = d["images"], d["masks"]
    n, C = img.shape[:2]
    depths, colours, pal = d["depths"], d["colours"], d["palette"]
    # visible object = smallest depth among covering objects
    big = torch.where(masks, depths.view(n, K, 1, 1), torch.tensor(float("inf")))
    vis = big.argmin(1) + 1
    fg = masks.any(1)
    expect_vis = torch.where(fg, vis, torch.zeros_like(vis))
    assert torch.equal(d["visible_labels"].to(torch.int64), expect_vis)
    # pixel values
    vals = pal[colours]  # [n, K, 3]
    if C == 4:
        vals = torch.cat([vals, depths.unsqueeze(-1)], -1)
    idx = (expect_vis - 1).clamp(min=0)  # [n, S, S]
    expected = torch.gather(vals, 1, idx.view(n, -1, 1).expand(-1, -1, C)).view(n, *idx.shape[1:], C)
    expected = expected.permute(0, 3, 1, 2) * fg.unsqueeze(1)
    assert torch.equal(img, expected)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0


def test_rgbd_depth_and_colours(rgbd):
    K = 4
    _check_colour_depth(rgbd, K)
    exp = torch.arange(1, K + 1, dtype=torch.float32) / K
    for i in range(rgbd["depths"].shape[0]):
        assert torch.equal(rgbd["depths"][i].sort().values, exp)
        depth = rgbd["images"][i, 3]
        for k in range(K):
            vis = rgbd["visible_labels"][i] == k + 1
            assert torch.all(depth[vis] == rgbd["depths"][i, k])
    assert int(rgbd["colours"].min()) >= 0 and int(rgbd["colours"].max()) <= 4
    assert torch.all(rgbd["images"][:, 3][rgbd["labels"] == 0] == 0)


def test_rgb_occlusion(rgb):
    _check_colour_depth(rgb, 4)


def test_ten_shapes_colours_depths(ten):
    K = num_objects("10Shapes")
    assert K == 10 and ten["images"].shape == (200, 4, 48, 48)
    _check_colour_depth(ten, K)
    for i in range(ten["colours"].shape[0]):
        assert sorted(ten["colours"][i].tolist()) == list(range(K))
        assert len(set(ten["depths"][i].tolist())) == K
    # colours on the palette are unique
    assert len({tuple(c) for c in hsv_palette(10).tolist()}) == 10
    assert set(ten["types"].unique().tolist()) == {0, 1, 2}


def test_palette_q5():
    expected = torch.tensor(
        [[1, 0, 0], [0.8, 1, 0], [0, 1, 0.4], [0, 0.4, 1], [0.8, 0, 1]], dtype=torch.float32
    )
    assert torch.equal(hsv_palette(5), expected)


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("name", ["4Shapes_RGBD", "10Shapes"])
def test_determinism_and_prefix(name):
    a = generate_shapes(name, "val", 12)
    b = generate_shapes(name, "val", 12)
    c = generate_shapes(name, "val", 5)
    e = generate_shapes(name, "val", 7, start=5)
    for key in ("images", "labels"):
        assert torch.equal(a[key], b[key])
        assert torch.equal(a[key][:5], c[key])
        assert torch.equal(a[key][5:], e[key])
    other = generate_shapes(name, "test", 12)
    assert not torch.equal(a["labels"], other["labels"])
    seeded = generate_shapes(name, "val", 12, base_seed=1)
    assert not torch.equal(a["labels"], seeded["labels"])


def test_num_objects():
    assert [num_objects(n) for n in FOUR + ("10Shapes",)] == [4, 4, 4, 10]


def test_empty():
    d = generate_shapes("4Shapes", "train", 0)
    assert d["images"].shape == (0, 1, 32, 32) and d["labels"].shape == (0, 32, 32)


# ---------------------------------------------------------------- statistics

def test_four_shapes_statistics(gray):
    areas = gray["masks"].sum((2, 3)).to(torch.float64).mean(0).tolist()
    # spec: ~83 / 42 / 41 / 66 px; uniform L in 8..10 gives 81.7 / 41 / 41 / 67
    for got, want in zip(areas, [83.0, 42.0, 41.0, 66.0]):
        assert abs(got - want) < 3.5, areas
    lab = gray["labels"]
    fg = int((lab != 0).sum())
    ov = int((lab == -1).sum()) / fg
    assert 0.03 < ov < 0.08, ov


def test_ten_shapes_statistics(ten):
    lab = ten["labels"]
    fg = (lab != 0).to(torch.float64).mean().item()
    assert 0.28 < fg < 0.34, fg
    ov = (lab == -1).sum().item() / (lab != 0).sum().item()
    assert 0.02 < ov < 0.07, ov


# ---------------------------------------------------------------- cache

def test_npz_round_trip(tmp_path, monkeypatch):
    pytest.importorskip("numpy")
    d1 = load_shapes("4Shapes_RGBD", "val", 20, root=tmp_path)
    fname = shapes_file_name("4Shapes_RGBD", "val", 20)
    assert "20" in fname and fname.startswith("4Shapes_RGBD_depth_5_val")
    assert (tmp_path / fname).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [fname]  # no temp files left
    ref = generate_shapes("4Shapes_RGBD", "val", 20)
    mtime = (tmp_path / fname).stat().st_mtime_ns
    d2 = load_shapes("4Shapes_RGBD", "val", 20, root=tmp_path)
    assert (tmp_path / fname).stat().st_mtime_ns == mtime  # reused, not rewritten
    for d in (d1, d2):
        assert d["images"].dtype == torch.float32 and d["labels"].dtype == torch.int8
        assert torch.equal(d["images"], ref["images"])
        assert torch.equal(d["labels"], ref["labels"])
    assert d2["meta"]["name"] == "4Shapes_RGBD" and d2["meta"]["num_images"] == 20
    # different sizes do not collide; default root comes from PHASOR_DATA
    monkeypatch.setenv("PHASOR_DATA", str(tmp_path / "env"))
    d3 = load_shapes("4Shapes_RGBD", "val", 8)
    assert torch.equal(d3["labels"], ref["labels"][:8])
    assert (tmp_path / "env" / shapes_file_name("4Shapes_RGBD", "val", 8)).is_file()


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(name="5Shapes", split="train", num_images=1), "name"),
        (dict(name="4Shapes", split="training", num_images=1), "split"),
        (dict(name="4Shapes", split="train", num_images=-1), "num_images"),
        (dict(name="4Shapes", split="train", num_images=1.5), "num_images"),
    ],
)
def test_bad_arguments(kwargs, arg, tmp_path):
    with pytest.raises(ValueError, match=arg):
        generate_shapes(**kwargs)
    with pytest.raises(ValueError, match=arg):
        load_shapes(root=tmp_path, **kwargs)
    with pytest.raises(ValueError, match="name"):
        num_objects("nope")
