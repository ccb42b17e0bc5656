"""The paper's two-layer segmentation (official ``run_2layer.m`` and ``cvrnn_image_segmentation.m``).

1. x0 = exp(i 2 pi (U - 0.5)) per pixel (unit modulus, random phase; the official code).
2. Layer 1 (alpha 0.5, sigma 0.9: near-global coupling), 59 updates, omega = the pixel intensities.
3. Background mask: threshold = the mean of the wrapped phases after layer 1; the larger of the two
   groups (above / below) is the background.
4. Layer 2 (alpha 0.5, sigma 0.0313: local coupling) on the masked sheet, omega = 0 and coupling
   rows and columns zeroed at the background, from the same x0 with the background zeroed; 140
   updates. The readout window is the official samples [140, 180] (1-based, counting x0, layer 1
   giving samples 1..60): layer-2 updates 80..120, i.e. `window = (80, 121)` here.
5. Readout (:mod:`phasor.complex_rnn.readout`) on the foreground, k-means with k = num_objects.
Output label maps: 0 background, 1..k objects.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from . import ops, reference
from .readout import kmeans, spectral_projection, unit_phasors


@dataclasses.dataclass(frozen=True)
class Config:
    layer1: tuple = (0.5, 0.9, 59)      # (alpha, sigma, updates)
    layer2: tuple = (0.5, 0.0313, 140)
    window: tuple = (80, 121)           # layer-2 updates [start, stop): official samples [140, 180]
    proj_dim: int = 3
    mask_rule: str = "mean"             # "mean" (official) or "circular" (centred on the circular mean)
    dtype: torch.dtype = torch.complex64
    fused: bool = True                  # the fused op, or the eager separable reference


def initial_state(shape, seed: int, dtype=torch.complex64) -> torch.Tensor:
    """Unit-modulus random phases, one generator per call (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    return torch.polar(torch.ones_like(u), 2 * math.pi * (u - 0.5)).to(dtype)


def _run(cfg: Config, x0, omega, mask, layer, save_start, save_stop):
    alpha, sigma, steps = layer
    if cfg.fused:
        return ops.cvrnn_run(x0, omega, alpha, sigma, steps, mask=mask, save_start=save_start, save_stop=save_stop,
                             save_phase=True)
    return reference.run_separable_ref(x0, omega, mask, alpha, sigma, steps, True, save_start, save_stop, True)


def background_mask(phases: torch.Tensor, rule: str = "mean") -> torch.Tensor:
    """phases [B, H, W] after layer 1 -> bool [B, H, W], True at the background (the larger group)."""
    flat = phases.flatten(1).double()
    if rule == "circular":  # centre on the circular mean first, so a common phase near +-pi cannot straddle
        centre = torch.angle(torch.polar(torch.ones_like(flat), flat).mean(1, keepdim=True))
        flat = torch.remainder(flat - centre + math.pi, 2 * math.pi) - math.pi
    elif rule != "mean":
        raise ValueError(f"mask_rule must be 'mean' or 'circular', got {rule!r}")
    above = flat > flat.mean(1, keepdim=True)
    bigger_above = above.sum(1, keepdim=True) > (~above).sum(1, keepdim=True)
    return torch.where(bigger_above, above, ~above).view_as(phases)


def run_layers(images: torch.Tensor, seed: int = 0, cfg: Config = Config()):
    """Both layers over images [B, H, W]: returns (background mask [B, H, W], window phases [B, T, H, W])."""
    B, H, W = images.shape
    rdt = cfg.dtype.to_real()
    x0 = initial_state((B, H, W), seed, cfg.dtype)
    omega = images.to(rdt)
    steps1 = cfg.layer1[2]
    ph1 = _run(cfg, x0, omega, None, cfg.layer1, steps1, steps1 + 1)[:, 0]
    background = background_mask(ph1, cfg.mask_rule)
    fg = ~background
    x0_2 = x0 * fg
    window = _run(cfg, x0_2, omega * fg, fg, cfg.layer2, *cfg.window)
    return background, window


def readout(background: torch.Tensor, window: torch.Tensor, num_objects: int, seed: int = 0,
            proj_dim: int = 3) -> torch.Tensor:
    """Labels [B, H, W] (0 background, 1..num_objects) from the masks and the window phases."""
    B, T, H, W = window.shape
    labels = torch.zeros(B, H, W, dtype=torch.long)
    for b in range(B):
        fg = ~background[b].reshape(-1)
        if not fg.any():
            continue
        P = unit_phasors(window[b].reshape(T, H * W)[:, fg].t())
        prj = spectral_projection(P, proj_dim)
        lab = kmeans(prj, num_objects, seed)
        labels[b].view(-1)[fg] = lab + 1
    return labels


def segment(images: torch.Tensor, num_objects: int, seed: int = 0, cfg: Config = Config(),
            return_details: bool = False):
    """Segment grayscale images [B, H, W] (or [H, W]) into num_objects objects plus background.

    Returns label maps [B, H, W] (long; 0 background, 1..num_objects), and with return_details also
    the background masks and the readout-window phases.
    """
    single = images.dim() == 2
    imgs = images[None] if single else images
    background, window = run_layers(imgs, seed, cfg)
    labels = readout(background, window, num_objects, seed, cfg.proj_dim)
    labels = labels[0] if single else labels
    if return_details:
        return labels, dict(background=background, window=window)
    return labels


def trajectory(image: torch.Tensor, seed: int = 0, cfg: Config = Config()) -> torch.Tensor:
    """Phases of one image [H, W] at every official sample (layer 1's 60 then layer 2's 140): [200, H, W]."""
    x0 = initial_state((1, *image.shape), seed, cfg.dtype)
    omega = image[None].to(cfg.dtype.to_real())
    ph1 = _run(cfg, x0, omega, None, cfg.layer1, 0, cfg.layer1[2] + 1)[0]
    fg = ~background_mask(ph1[-1:], cfg.mask_rule)
    ph2 = _run(cfg, x0 * fg, omega * fg, fg, cfg.layer2, 1, cfg.layer2[2] + 1)[0]
    return torch.cat([ph1, ph2])
