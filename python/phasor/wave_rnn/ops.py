"""Fused wave-RNN recurrence ops: fake kernels, autograd, and the public wrappers.

The kernels live in ``csrc/wave_rnn``; their math is :mod:`phasor.wave_rnn.reference`, which is
also the test oracle. One call runs the whole sequence (forward) or the whole backpropagation
through time (backward); the backward keeps only the hidden states.
"""
from __future__ import annotations

import torch

from .checkpointed import last_state_checkpointed, last_state_projected_checkpointed
from .last_state import last_state, last_state_projected

__all__ = ["wave_rnn", "wave_rnn_projected"]

ACTIVATIONS = ("relu", "tanh", "identity")
MAX_PROJ_INPUTS = 16  # csrc/wave_rnn/wave_rnn.h: kMaxProjInputs
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _param_dtype(dtype):
    return torch.float32 if dtype in _LOW_PRECISION else dtype


# ---------------------------------------------------------------------------- fake kernels
def _check_common(ref, T, B, c, n, weight, bias, h0, activation):
    """Mirror of wave_rnn.h's checks (the fake kernel is what runs on meta tensors and in compile)."""
    torch._check(activation in ACTIVATIONS, lambda: f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    torch._check(weight.dim() == 3 and weight.shape[0] == c and weight.shape[1] == c,
                 lambda: f"weight must be [c, c, f] with c = {c}, got {tuple(weight.shape)}")
    torch._check(weight.shape[2] % 2 == 1, lambda: f"weight's kernel size f must be odd, got {weight.shape[2]}")
    torch._check(tuple(bias.shape) == (c,), lambda: f"bias must be [{c}], got {tuple(bias.shape)}")
    torch._check(tuple(h0.shape) == (B, c, n), lambda: f"h0 must be [{B}, {c}, {n}], got {tuple(h0.shape)}")
    want = _param_dtype(ref.dtype)
    for name, t in (("weight", weight), ("bias", bias)):
        torch._check(t.dtype == want, lambda: f"{name} must have dtype {want}, got {t.dtype}")
        torch._check(t.device == ref.device, lambda: f"{name} is on {t.device}, the inputs on {ref.device}")
    torch._check(h0.dtype == ref.dtype, lambda: f"h0 must have dtype {ref.dtype}, got {h0.dtype}")


@torch.library.register_fake("phasor::wave_rnn_fwd")
def _fwd_fake(u, weight, bias, h0, activation, return_all):
    torch._check(u.dim() == 4, lambda: f"u must be [T, B, c, n], got {tuple(u.shape)}")
    T, B, c, n = u.shape
    _check_common(u, T, B, c, n, weight, bias, h0, activation)
    return u.new_empty((T, B, c, n) if return_all else (B, c, n))


@torch.library.register_fake("phasor::wave_rnn_proj_fwd")
def _proj_fwd_fake(x, V, bV, weight, bias, h0, activation, return_all):
    torch._check(x.dim() == 3, lambda: f"x must be [T, B, n_inp], got {tuple(x.shape)}")
    torch._check(h0.dim() == 3, lambda: f"h0 must be [B, c, n], got {tuple(h0.shape)}")
    T, B, n_inp = x.shape
    c, n = h0.shape[1], h0.shape[2]
    torch._check(1 <= n_inp <= MAX_PROJ_INPUTS, lambda: f"x must have 1 to {MAX_PROJ_INPUTS} features, got {n_inp}")
    _check_common(x, T, B, c, n, weight, bias, h0, activation)
    torch._check(tuple(V.shape) == (c * n, n_inp), lambda: f"V must be [{c * n}, {n_inp}], got {tuple(V.shape)}")
    torch._check(tuple(bV.shape) == (c * n,), lambda: f"bV must be [{c * n}], got {tuple(bV.shape)}")
    return x.new_empty((T, B, c, n) if return_all else (B, c, n))


def _check_state_grad(grad_H, H):
    # dL/dH for every state, or dL/dh_T alone (training on the last state)
    torch._check(grad_H.shape == H.shape or grad_H.shape == H.shape[1:],
                 lambda: "grad_H must have the shape of H [T, B, c, n] or of its last state [B, c, n]")


@torch.library.register_fake("phasor::wave_rnn_bwd")
def _bwd_fake(grad_H, H, h0, weight, activation):
    _check_state_grad(grad_H, H)
    return torch.empty_like(H), torch.empty_like(weight), weight.new_empty((weight.shape[0],)), torch.empty_like(h0)


@torch.library.register_fake("phasor::wave_rnn_proj_bwd")
def _proj_bwd_fake(grad_H, H, x, V, h0, weight, activation):
    _check_state_grad(grad_H, H)
    return (torch.empty_like(x), torch.empty_like(V), V.new_empty((V.shape[0],)), torch.empty_like(weight),
            weight.new_empty((weight.shape[0],)), torch.empty_like(h0))


# ---------------------------------------------------------------------------- autograd
# With return_all the output *is* every state, which is all the backward needs. With only h_T
# returned (direct op calls; when a gradient is needed the wrappers below go through last_state.py,
# which keeps the states instead), the states are recomputed in the backward by one more fused
# forward, and the backward starts from dL/dh_T alone.
def _grad_states(ctx, grad_out, recompute):
    if ctx.return_all:
        return grad_out.contiguous(), ctx.saved_tensors[-1]
    return grad_out.contiguous(), recompute()  # dL/dh_T alone: the backward ops take it as it is


def _fwd_setup(ctx, inputs, output):
    u, weight, bias, h0, activation, return_all = inputs
    ctx.activation, ctx.return_all, ctx.T = activation, return_all, u.shape[0]
    ctx.save_for_backward(u if not return_all else None, weight, bias, h0, output if return_all else None)


def _fwd_backward(ctx, grad_out):
    u, weight, bias, h0, _ = ctx.saved_tensors
    if ctx.T == 0:  # the output is h0 itself (last state) or empty
        return None, None, None, (None if ctx.return_all else grad_out), None, None
    grad_H, H = _grad_states(
        ctx, grad_out, lambda: torch.ops.phasor.wave_rnn_fwd(u, weight, bias, h0, ctx.activation, True))
    g_u, g_w, g_b, g_h0 = torch.ops.phasor.wave_rnn_bwd(grad_H, H, h0, weight, ctx.activation)
    return g_u, g_w, g_b, g_h0, None, None


def _proj_setup(ctx, inputs, output):
    x, V, bV, weight, bias, h0, activation, return_all = inputs
    ctx.activation, ctx.return_all, ctx.T = activation, return_all, x.shape[0]
    ctx.save_for_backward(x, V, bV, weight, bias, h0, output if return_all else None)


def _proj_backward(ctx, grad_out):
    x, V, bV, weight, bias, h0, _ = ctx.saved_tensors
    if ctx.T == 0:
        return None, None, None, None, None, (None if ctx.return_all else grad_out), None, None
    grad_H, H = _grad_states(
        ctx, grad_out,
        lambda: torch.ops.phasor.wave_rnn_proj_fwd(x, V, bV, weight, bias, h0, ctx.activation, True))
    g_x, g_V, g_bV, g_w, g_b, g_h0 = torch.ops.phasor.wave_rnn_proj_bwd(grad_H, H, x, V, h0, weight, ctx.activation)
    return g_x, g_V, g_bV, g_w, g_b, g_h0, None, None


torch.library.register_autograd("phasor::wave_rnn_fwd", _fwd_backward, setup_context=_fwd_setup)
torch.library.register_autograd("phasor::wave_rnn_proj_fwd", _proj_backward, setup_context=_proj_setup)


# ---------------------------------------------------------------------------- public wrappers
def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _checkpoint_segments(checkpoint_every, return_all, T) -> int | None:
    """Validated segment length, or None when the plain fused path applies."""
    if checkpoint_every is None:
        return None
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive int (steps per segment), got {checkpoint_every!r}")
    if return_all:
        raise ValueError("checkpoint_every needs return_all=False: with every state returned, the states "
                         "are the output and there is nothing to save by recomputing them")
    return checkpoint_every if T > 0 else None


def wave_rnn(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, h0: torch.Tensor | None = None,
             activation: str = "relu", return_all: bool = True, checkpoint_every: int | None = None) -> torch.Tensor:
    """Whole-sequence wave-RNN recurrence in one fused call (forward and backward).

    ``h_t = act(Conv1d_circular(h_{t-1}; weight, bias) + u_t)`` for t = 1..T, the official cell
    (a cross-correlation over a ring of n positions, c channels in and out, odd kernel f).

    Args:
        u: ``[T, B, c, n]`` projected input ``V x_t + b_V`` per step (channel-major ring).
        weight: ``[c, c, f]`` circular-convolution weight (the official ``Conv1d`` weight), f odd.
        bias: ``[c]`` its bias.
        h0: ``[B, c, n]`` initial state (zeros when None).
        activation: ``"relu"`` (the paper's), ``"tanh"`` or ``"identity"``.
        return_all: every state ``[T, B, c, n]`` or only the last ``[B, c, n]``.
        checkpoint_every: with ``return_all=False`` and a gradient needed, keep only every K-th
            state and recompute each K-step segment in the backward (memory T/K + K states instead
            of T, for one extra forward; K near sqrt(T) is the smallest). None keeps every state.

    Dtypes: float32/float64 on CPU; float32, float64, and float16/bfloat16 storage with float32
    state and accumulation on CUDA (weight and bias float32 then).
    """
    if h0 is None:
        h0 = u.new_zeros((u.shape[1], u.shape[2], u.shape[3])) if u.dim() == 4 else u.new_zeros(())
    K = _checkpoint_segments(checkpoint_every, return_all, u.shape[0] if u.dim() == 4 else 0)
    if not return_all and u.dim() == 4 and u.shape[0] > 0 and _needs_grad(u, weight, bias, h0):
        if K is not None:
            return last_state_checkpointed(u, weight, bias, h0, activation, K)
        # training on h_T: keep the states the backward needs instead of recomputing them
        return last_state(u, weight, bias, h0, activation)
    return torch.ops.phasor.wave_rnn_fwd(u, weight, bias, h0, activation, return_all)


def wave_rnn_projected(x: torch.Tensor, V: torch.Tensor, bV: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor, h0: torch.Tensor | None = None, activation: str = "relu",
                       return_all: bool = True, checkpoint_every: int | None = None) -> torch.Tensor:
    """The wave-RNN recurrence with the input projection fused in, for tiny inputs.

    ``u_t = x_t V^T + bV`` (the official ``Wx = Linear(n_inp, c*n)``, viewed as ``[B, c, n]``) is
    computed inside the kernel, so the ``[T, B, c, n]`` input tensor never exists.

    Args:
        x: ``[T, B, n_inp]`` raw inputs, 1 <= n_inp <= 16 (project larger inputs with one matmul
            and call :func:`wave_rnn`).
        V: ``[c*n, n_inp]`` encoder weight; bV: ``[c*n]`` its bias.
        weight, bias, h0, activation, return_all, checkpoint_every: as :func:`wave_rnn`
            (c = weight.shape[0], n = V.shape[0] // c).
    """
    if h0 is None:
        c = weight.shape[0]
        h0 = x.new_zeros((x.shape[1], c, V.shape[0] // max(c, 1)))
    K = _checkpoint_segments(checkpoint_every, return_all, x.shape[0] if x.dim() == 3 else 0)
    if not return_all and x.dim() == 3 and x.shape[0] > 0 and _needs_grad(x, V, bV, weight, bias, h0):
        if K is not None:
            return last_state_projected_checkpointed(x, V, bV, weight, bias, h0, activation, K)
        return last_state_projected(x, V, bV, weight, bias, h0, activation)
    return torch.ops.phasor.wave_rnn_proj_fwd(x, V, bV, weight, bias, h0, activation, return_all)
