"""Fused rotating-layer epilogue ops: fake kernels, autograd, and the public wrappers.

The kernels live in ``csrc/rotating_features``; their math is documented in
:mod:`phasor.rotating_features.reference`, which is also the test oracle.
"""
from __future__ import annotations

import torch

__all__ = ["rot_bn_epilogue", "rot_ln_epilogue"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _param_dtype(act_dtype):
    return torch.float32 if act_dtype in _LOW_PRECISION else act_dtype


# ---------------------------------------------------------------------------- fake kernels
def _check_devices_dtypes(psi, chi, **params):
    """Mirror of the C++ device/dtype checks (the fake kernel is what runs for meta tensors)."""
    if chi is not None:
        torch._check(chi.device == psi.device, lambda: f"chi is on {chi.device} but psi is on {psi.device}")
        torch._check(chi.dtype == psi.dtype, lambda: f"chi must have dtype {psi.dtype}, got {chi.dtype}")
    want = _param_dtype(psi.dtype)
    for name, t in params.items():
        if t is None:
            continue
        torch._check(t.device == psi.device, lambda: f"{name} is on {t.device} but psi is on {psi.device}")
        torch._check(t.dtype == want, lambda: f"{name} must have dtype {want}, got {t.dtype}")


def _check_bn_shapes(psi, chi, rot_bias, weight, bias):
    torch._check(psi.dim() >= 3, lambda: f"psi must be [B, n, C, *spatial], got {tuple(psi.shape)}")
    torch._check(rot_bias.dim() == 2, lambda: f"rot_bias must be [n, C], got {tuple(rot_bias.shape)}")
    n, c = rot_bias.shape
    torch._check(psi.shape[2] == c, lambda: f"psi has {psi.shape[2]} channels but rot_bias has {c}")
    torch._check(psi.shape[1] == (1 if chi is None else n), lambda: "psi dim 1 must be n (1 with chi=None)")
    if chi is not None:
        torch._check(tuple(chi.shape) == (psi.shape[0], *psi.shape[2:]), lambda: "chi must be [B, C, *spatial]")
    torch._check(tuple(weight.shape) == (c,) and tuple(bias.shape) == (c,), lambda: "weight/bias must be [C]")
    _check_devices_dtypes(psi, chi, rot_bias=rot_bias, weight=weight, bias=bias)
    return n, c


@torch.library.register_fake("phasor::rot_bn_fwd")
def _rot_bn_fwd_fake(psi, chi, rot_bias, weight, bias, running_mean, running_var, training, eps):
    n, c = _check_bn_shapes(psi, chi, rot_bias, weight, bias)
    out = psi.new_empty((psi.shape[0], n, *psi.shape[2:]))
    mag = psi.new_empty((psi.shape[0], *psi.shape[2:]))
    stats = weight.new_empty((c,))
    return out, mag, stats, stats.new_empty((c,))


@torch.library.register_fake("phasor::rot_bn_bwd")
def _rot_bn_bwd_fake(grad_out, grad_mag, psi, chi, rot_bias, weight, bias, mean, var, training, eps):
    _check_bn_shapes(psi, chi, rot_bias, weight, bias)
    g_chi = psi.new_empty((0,)) if chi is None else torch.empty_like(chi)
    return (torch.empty_like(psi), g_chi, torch.empty_like(rot_bias), torch.empty_like(weight),
            torch.empty_like(bias))


@torch.library.register_fake("phasor::rot_ln_fwd")
def _rot_ln_fwd_fake(psi, chi, rot_bias, weight, bias, eps):
    torch._check(psi.dim() == 3, lambda: f"psi must be [B, n, C], got {tuple(psi.shape)}")
    torch._check(tuple(chi.shape) == (psi.shape[0], psi.shape[2]), lambda: "chi must be [B, C]")
    _check_devices_dtypes(psi, chi, rot_bias=rot_bias, weight=weight, bias=bias)
    torch._check(psi.shape[1] >= 1, lambda: "psi must have at least one rotation dim")
    b, stats = psi.shape[0], _param_dtype(psi.dtype)  # float32 statistics for 16-bit psi, as torch's LN
    return torch.empty_like(psi), torch.empty_like(chi), psi.new_empty((b,), dtype=stats), psi.new_empty((b,), dtype=stats)


@torch.library.register_fake("phasor::rot_ln_bwd")
def _rot_ln_bwd_fake(grad_out, grad_mag, psi, chi, rot_bias, weight, bias, mean, rstd):
    return (torch.empty_like(psi), torch.empty_like(chi), torch.empty_like(rot_bias),
            torch.empty_like(weight), torch.empty_like(bias))


# ---------------------------------------------------------------------------- autograd
def _bn_setup(ctx, inputs, output):
    psi, chi, rot_bias, weight, bias, _, _, training, eps = inputs
    _, _, mean, var = output
    ctx.save_for_backward(psi, chi, rot_bias, weight, bias, mean, var)
    ctx.training, ctx.eps, ctx.lift = training, eps, chi is None
    ctx.mark_non_differentiable(mean, var)


def _bn_backward(ctx, grad_out, grad_mag, _gmean, _gvar):
    psi, chi, rot_bias, weight, bias, mean, var = ctx.saved_tensors
    g_psi, g_chi, g_rb, g_w, g_b = torch.ops.phasor.rot_bn_bwd(
        grad_out, grad_mag, psi, chi, rot_bias, weight, bias, mean, var, ctx.training, ctx.eps)
    return g_psi, (None if ctx.lift else g_chi), g_rb, g_w, g_b, None, None, None, None


def _ln_setup(ctx, inputs, output):
    psi, chi, rot_bias, weight, bias, _ = inputs
    _, _, mean, rstd = output
    ctx.save_for_backward(psi, chi, rot_bias, weight, bias, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _ln_backward(ctx, grad_out, grad_mag, _gmean, _grstd):
    psi, chi, rot_bias, weight, bias, mean, rstd = ctx.saved_tensors
    grads = torch.ops.phasor.rot_ln_bwd(grad_out, grad_mag, psi, chi, rot_bias, weight, bias, mean, rstd)
    return (*grads, None)


torch.library.register_autograd("phasor::rot_bn_fwd", _bn_backward, setup_context=_bn_setup)
torch.library.register_autograd("phasor::rot_ln_fwd", _ln_backward, setup_context=_ln_setup)


# ---------------------------------------------------------------------------- public wrappers
def _as_bias_matrix(rot_bias: torch.Tensor) -> torch.Tensor:
    """Accept the official bias shapes (1, n, C, 1, 1) / (1, n, C) as well as [n, C]."""
    if rot_bias.dim() > 2:
        n, c = rot_bias.shape[1], rot_bias.shape[2]
        if rot_bias.numel() != n * c:
            raise ValueError(f"rot_bias must be [n, C] or (1, n, C, 1, ...), got {tuple(rot_bias.shape)}")
        rot_bias = rot_bias.reshape(n, c)
    return rot_bias


def rot_bn_epilogue(psi, chi, rot_bias, weight, bias, running_mean=None, running_var=None,
                    training: bool = True, momentum: float = 0.1, eps: float = 1e-5):
    """Fused rotating-layer epilogue with BatchNorm on the magnitudes.

    Computes ``out = normalize(psi + rot_bias, dim=1) * mag`` with
    ``mag = relu(BN(0.5 * |psi| + 0.5 * chi))``, where ``|psi|`` is the L2 norm over the n
    rotation dims taken before the bias (official code). One fused op forward, one backward.

    Args:
        psi: ``[B, n, C, *spatial]`` float tensor, the shared operator applied to every rotation
            slice. With ``chi=None`` (first-layer lift), ``[B, 1, C, *spatial] = W(x)``, x >= 0.
        chi: ``[B, C, *spatial]``, the operator applied to the input magnitudes, or None.
        rot_bias: ``[n, C]`` (or the official ``(1, n, C, 1, 1)``) rotation bias.
        weight, bias: ``[C]`` BatchNorm affine parameters.
        running_mean, running_var: ``[C]`` running statistics; updated in place when training
            (momentum as in ``nn.BatchNorm``, unbiased variance); required when not training.
        training: batch statistics (True) or running statistics (False).

    Returns:
        ``(out [B, n, C, *spatial], mag [B, C, *spatial])``; ``mag == |out|`` wherever
        ``|psi + rot_bias| > 1e-12``, so the next layer can use it as its input magnitude.

    Dtypes: float32/float64 on CPU; float32, float16, bfloat16 on CUDA (parameters and running
    statistics float32 for the 16-bit types).
    """
    rot_bias = _as_bias_matrix(rot_bias)
    count = psi.numel() // max(psi.shape[1], 1) // max(psi.shape[2], 1) if psi.dim() >= 3 else 0
    if training and count == 1:  # as F.batch_norm: the batch variance is undefined
        raise ValueError(f"rot_bn_epilogue: expected more than 1 value per channel when training, "
                         f"got psi of shape {tuple(psi.shape)}")
    out, mag, mean, var = torch.ops.phasor.rot_bn_fwd(
        psi, chi, rot_bias, weight, bias, running_mean, running_var, training, eps)
    if training and running_mean is not None and running_var is not None:
        if count > 0:
            with torch.no_grad():
                unbiased = var * (count / max(count - 1, 1))
                running_mean.lerp_(mean.to(running_mean.dtype), momentum)
                running_var.lerp_(unbiased.to(running_var.dtype), momentum)
    return out, mag


def rot_ln_epilogue(psi, chi, rot_bias, weight, bias, eps: float = 1e-5):
    """Fused rotating-layer epilogue with LayerNorm over channels (rotating linear layers).

    ``psi [B, n, C]``, ``chi [B, C]``, ``rot_bias [n, C]`` (or ``(1, n, C)``), ``weight, bias [C]``.
    Returns ``(out [B, n, C], mag [B, C])`` with
    ``out = normalize(psi + rot_bias, dim=1) * relu(LayerNorm_C(0.5 |psi| + 0.5 chi))``.
    """
    out, mag, _, _ = torch.ops.phasor.rot_ln_fwd(psi, chi, _as_bias_matrix(rot_bias), weight, bias, eps)
    return out, mag
