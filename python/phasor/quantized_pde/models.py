"""Next-step predictors for 1-D and 2-D PDE states (thin re-implementations after PDEArena):
ResNet, dilated ResNet, U-Net and FNO, in 1-D (ndim=1) or 2-D (ndim=2), without normalisation
layers (so QAT needs no batch-norm folding). Convolutions use circular padding (periodic PDEs).

All models map a state [B, C, *grid] to the next state, predicting the increment (u + f(u)).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import fake_quant_complex_per_channel

ACTS = {"gelu": nn.GELU, "relu": nn.ReLU}


def conv(ndim: int, cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Module:
    cls = nn.Conv1d if ndim == 1 else nn.Conv2d
    return cls(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, padding_mode="circular" if k > 1 else "zeros")


class ResidualStep(nn.Module):
    """u -> u + net(u): a next-step predictor from any trunk."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, u):
        return u + self.net(u)


class BasicBlock(nn.Module):
    def __init__(self, ndim, width, act, dilations=(1, 1)):
        super().__init__()
        self.convs = nn.ModuleList(conv(ndim, width, width, 3, d) for d in dilations)
        self.act = ACTS[act]()

    def forward(self, x):
        h = x
        for i, c in enumerate(self.convs):
            h = c(h)
            if i < len(self.convs) - 1:
                h = self.act(h)
        return self.act(x + h)


def resnet(ndim: int, channels: int, width: int = 32, blocks: int = 4, act: str = "gelu", dilated: bool = False):
    """PDEArena ResNet (BasicBlocks: two 3x3 convs) or DilResNet (7 convs, dilations 1,2,4,8,4,2,1)."""
    dil = (1, 2, 4, 8, 4, 2, 1) if dilated else (1, 1)
    layers = [conv(ndim, channels, width, 1), ACTS[act]()]
    layers += [BasicBlock(ndim, width, act, dil) for _ in range(blocks)]
    layers += [conv(ndim, width, width, 1), ACTS[act](), conv(ndim, width, channels, 1)]
    return ResidualStep(nn.Sequential(*layers))


class UNet(nn.Module):
    """U-Net (Unet2015 style): two conv3 per level, strided-conv down, nearest-upsample + conv up,
    skip connections by concatenation."""

    def __init__(self, ndim, channels, width=16, levels=2, act="gelu"):
        super().__init__()
        A = ACTS[act]
        self.ndim = ndim
        self.inp = nn.Sequential(conv(ndim, channels, width, 3), A(), conv(ndim, width, width, 3), A())
        self.down, self.up, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        w = width
        for _ in range(levels):
            down = conv(ndim, w, 2 * w, 3)
            down.stride = (2,) * ndim
            self.down.append(nn.Sequential(down, A(), conv(ndim, 2 * w, 2 * w, 3), A()))
            w *= 2
        for _ in range(levels):
            self.up.append(nn.Sequential(conv(ndim, w, w // 2, 3), A()))
            self.dec.append(nn.Sequential(conv(ndim, w, w // 2, 3), A(), conv(ndim, w // 2, w // 2, 3), A()))
            w //= 2
        self.out = conv(ndim, width, channels, 1)

    def forward(self, u):
        h = self.inp(u)
        skips = []
        for d in self.down:
            skips.append(h)
            h = d(h)
        for up, dec in zip(self.up, self.dec):
            skip = skips.pop()
            h = up(F.interpolate(h, size=skip.shape[2:], mode="nearest"))
            h = dec(torch.cat([h, skip], 1))
        return u + self.out(h)


class SpectralConv(nn.Module):
    """Fourier layer mixing: rfft, multiply the lowest `modes` (both signs along all but the last
    axis in 2-D, i.e. two corner blocks) by complex weights [in, out, *modes], irfft. FFTs in float.
    `weight_bits` (set by prepare_qat) fake-quantises real and imaginary parts per output channel."""

    def __init__(self, ndim, cin, cout, modes):
        super().__init__()
        self.ndim, self.modes, self.cin, self.cout = ndim, modes, cin, cout
        scale = 1 / (cin * cout)
        shape = (cin, cout) + (modes,) * ndim
        corners = 1 if ndim == 1 else 2
        self.weight = nn.Parameter(scale * torch.randn(corners, *shape, dtype=torch.cfloat))
        self.weight_bits = None
        self.weight_scale = None  # nn.Parameter [cout] once quantised

    def quantized_weight(self):
        if self.weight_bits is None:
            return self.weight
        with torch.no_grad():  # keep the learnt scales valid (the op rejects others)
            self.weight_scale.clamp_(min=1e-8)
        return fake_quant_complex_per_channel(self.weight, self.weight_scale, axis=2, bits=self.weight_bits)

    def forward(self, x):
        w = self.quantized_weight()
        m = self.modes
        if self.ndim == 1:
            xf = torch.fft.rfft(x)
            out = torch.zeros(x.shape[0], self.cout, xf.shape[-1], dtype=xf.dtype, device=x.device)
            out[..., :m] = torch.einsum("bix,iox->box", xf[..., :m], w[0])
            return torch.fft.irfft(out, n=x.shape[-1])
        xf = torch.fft.rfft2(x)
        out = torch.zeros(x.shape[0], self.cout, xf.shape[-2], xf.shape[-1], dtype=xf.dtype, device=x.device)
        out[..., :m, :m] = torch.einsum("bixy,ioxy->boxy", xf[..., :m, :m], w[0])
        out[..., -m:, :m] = torch.einsum("bixy,ioxy->boxy", xf[..., -m:, :m], w[1])
        return torch.fft.irfft2(out, s=x.shape[-2:])


class FourierBlock(nn.Module):
    def __init__(self, ndim, width, modes, act):
        super().__init__()
        self.spectral = SpectralConv(ndim, width, width, modes)
        self.pointwise = conv(ndim, width, width, 1)
        self.act = ACTS[act]()

    def forward(self, x):
        return self.act(self.spectral(x) + self.pointwise(x))


def fno(ndim: int, channels: int, width: int = 32, modes: int = 12, layers: int = 4, act: str = "gelu"):
    """FNO (Li et al.): lifting 1x1 convs, Fourier layers act(K x + W x), projection 1x1 convs."""
    body = [conv(ndim, channels, width, 1), ACTS[act]()]
    body += [FourierBlock(ndim, width, modes, act) for _ in range(layers)]
    body += [conv(ndim, width, 2 * width, 1), ACTS[act](), conv(ndim, 2 * width, channels, 1)]
    return ResidualStep(nn.Sequential(*body))


class PerSampleScale(nn.Module):
    """model(u / s) * s with s the RMS of each sample; the scaling stays in float.

    Not in the paper's or the spec's scheme (an option of the repro's experiments): a static
    per-tensor activation grid must span the largest state of the data, so states two orders of
    magnitude smaller (decayed Burgers solutions) sit on a few grid steps; dividing each input by
    its own RMS puts every sample on the same part of the grid.

    With ``log_rms_channel`` the model also gets log s as one more input channel (it was built for
    C + 1 channels; its extra output channel is dropped): the predictor is then no longer blind to
    the amplitude, which PDEs such as Burgers' (u u_x) need. Without it the predictor is exactly
    scale-equivariant, f(c u) = c f(u).
    """

    def __init__(self, model: nn.Module, log_rms_channel: bool = False, eps: float = 1e-6):
        super().__init__()
        self.model, self.log_rms_channel, self.eps = model, log_rms_channel, eps

    def forward(self, u):
        s = u.pow(2).mean(dim=tuple(range(1, u.dim())), keepdim=True).sqrt().clamp_min(self.eps)
        x = u / s
        if not self.log_rms_channel:
            return self.model(x) * s
        amp = torch.log(s).expand(u.shape[0], 1, *u.shape[2:])
        return self.model(torch.cat([x, amp], 1))[:, :u.shape[1]] * s


INPUT_SCALINGS = ("none", "per_sample", "per_sample_log_rms")


def build(arch: str, ndim: int, channels: int, width: int, modes: int = 12, input_scaling: str = "none") -> nn.Module:
    if input_scaling not in INPUT_SCALINGS:
        raise ValueError(f"input_scaling must be one of {INPUT_SCALINGS}, got {input_scaling!r}")
    c = channels + 1 if input_scaling == "per_sample_log_rms" else channels
    if arch == "resnet":
        model = resnet(ndim, c, width)
    elif arch == "dilresnet":
        model = resnet(ndim, c, width, blocks=2, dilated=True)
    elif arch == "unet":
        model = UNet(ndim, c, width // 2)
    elif arch == "fno":
        model = fno(ndim, c, width, modes)
    else:
        raise ValueError(f"arch must be resnet, dilresnet, unet or fno, got {arch!r}")
    if input_scaling == "none":
        return model
    return PerSampleScale(model, log_rms_channel=input_scaling == "per_sample_log_rms")
