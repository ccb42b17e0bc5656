"""Segment checkpointing for the fused wave-RNN when only the last state is used (classification).

Training on h_T normally keeps every state [T, B, c, n] for the backward (1.6 GB for the paper's
sMNIST at B=128). With ``checkpoint_every=K`` the forward runs the sequence as segments of K steps,
one fused call each, and keeps only the state entering each segment: T/K states. The backward
walks the segments in reverse: one fused forward recomputes a segment's K states, one fused
backward turns dL/dh at the segment's end into dL/dh at its start, and so on to h0. Peak memory is
(T/K + K) states instead of T (K near sqrt(T) minimises it); the cost is one extra forward.
"""
from __future__ import annotations

import torch

__all__ = ["last_state_checkpointed", "last_state_projected_checkpointed"]


def _segments(T: int, K: int):
    return [(s, min(s + K, T)) for s in range(0, T, K)]


class _Checkpointed(torch.autograd.Function):
    """h_T of wave_rnn_fwd, keeping only each segment's starting state."""

    @staticmethod
    def forward(ctx, u, weight, bias, h0, activation, K):
        starts, h = [], h0
        for s, e in _segments(u.shape[0], K):
            starts.append(h)
            h = torch.ops.phasor.wave_rnn_fwd(u[s:e], weight, bias, h, activation, False)
        ctx.activation, ctx.K = activation, K
        ctx.save_for_backward(u, weight, bias, *starts)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        u, weight, bias, *starts = ctx.saved_tensors
        grad_u = torch.empty_like(u)
        grad_w, grad_b = torch.zeros_like(weight), torch.zeros_like(bias)
        for (s, e), h_start in reversed(list(zip(_segments(u.shape[0], ctx.K), starts))):
            H = torch.ops.phasor.wave_rnn_fwd(u[s:e], weight, bias, h_start, ctx.activation, True)
            g_u, g_w, g_b, grad_h = torch.ops.phasor.wave_rnn_bwd(
                grad_h, H, h_start, weight, ctx.activation)
            grad_u[s:e] = g_u
            grad_w += g_w
            grad_b += g_b
        return grad_u, grad_w, grad_b, grad_h, None, None


class _ProjectedCheckpointed(torch.autograd.Function):
    """h_T of wave_rnn_proj_fwd (input projection inside), keeping only each segment's start."""

    @staticmethod
    def forward(ctx, x, V, bV, weight, bias, h0, activation, K):
        starts, h = [], h0
        for s, e in _segments(x.shape[0], K):
            starts.append(h)
            h = torch.ops.phasor.wave_rnn_proj_fwd(x[s:e], V, bV, weight, bias, h, activation, False)
        ctx.activation, ctx.K = activation, K
        ctx.save_for_backward(x, V, bV, weight, bias, *starts)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        x, V, bV, weight, bias, *starts = ctx.saved_tensors
        grad_x = torch.empty_like(x)
        grad_V, grad_bV = torch.zeros_like(V), torch.zeros_like(bV)
        grad_w, grad_b = torch.zeros_like(weight), torch.zeros_like(bias)
        for (s, e), h_start in reversed(list(zip(_segments(x.shape[0], ctx.K), starts))):
            H = torch.ops.phasor.wave_rnn_proj_fwd(x[s:e], V, bV, weight, bias, h_start, ctx.activation, True)
            g_x, g_V, g_bV, g_w, g_b, grad_h = torch.ops.phasor.wave_rnn_proj_bwd(
                grad_h, H, x[s:e], V, h_start, weight, ctx.activation)
            grad_x[s:e] = g_x
            grad_V += g_V
            grad_bV += g_bV
            grad_w += g_w
            grad_b += g_b
        return grad_x, grad_V, grad_bV, grad_w, grad_b, grad_h, None, None


def last_state_checkpointed(u, weight, bias, h0, activation: str, K: int) -> torch.Tensor:
    return _Checkpointed.apply(u, weight, bias, h0, activation, K)


def last_state_projected_checkpointed(x, V, bV, weight, bias, h0, activation: str, K: int) -> torch.Tensor:
    return _ProjectedCheckpointed.apply(x, V, bV, weight, bias, h0, activation, K)
