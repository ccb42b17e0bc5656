"""Fused cv-RNN recurrence ops: fake kernels, the forward-only autograd guard, and the wrappers.

The kernels live in ``csrc/complex_rnn``; their math is :mod:`phasor.complex_rnn.reference`, which
is also the test oracle. One call runs the whole S-step recurrence over a batch of images and keeps
only the requested window of samples. The network has fixed weights, so the ops are forward-only:
asking for a gradient raises a clear error instead of returning a silently wrong one.
"""
from __future__ import annotations

import math

import torch

__all__ = ["cvrnn_run", "cvrnn_run_dense"]

_REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64}


# ---------------------------------------------------------------------------- fake kernels
def _check_nodes(x0, omega, mask):
    """Mirror of complex_rnn.h's checks (the fake kernel runs on meta tensors and in compile)."""
    torch._check(x0.dtype in _REAL_OF, lambda: f"x0 must be a complex64 or complex128 tensor, got {x0.dtype}")
    torch._check(omega.shape == x0.shape, lambda: f"omega must have shape {tuple(x0.shape)}, got {tuple(omega.shape)}")
    torch._check(omega.dtype == _REAL_OF[x0.dtype], lambda: f"omega must have dtype {_REAL_OF[x0.dtype]}, got {omega.dtype}")
    if mask is not None:
        torch._check(mask.shape == x0.shape, lambda: f"mask must have shape {tuple(x0.shape)}, got {tuple(mask.shape)}")
        torch._check(mask.dtype == torch.bool, lambda: f"mask must have dtype torch.bool, got {mask.dtype}")


def _check_window(steps, start, stop):
    torch._check(steps >= 0, lambda: f"steps must be >= 0, got {steps}")
    torch._check(0 <= start <= stop <= steps + 1,
                 lambda: f"the save window must satisfy 0 <= save_start <= save_stop <= steps + 1, got {start}, {stop}")


def _out_dtype(x0, save_phase):
    return _REAL_OF[x0.dtype] if save_phase else x0.dtype


@torch.library.register_fake("phasor::cvrnn_run")
def _run_fake(x0, omega, mask, alpha, sigma, steps, renorm, save_start, save_stop, save_phase):
    torch._check(x0.dim() == 3, lambda: f"x0 must be [B, H, W], got {tuple(x0.shape)}")
    _check_nodes(x0, omega, mask)
    torch._check(math.isfinite(sigma) and sigma > 0, lambda: f"sigma must be a finite number > 0, got {sigma}")
    _check_window(steps, save_start, save_stop)
    B, H, W = x0.shape
    return x0.new_empty((B, save_stop - save_start, H, W), dtype=_out_dtype(x0, save_phase))


@torch.library.register_fake("phasor::cvrnn_run_dense")
def _run_dense_fake(x0, omega, K, mask, steps, renorm, save_start, save_stop, save_phase):
    torch._check(x0.dim() == 2, lambda: f"x0 must be [B, n], got {tuple(x0.shape)}")
    _check_nodes(x0, omega, mask)
    n = x0.shape[1]
    torch._check(K.shape == (n, n), lambda: f"K must have shape ({n}, {n}), got {tuple(K.shape)}")
    _check_window(steps, save_start, save_stop)
    return x0.new_empty((x0.shape[0], save_stop - save_start, n), dtype=_out_dtype(x0, save_phase))


# ---------------------------------------------------------------------------- forward-only guard
def _forward_only(name):
    def backward(ctx, grad):
        raise RuntimeError(f"phasor::{name} is forward-only (the cv-RNN has fixed weights): it has no gradient. "
                           f"Use phasor.complex_rnn.reference for a differentiable run.")
    return backward


def _no_context(ctx, inputs, output):
    pass


torch.library.register_autograd("phasor::cvrnn_run", _forward_only("cvrnn_run"), setup_context=_no_context)
torch.library.register_autograd("phasor::cvrnn_run_dense", _forward_only("cvrnn_run_dense"),
                                setup_context=_no_context)


# ---------------------------------------------------------------------------- public wrappers
def cvrnn_run(x0: torch.Tensor, omega: torch.Tensor, alpha: float, sigma: float, steps: int,
              mask: torch.Tensor | None = None, renorm: bool = True, save_start: int = 0,
              save_stop: int | None = None, save_phase: bool = False) -> torch.Tensor:
    """The whole S-step cv-RNN run over a batch of images in one fused call.

    ``X <- m * (i * omega * X + alpha * G_r (m * X) G_c^T)`` for ``steps`` updates, with the Gaussian
    sheet ``G_a[p, q] = exp(-((p - q) / N_a)^2 / (2 sigma^2))`` (self-loop, no wrap), and with
    ``renorm`` each image divided by its max |X| after every update (phases unchanged).

    Args:
        x0: ``[B, H, W]`` complex64 or complex128 initial state.
        omega: ``[B, H, W]`` natural frequencies (the pixel intensities), float32 / float64 to match.
        alpha, sigma: coupling strength and width (sigma > 0, in units of the image side).
        steps: number of updates S >= 0.
        mask: optional ``[B, H, W]`` bool, True where a node keeps its coupling (layer 2's foreground).
        save_start, save_stop: the saved samples t in [save_start, save_stop), sample t being the
            state after t updates (default: all S + 1 samples).
        save_phase: return phases (real dtype) instead of complex states.

    Returns ``[B, save_stop - save_start, H, W]``. CPU: complex64 and complex128; CUDA: complex64.
    """
    save_stop = steps + 1 if save_stop is None else save_stop
    return torch.ops.phasor.cvrnn_run(x0, omega, mask, float(alpha), float(sigma), int(steps), bool(renorm),
                                      int(save_start), int(save_stop), bool(save_phase))


def cvrnn_run_dense(x0: torch.Tensor, omega: torch.Tensor, K: torch.Tensor, steps: int,
                    mask: torch.Tensor | None = None, renorm: bool = True, save_start: int = 0,
                    save_stop: int | None = None, save_phase: bool = False) -> torch.Tensor:
    """The same run with any real coupling matrix ``K [n, n]`` over ``x0 [B, n]`` (CPU only):
    ``x <- m * (i * omega * x + K (m * x))``. Returns ``[B, save_stop - save_start, n]``."""
    save_stop = steps + 1 if save_stop is None else save_stop
    return torch.ops.phasor.cvrnn_run_dense(x0, omega, K, mask, int(steps), bool(renorm), int(save_start),
                                            int(save_stop), bool(save_phase))
