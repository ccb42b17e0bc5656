"""Segment checkpointing of the fused wave-RNN (h_T only): same gradients, fewer saved states."""
import pytest
import torch

from phasor.wave_rnn import WaveRNN, ops

T, B, C, N = 23, 3, 4, 12


def _inputs(seed=0, dtype=torch.float64, projected=False):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=dtype) * scale).requires_grad_()  # noqa: E731
    d = dict(weight=rand(C, C, 3, scale=0.3), bias=rand(C, scale=0.3), h0=rand(B, C, N))
    if projected:
        d.update(x=rand(T, B, 2), V=rand(C * N, 2), bV=rand(C * N, scale=0.3))
    else:
        d["u"] = rand(T, B, C, N)
    return d


def _last_state(d, act, K):
    if "x" in d:
        return ops.wave_rnn_projected(d["x"], d["V"], d["bV"], d["weight"], d["bias"], d["h0"], act,
                                      return_all=False, checkpoint_every=K)
    return ops.wave_rnn(d["u"], d["weight"], d["bias"], d["h0"], act, return_all=False, checkpoint_every=K)


@pytest.mark.parametrize("projected", [False, True])
@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("K", [1, 5, 8, T, T + 4])
def test_checkpointed_gradients_equal_plain(K, act, projected):
    d = _inputs(projected=projected)
    leaves = list(d.values())
    cot = torch.randn(B, C, N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    h_plain = _last_state(d, act, None)
    h_ckpt = _last_state(d, act, K)
    torch.testing.assert_close(h_ckpt, h_plain, rtol=0, atol=0)
    g_plain = torch.autograd.grad(h_plain, leaves, cot)
    g_ckpt = torch.autograd.grad(h_ckpt, leaves, cot)
    for name, a, b in zip(d, g_ckpt, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"grad {name}: {m}")


def _saved_state_elements(fn):
    """Elements of the tensors autograd saves for the backward while fn runs."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(sizes)


def test_checkpointing_saves_only_segment_starts():
    d = _inputs(dtype=torch.float32)
    K = 5
    ckpt = _saved_state_elements(lambda: _last_state(d, "relu", K))
    params = sum(d[k].numel() for k in ("u", "weight", "bias"))
    n_segments = -(-T // K)
    assert ckpt == params + n_segments * B * C * N  # the inputs and one state per segment start
    assert n_segments * B * C * N < T * B * C * N // 4  # vs the plain path's every state (ops.py)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_checkpoint_every(bad):
    d = _inputs()
    with pytest.raises(ValueError, match="checkpoint_every"):
        _last_state(d, "relu", bad)


def test_checkpoint_every_needs_last_state_only():
    d = _inputs()
    with pytest.raises(ValueError, match="return_all=False"):
        ops.wave_rnn(d["u"], d["weight"], d["bias"], d["h0"], "relu", return_all=True, checkpoint_every=4)


def test_model_with_checkpointing_compiles_fullgraph():
    torch.manual_seed(0)
    model = WaveRNN(n_inp=1, n=12, c=2, n_out=3, checkpoint_every=4)
    x = torch.randn(17, 5, 1)
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)
