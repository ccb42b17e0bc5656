"""Task generators: the official layouts (spec section 3.1-3.2), seeds, and the digits stand-in."""
import pytest
import torch
import torch.nn.functional as F

from phasor.wave_rnn import tasks


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- copy
@pytest.mark.parametrize("T", [20, 50])
def test_copy_layout(T):
    x, y = tasks.copy_batch(7, T, gen(0))
    L = T + 10
    assert x.shape == (L, 7, 10) and x.dtype == torch.float32
    assert y.shape == (L, 7) and y.dtype == torch.int64
    assert torch.equal(x.sum(-1), torch.ones(L, 7))  # one-hot at every step
    tokens = x.argmax(-1)
    data = tokens[:10]
    assert ((data >= 1) & (data <= 8)).all()
    assert (tokens[T - 1] == 9).all() and (tokens[-11] == 9).all()  # delimiter: 11th step from the end
    blank = torch.ones(L, dtype=torch.bool)
    blank[:10] = False
    blank[T - 1] = False
    assert (tokens[blank] == 0).all()
    assert torch.equal(y[-10:], data) and (y[:-10] == 0).all()


def test_copy_short_sequence_overwrites_last_data_token():
    # official quirk: for T' = 10 the delimiter lands on step 9, the 10th data token, and the
    # target copies the overwritten input
    x, y = tasks.copy_batch(5, 10, gen(1))
    tokens = x.argmax(-1)
    assert (tokens[9] == 9).all() and (y[-1] == 9).all()
    assert torch.equal(y[-10:], tokens[:10])


def test_copy_tokens_cover_one_to_eight_uniformly():
    _, y = tasks.copy_batch(4000, 20, gen(2))
    counts = torch.bincount(y[-10:].flatten(), minlength=10)
    assert counts[0] == 0 and counts[9] == 0
    assert (counts[1:9].float() / counts.sum() - 1 / 8).abs().max() < 0.01


def test_copy_raw_tokens_and_bad_length():
    x, y = tasks.copy_batch(3, 15, gen(3), one_hot=False)
    assert x.shape == (25, 3, 1) and torch.equal(x[..., 0].long(), tasks.copy_batch(3, 15, gen(3))[0].argmax(-1))
    with pytest.raises(ValueError, match="T"):
        tasks.copy_batch(3, 0)


def test_copy_loss_is_cross_entropy_over_batch_size():
    x, y = tasks.copy_batch(6, 12, gen(4))
    logits = torch.randn(22, 6, 10, generator=gen(5))
    expected = F.cross_entropy(logits.permute(1, 2, 0), y.t()) / 6
    torch.testing.assert_close(tasks.copy_loss(logits, y), expected)
    perfect = F.one_hot(y, 10).float() * 50
    assert tasks.copy_loss(perfect, y) < 1e-20
    assert tasks.copy_recall_accuracy(perfect, y) == 1.0
    wrong = perfect.clone()
    wrong[-1] = F.one_hot((y[-1] % 8) + 1, 10).float() * 50  # wrong last token everywhere
    assert tasks.copy_recall_accuracy(wrong, y) == pytest.approx(0.9)


# ---------------------------------------------------------------------------- adding
@pytest.mark.parametrize("T", [9, 200])
def test_adding_layout(T):
    x, y = tasks.adding_batch(T, 64, gen(6))
    assert x.shape == (T, 64, 2) and y.shape == (64,)
    values, marks = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert torch.equal(marks.sum(0), torch.full((64,), 2.0))
    half = T // 2  # official int(T / 2)
    assert torch.equal(marks[:half].sum(0), torch.ones(64)) and torch.equal(marks[half:].sum(0), torch.ones(64))
    torch.testing.assert_close(y, (values * marks).sum(0))


def test_adding_marks_cover_each_half():
    x, _ = tasks.adding_batch(10, 5000, gen(7))
    counts = x[..., 1].sum(1)
    assert (counts > 0).all()  # every step of both halves gets marked sometimes
    torch.testing.assert_close(counts[:5] / 5000, torch.full((5,), 0.2), atol=0.03, rtol=0)


@pytest.mark.parametrize("make", [lambda g: tasks.adding_batch(30, 8, g), lambda g: tasks.copy_batch(8, 30, g)])
def test_generators_are_deterministic_by_seed(make):
    a, b, c = make(gen(11)), make(gen(11)), make(gen(12))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0])


# ---------------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    return datasets.load_digits()


def test_digits_split_scaling_and_row_order(digits):
    d = tasks.load_digits_sequences(split_seed=0)
    sizes = [d[s][0].shape[1] for s in ("train", "val", "test")]
    assert sizes == [1297, 250, 250]
    images = torch.as_tensor(digits.data, dtype=torch.float32) / 16
    index = {tuple(img.tolist()): i for i, img in enumerate(images)}  # duplicates keep the last index
    seen = []
    for s in ("train", "val", "test"):
        x, y = d[s]
        assert x.shape[0] == 64 and x.shape[2] == 1 and y.dtype == torch.int64
        assert x.min() >= 0 and x.max() == 1.0
        # each sequence is one image read row by row: find it in the data set
        idx = [index[tuple(seq.tolist())] for seq in x[:, :, 0].t()]
        assert torch.equal(torch.as_tensor(digits.target)[idx], y)
        seen.append(set(idx))
    assert torch.equal(d["perm"], torch.arange(64))
    assert len(seen[0] | seen[1] | seen[2]) >= 1780  # disjoint up to duplicate images in the data


def test_digits_split_is_seeded():
    pytest.importorskip("sklearn")
    a, b, c = (tasks.load_digits_sequences(split_seed=s) for s in (3, 3, 4))
    assert torch.equal(a["test"][0], b["test"][0]) and torch.equal(a["test"][1], b["test"][1])
    assert not torch.equal(a["test"][1], c["test"][1])


def test_permuted_digits_fixed_by_seed():
    pytest.importorskip("sklearn")
    row = tasks.load_digits_sequences(split_seed=0)
    p1, p2, p3 = (tasks.load_digits_sequences(split_seed=0, perm_seed=s) for s in (5, 5, 6))
    assert torch.equal(p1["perm"], p2["perm"]) and not torch.equal(p1["perm"], p3["perm"])
    assert torch.equal(p1["perm"].sort().values, torch.arange(64))
    assert torch.equal(p1["perm"], tasks.digits_permutation(5))
    for s in ("train", "test"):
        assert torch.equal(p1[s][0], row[s][0][p1["perm"]])  # the time axis is permuted
        assert torch.equal(p1[s][1], row[s][1])             # the samples are the same
