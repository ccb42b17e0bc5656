"""Training on the last state h_T only (classification), keeping every state for the backward.

Selecting ``H[-1]`` from the all-states output would make autograd build dL/dH as a [T, B, c, n]
tensor of zeros with one step filled: 100 MB at T=784, B=32, c=16, n=64, and on CPU about a third
of the fused forward + backward. The fused backward ops take dL/dh_T [B, c, n] alone instead (the
CPU kernel reads it as it is; on CUDA the op still expands it on the device, one memset).
(``checkpointed.py`` is the low-memory alternative: it keeps every K-th state and recomputes.)
"""
from __future__ import annotations

import torch

__all__ = ["last_state", "last_state_projected"]


class _LastState(torch.autograd.Function):
    """h_T of wave_rnn_fwd; the backward starts from dL/dh_T."""

    @staticmethod
    def forward(ctx, u, weight, bias, h0, activation):
        H = torch.ops.phasor.wave_rnn_fwd(u, weight, bias, h0, activation, True)
        ctx.activation = activation
        ctx.save_for_backward(weight, h0, H)
        return H[-1].clone()  # not a view: H is saved, and a caller's in-place edit must not reach it

    @staticmethod
    def backward(ctx, grad_h):
        weight, h0, H = ctx.saved_tensors
        g_u, g_w, g_b, g_h0 = torch.ops.phasor.wave_rnn_bwd(grad_h.contiguous(), H, h0, weight, ctx.activation)
        return g_u, g_w, g_b, g_h0, None


class _ProjectedLastState(torch.autograd.Function):
    """h_T of wave_rnn_proj_fwd (input projection inside); the backward starts from dL/dh_T."""

    @staticmethod
    def forward(ctx, x, V, bV, weight, bias, h0, activation):
        H = torch.ops.phasor.wave_rnn_proj_fwd(x, V, bV, weight, bias, h0, activation, True)
        ctx.activation = activation
        ctx.save_for_backward(x, V, weight, h0, H)
        return H[-1].clone()

    @staticmethod
    def backward(ctx, grad_h):
        x, V, weight, h0, H = ctx.saved_tensors
        grads = torch.ops.phasor.wave_rnn_proj_bwd(grad_h.contiguous(), H, x, V, h0, weight, ctx.activation)
        return (*grads, None)


def last_state(u, weight, bias, h0, activation: str) -> torch.Tensor:
    return _LastState.apply(u, weight, bias, h0, activation)


def last_state_projected(x, V, bV, weight, bias, h0, activation: str) -> torch.Tensor:
    return _ProjectedLastState.apply(x, V, bV, weight, bias, h0, activation)
