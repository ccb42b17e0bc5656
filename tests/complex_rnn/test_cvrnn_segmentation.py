"""cv-RNN segmentation: shapes generator, background mask, readout, metrics and the pipeline."""
import itertools

import pytest
import torch

from phasor.complex_rnn import data, metrics, readout, segment
from phasor.complex_rnn.segmentation import Config, run_layers


def test_templates_have_the_papers_pixel_counts():
    assert int(data.square_template().sum()) == 120
    down, up = data.triangle_template(False), data.triangle_template(True)
    assert int(down.sum()) == 72 and torch.equal(up, down.flip(0))
    assert down[0].all() and down[6:, 8].all() and not down[3:6, 8].any()  # solid top and tip, hollow middle
    assert int(down[4].sum()) == 6                      # a side row: 3 px each side


@pytest.mark.parametrize("k,background", [(2, 1024 - 192), (3, 1024 - 264)])
def test_generator_is_seeded_and_separates_objects(k, background):
    imgs, labs = data.shapes_dataset(k, 12, seed=3)
    again, labs2 = data.shapes_dataset(k, 4, seed=3, start=8)
    assert torch.equal(imgs[8:], again) and torch.equal(labs[8:], labs2)
    assert not torch.equal(data.shapes_dataset(k, 1, seed=4)[1][0], labs[0])
    for img, lab in zip(imgs, labs):
        assert int((lab == 0).sum()) == background
        assert torch.equal(img, torch.where(lab > 0, 1.0, -1.0).double())
        assert set(lab.unique().tolist()) == set(range(k + 1))
        # >= 1 px between objects: no object pixel has another object in its 3 x 3 neighbourhood
        for a, b in itertools.combinations(range(1, k + 1), 2):
            grown = torch.nn.functional.max_pool2d((lab == a)[None, None].float(), 3, 1, 1)[0, 0] > 0
            assert not (grown & (lab == b)).any()


def test_background_mask_is_correct_on_generated_images():
    for k in (2, 3):
        imgs, labs = data.shapes_dataset(k, 8, seed=1)
        for seed in (0, 5):
            background, _ = run_layers(imgs, seed, Config(window=(80, 81)))
            assert torch.equal(background, labs == 0)


def test_circular_mask_rule_agrees():
    imgs, labs = data.shapes_dataset(2, 4, seed=2)
    background, _ = run_layers(imgs, 0, Config(mask_rule="circular", window=(80, 81)))
    assert torch.equal(background, labs == 0)


def test_pixel_accuracy_is_permutation_invariant_and_keeps_background_fixed():
    true = torch.tensor([[0, 0, 1, 1], [2, 2, 0, 0]])
    assert metrics.pixel_accuracy(true, true) == 1.0
    swapped = torch.tensor([[0, 0, 2, 2], [1, 1, 0, 0]])
    assert metrics.pixel_accuracy(swapped, true) == 1.0
    bg_swapped = torch.tensor([[1, 1, 0, 0], [2, 2, 0, 0]])
    assert metrics.pixel_accuracy(bg_swapped, true) == pytest.approx(4 / 8)


def test_ari_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for n, ka, kb in [(50, 3, 3), (200, 2, 4), (7, 1, 2)]:
        a, b = torch.randint(0, ka, (n,), generator=g), torch.randint(0, kb, (n,), generator=g)
        assert metrics.adjusted_rand_index(a, b) == pytest.approx(sk.adjusted_rand_score(b.numpy(), a.numpy()),
                                                                  abs=1e-12)
    assert metrics.adjusted_rand_index(b, b) == 1.0


def test_spectral_projection_equals_the_dense_eigendecomposition():
    """Thin-SVD route == official route (eig of rho = P P^H / T, top 3 by |eigenvalue|, canonical phase)."""
    g = torch.Generator().manual_seed(0)
    ph = torch.cat([torch.randn(1, 41, generator=g) + 0.05 * torch.randn(30, 41, generator=g),
                    torch.randn(1, 41, generator=g) + 0.05 * torch.randn(20, 41, generator=g)])
    P = readout.unit_phasors(ph)
    rho = P @ P.conj().t() / 41
    lam, V = torch.linalg.eigh(rho)
    V = V[:, lam.abs().argsort(descending=True)[:3]]
    top = V.abs().argmax(0)
    V = V * (V[top, torch.arange(3)].conj() / V[top, torch.arange(3)].abs())
    torch.testing.assert_close(readout.spectral_projection(P), rho.real @ V.real)


def test_kmeans_finds_separated_clusters_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    pts = torch.cat([c + 0.3 * torch.randn(40, 2, generator=g) for c in centres])
    truth = torch.arange(3).repeat_interleave(40)
    lab = readout.kmeans(pts, 3, seed=1)
    assert metrics.adjusted_rand_index(lab, truth) == 1.0
    assert torch.equal(lab, readout.kmeans(pts, 3, seed=1))


def test_segment_reaches_the_papers_accuracy_on_a_few_images():
    """Bounded run (6 images x 2 seeds per dataset); the 200-image numbers come from the repro."""
    for k, target in ((2, 0.93), (3, 0.86)):
        imgs, labs = data.shapes_dataset(k, 6, seed=11)
        accs = [metrics.pixel_accuracy(p, t) for s in (0, 1) for p, t in zip(segment(imgs, k, seed=s), labs)]
        assert sum(accs) / len(accs) >= target, f"{k} objects: mean pixel accuracy {sum(accs) / len(accs):.3f}"


def test_fused_and_eager_pipelines_agree():
    imgs, _ = data.shapes_dataset(3, 2, seed=5)
    fused = segment(imgs, 3, seed=4, cfg=Config(dtype=torch.complex128))
    eager = segment(imgs, 3, seed=4, cfg=Config(dtype=torch.complex128, fused=False))
    assert torch.equal(fused, eager)
    single = segment(imgs[0], 3, seed=4, cfg=Config(dtype=torch.complex128))
    assert single.shape == (32, 32) and torch.equal(single, fused[0])


def test_natural_images_are_z_scored_and_segment():
    pytest.importorskip("PIL")
    imgs = data.natural_images(64)
    assert imgs.shape == (2, 64, 64)
    torch.testing.assert_close(imgs.mean((1, 2)), torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(imgs.std((1, 2)), torch.ones(2, dtype=torch.float64))
    labels = segment(imgs, 2, seed=0)
    assert labels.shape == (2, 64, 64) and set(labels.unique().tolist()) <= {0, 1, 2}
