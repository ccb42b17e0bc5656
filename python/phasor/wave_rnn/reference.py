"""Plain-PyTorch wave-RNN recurrence: the test oracle and the benchmark's eager baseline.

It mirrors the official cell (akandykeller/Wave_RNNs, ``conv_rnn_model.py``): per time step, a
Conv1d with circular padding over the ring of n positions (a cross-correlation with c input and c
output channels and an odd kernel f), plus the already-projected input, then the activation:

    h_t = act(Conv1d_circular(h_{t-1}; W, b) + u_t),   W [c, c, f],  b [c],  h [B, c, n]

``wave_rnn_ref`` is the loop the official code runs; ``circular_conv_ref`` is the same convolution
written with rolls, valid for any ring length (F.pad's circular mode needs n >= f // 2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("relu", "tanh", "identity")


def activation_fn(name: str):
    if name == "relu":
        return torch.relu
    if name == "tanh":
        return torch.tanh
    if name == "identity":
        return lambda a: a
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def circular_conv_ref(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """a[b, o, j] = bias[o] + sum_{i,k} W[o, i, k] h[b, i, (j + k - f//2) mod n], for any n >= 1."""
    f = weight.shape[2]
    p = f // 2
    out = bias[None, :, None].to(h.dtype).expand(h.shape[0], -1, h.shape[2]).clone()
    for k in range(f):
        shifted = torch.roll(h, shifts=p - k, dims=2)  # shifted[..., j] = h[..., (j + k - p) mod n]
        out = out + torch.einsum("oi,bij->boj", weight[:, :, k].to(h.dtype), shifted)
    return out


def circular_conv1d(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The official step's convolution: nn.Conv1d(c, c, f, padding=f//2, padding_mode='circular')."""
    p = weight.shape[2] // 2
    if p > h.shape[2]:  # F.pad cannot wrap more than once around a tiny ring
        return circular_conv_ref(h, weight, bias)
    return F.conv1d(F.pad(h, (p, p), mode="circular"), weight.to(h.dtype), bias.to(h.dtype))


def wave_rnn_ref(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, h0: torch.Tensor | None = None,
                 activation: str = "relu", return_all: bool = True) -> torch.Tensor:
    """u [T, B, c, n] -> H [T, B, c, n] (return_all) or h_T [B, c, n]; the official per-step loop."""
    act = activation_fn(activation)
    h = torch.zeros_like(u[0]) if h0 is None else h0
    if u.shape[0] == 0:
        return u.clone() if return_all else h.clone()
    states = []
    for t in range(u.shape[0]):
        h = act(circular_conv1d(h, weight, bias) + u[t])
        states.append(h)
    return torch.stack(states) if return_all else h


def project_input_ref(x: torch.Tensor, V: torch.Tensor, bV: torch.Tensor, c: int, n: int) -> torch.Tensor:
    """The official encoder Wx = Linear(n_inp -> c*n): x [T, B, n_inp] -> u [T, B, c, n] (channel-major)."""
    return F.linear(x, V.to(x.dtype), bV.to(x.dtype)).reshape(x.shape[0], x.shape[1], c, n)


def wave_rnn_projected_ref(x, V, bV, weight, bias, h0, activation: str = "relu", return_all: bool = True):
    """The recurrence with the input projection inside: u_t = x_t V^T + bV. h0 [B, c, n] is required
    here (it carries c and n)."""
    u = project_input_ref(x, V, bV, h0.shape[1], h0.shape[2])
    return wave_rnn_ref(u, weight, bias, h0, activation, return_all)
