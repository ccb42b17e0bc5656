"""Benchmark cases of the wave-RNN recurrence (registered with phasor.bench).

Each case runs a whole sequence, forward or forward + backward (BPTT), with the issue's sizes:
the fused op against the official per-step loop (Conv1d with circular padding, eager), the same
loop with its step compiled by torch.compile, and torch.nn.RNN(relu) with as many hidden units
(c * n), the library RNN the paper's iRNN baseline runs on (cuDNN on a GPU).
"""
from __future__ import annotations

import torch

from ..bench.registry import Case, compiled, outputs_close, register, scaled_close
from . import ops, reference


def _step(h, u_t, weight, bias):
    return torch.relu(reference.circular_conv1d(h, weight, bias) + u_t)


def _loop(step):
    def run(u, weight, bias, h0):
        h, states = h0, []
        for u_t in u.unbind(0):  # not u[t]: each select's backward would write a zero tensor of u's size
            h = step(h, u_t, weight, bias)
            states.append(h)
        return torch.stack(states)
    return run


def _recurrence_case(device, T, B, c, n, backward):
    torch.manual_seed(0)
    kw = dict(device=device, dtype=torch.float32)
    u = torch.randn(T, B, c, n, **kw) * 0.5
    # near the paper's shift init, scaled so the states stay bounded over long sequences
    weight = torch.randn(c, c, 3, **kw) * (0.1 / (3 * c) ** 0.5)
    weight[torch.arange(c), torch.arange(c), 2] += 0.8
    bias = torch.randn(c, **kw) * 0.1
    h0 = torch.zeros(B, c, n, **kw)
    leaves = [u, weight, bias]
    rnn = torch.nn.RNN(n, c * n, nonlinearity="relu").to(device)  # input size n: same x-side cost order
    x_rnn = torch.randn(T, B, n, **kw)

    fused = lambda u, w, b, h: ops.wave_rnn(u, w, b, h, "relu")  # noqa: E731
    eager = _loop(_step)
    comp = _loop(compiled(_step))
    impls = {"fused": fused, "eager": eager, "compile": comp}
    if backward:
        for t in leaves:
            t.requires_grad_()
        cot = torch.randn(T, B, c, n, **kw)
        runners = {k: (lambda f=f: torch.autograd.grad(f(u, weight, bias, h0), leaves, cot)) for k, f in impls.items()}
        rnn_params = list(rnn.parameters())
        rnn_cot = torch.randn(T, B, c * n, **kw)
        runners["torch.nn.RNN"] = lambda: torch.autograd.grad(rnn(x_rnn)[0], rnn_params, rnn_cot)
    else:
        def no_grad(f):
            def run():
                with torch.no_grad():
                    f()
            return run
        runners = {k: no_grad(lambda f=f: f(u, weight, bias, h0)) for k, f in impls.items()}
        runners["torch.nn.RNN"] = no_grad(lambda: rnn(x_rnn))

    def check():
        # in float64: with relu, float32 runs of either implementation flip the activation mask of
        # near-zero pre-activations differently, which moves single gradient entries by O(1)
        args64 = [t.detach().double() for t in (u, weight, bias, h0)]
        with torch.no_grad():
            ok = outputs_close(fused(*args64), eager(*args64), rtol=1e-9, atol=1e-9)
        if not backward:
            return ok
        leaves64 = [t.requires_grad_() for t in args64[:3]]
        g1 = torch.autograd.grad(fused(*args64), leaves64, cot.double())
        g2 = torch.autograd.grad(eager(*args64), leaves64, cot.double())
        return ok and scaled_close(g1, g2, 1e-9)
    note = f"T={T} B={B} c={c} n={n}; compile = the loop with its step compiled; nn.RNN hidden {c * n}"
    return Case(runners, check, note=note)


def _last_state_case(device, T, B, c, n, K):
    """Training on h_T only (classification): the fused op keeping every state vs keeping every
    K-th and recomputing segments in the backward, against the eager and compiled loops."""
    torch.manual_seed(0)
    kw = dict(device=device, dtype=torch.float32)
    u = (torch.randn(T, B, c, n, **kw) * 0.5).requires_grad_()
    weight = torch.randn(c, c, 3, **kw) * (0.1 / (3 * c) ** 0.5)
    weight[torch.arange(c), torch.arange(c), 2] += 0.8
    weight.requires_grad_()
    bias = (torch.randn(c, **kw) * 0.1).requires_grad_()
    h0 = torch.zeros(B, c, n, **kw)
    leaves = [u, weight, bias]
    cot = torch.randn(B, c, n, **kw)
    impls = {
        "fused": lambda: ops.wave_rnn(u, weight, bias, h0, "relu", return_all=False),
        f"fused ckpt{K}": lambda: ops.wave_rnn(u, weight, bias, h0, "relu", return_all=False, checkpoint_every=K),
        "eager": lambda: _loop(_step)(u, weight, bias, h0)[-1],
        "compile": lambda comp=_loop(compiled(_step)): comp(u, weight, bias, h0)[-1],
    }
    runners = {k: (lambda f=f: torch.autograd.grad(f(), leaves, cot)) for k, f in impls.items()}

    def check():
        g_all = torch.autograd.grad(impls["fused"](), leaves, cot)
        g_ckpt = torch.autograd.grad(impls[f"fused ckpt{K}"](), leaves, cot)
        # Relative to each gradient's largest entry: dW and db sum T*B*n terms, and the segmented
        # backward adds them in another order (elementwise 1e-6 fails on small entries of dW on CUDA).
        return scaled_close(g_ckpt, g_all, 1e-6)
    note = f"T={T} B={B} c={c} n={n}; loss on h_T only; ckpt{K}: every {K}th state kept, segments recomputed"
    return Case(runners, check, note=note)


register("wave_rnn", "T784_B32_c16_n64_last_fwdbwd")(lambda d: _last_state_case(d, 784, 32, 16, 64, K=28))

SIZES = {"T256_B32_c16_n64": (256, 32, 16, 64), "T784_B32_c16_n64": (784, 32, 16, 64)}
for _name, _size in SIZES.items():
    register("wave_rnn", f"{_name}_fwd")(lambda d, s=_size: _recurrence_case(d, *s, backward=False))
    register("wave_rnn", f"{_name}_fwdbwd")(lambda d, s=_size: _recurrence_case(d, *s, backward=True))
