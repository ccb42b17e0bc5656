"""The wave-RNN (wRNN) and iRNN models of Keller et al. 2023, as the official code builds them.

``WaveRNN`` keeps the official module layout (``cell.Wx`` = Linear encoder, ``cell.Wy`` = circular
Conv1d, ``readout``), so its state dict is the official one and the fused and eager paths share
every parameter. ``fused=True`` runs the whole sequence in one ``torch.ops.phasor`` call;
``fused=False`` runs the official per-step loop.

Inputs are time-major ``[T, B, n_inp]`` as in the official code. Readouts: ``"last"`` applies the
readout to ``h_T`` (adding task, classification), ``"all"`` to every ``h_t`` (copy task).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

try:  # the fused path needs the C++ ops; the eager path does not
    from . import ops as _ops
    _OPS_ERROR = None
except Exception as exc:  # noqa: BLE001 - any failure to load the extension disables only fused=True
    _ops, _OPS_ERROR = None, exc

ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "identity": "identity", "ident": "identity"}
RECURRENT_INITS = ("fwd", "eye", "rand")
ENCODER_INITS = ("v", "normal", "default")
READOUTS = ("last", "all")
# The fused kernel projects inputs this narrow itself (adding: 2, digits/sMNIST: 1); wider inputs
# (copy: 10 one-hot) take one GEMM first.
FUSED_PROJECTION_MAX_INPUTS = 2


def fused_available() -> bool:
    return _ops is not None


def _activation_name(act: str) -> str:
    if act not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    return ACTIVATIONS[act]


def _activation_module(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "tanh": nn.Tanh(), "identity": nn.Identity()}[name]


def init_encoder(linear: nn.Linear, mode: str, c: int, n: int) -> None:
    """The official encoder inits. 'v' (solo_init='yes', the paper's V-init): every input feature
    drives ring position 0 of every channel with weight 1, nothing else. 'normal' (solo_init='no'
    in the adding/copy code and every wRNN): weight ~ N(0, 0.001), bias left at the Linear default.
    'default': untouched Linear init (the sMNIST/psMNIST iRNN)."""
    if mode not in ENCODER_INITS:
        raise ValueError(f"encoder init must be one of {ENCODER_INITS}, got {mode!r}")
    with torch.no_grad():
        if mode == "v":
            linear.weight.zero_()
            linear.bias.zero_()
            linear.weight.view(c, n, linear.in_features)[:, 0] = 1.0  # channel-major: row ch*n + pos
        elif mode == "normal":
            linear.weight.normal_(0.0, 0.001)


def shift_kernel(c: int, f: int = 3, init: str = "fwd") -> torch.Tensor:
    """The recurrent Conv1d weight of init 'eye' (Dirac: W[i, i, f//2] = 1, a static bump) or
    'fwd' (that Dirac rolled one tap right, W[i, i, f//2 + 1] = 1: u = [0, 0, 1], a wave moving one
    ring position towards lower positions per step)."""
    w = torch.zeros(c, c, f)
    nn.init.dirac_(w)
    return torch.roll(w, 1, -1) if init == "fwd" else w


def make_readout(in_features: int, n_out: int, mlp_hidden: int = 0) -> nn.Module:
    """Linear readout, or the sMNIST/psMNIST MLP decoder Linear -> ReLU -> Linear (hidden 100)."""
    if mlp_hidden:
        return nn.Sequential(nn.Linear(in_features, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, n_out))
    return nn.Linear(in_features, n_out)


class WaveRNNCell(nn.Module):
    """h_t = act(Wx(x_t) + flatten(Wy(view(h_{t-1}, B, c, n)))), Wy a circular Conv1d (c -> c, f taps).

    Parameters are created in the official order (Wx, Wy, then the encoder init), so with the same
    seed the initial weights equal the official code's.
    """

    def __init__(self, n_inp: int, n: int, c: int, f: int = 3, activation: str = "relu", init: str = "fwd",
                 v_init: bool = True, fused: bool = True, checkpoint_every: int | None = None):
        super().__init__()
        if init not in RECURRENT_INITS:
            raise ValueError(f"init must be one of {RECURRENT_INITS}, got {init!r}")
        if f % 2 != 1:
            raise ValueError(f"kernel size f must be odd, got {f}")
        self.n_inp, self.n, self.c, self.f = n_inp, n, c, f
        self.activation = _activation_name(activation)
        self.fused = fused
        # fused path, h_T only: keep every K-th state for the backward (see wave_rnn.checkpointed)
        self.checkpoint_every = checkpoint_every
        self.Wx = nn.Linear(n_inp, c * n)
        self.Wy = nn.Conv1d(c, c, f, padding=f // 2, padding_mode="circular")
        self.act = _activation_module(self.activation)
        init_encoder(self.Wx, "v" if v_init else "normal", c, n)
        if init != "rand":
            with torch.no_grad():
                self.Wy.weight.copy_(shift_kernel(c, f, init))

    def step(self, x_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One official step on the flat, channel-major state h [B, c*n]."""
        return self.act(self.Wx(x_t) + self.Wy(h.view(-1, self.c, self.n)).flatten(start_dim=1))

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None, return_all: bool = True) -> torch.Tensor:
        """x [T, B, n_inp] -> every state [T, B, c, n] (return_all) or h_T [B, c, n]."""
        if self.fused:
            return self._forward_fused(x, h0, return_all)
        return self._forward_eager(x, h0, return_all)

    def _forward_eager(self, x, h0, return_all):
        T, B = x.shape[0], x.shape[1]
        h = x.new_zeros(B, self.c * self.n) if h0 is None else h0.reshape(B, self.c * self.n)
        states = []
        for t in range(T):
            h = self.step(x[t], h)
            states.append(h)
        if return_all:
            return torch.stack(states).view(T, B, self.c, self.n) if T else x.new_zeros(0, B, self.c, self.n)
        return h.view(B, self.c, self.n)

    def _forward_fused(self, x, h0, return_all):
        if _ops is None:
            raise RuntimeError(f"fused=True needs phasor.wave_rnn.ops, which failed to load: {_OPS_ERROR}")
        W, b = self.Wy.weight, self.Wy.bias
        K = None if return_all else self.checkpoint_every
        if self.n_inp <= FUSED_PROJECTION_MAX_INPUTS:
            return _ops.wave_rnn_projected(x, self.Wx.weight, self.Wx.bias, W, b, h0, self.activation, return_all,
                                           checkpoint_every=K)
        u = F.linear(x, self.Wx.weight, self.Wx.bias).view(x.shape[0], x.shape[1], self.c, self.n)
        return _ops.wave_rnn(u, W, b, h0, self.activation, return_all, checkpoint_every=K)


class WaveRNN(nn.Module):
    """The wRNN: ``WaveRNNCell`` + readout ('last': on h_T -> [B, n_out]; 'all': on every h_t ->
    [T, B, n_out]; ``mlp_hidden`` > 0: the MLP decoder). ``checkpoint_every=K`` (readout 'last',
    fused): the backward keeps every K-th state and recomputes the rest, segment by segment."""

    def __init__(self, n_inp: int, n: int, c: int, n_out: int, f: int = 3, activation: str = "relu",
                 init: str = "fwd", v_init: bool = True, readout: str = "last", mlp_hidden: int = 0,
                 fused: bool = True, checkpoint_every: int | None = None):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.readout_mode = readout
        self.cell = WaveRNNCell(n_inp, n, c, f, activation, init, v_init, fused, checkpoint_every)
        self.readout = make_readout(c * n, n_out, mlp_hidden)

    @property
    def fused(self) -> bool:
        return self.cell.fused

    @fused.setter
    def fused(self, value: bool) -> None:
        self.cell.fused = value

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """Every state [T, B, c, n] (ring position along the last axis)."""
        return self.cell(x, return_all=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.readout_mode == "all":
            H = self.cell(x, return_all=True)
            return self.readout(H.flatten(start_dim=2))
        return self.readout(self.cell(x, return_all=False).flatten(start_dim=1))


class IRNN(nn.Module):
    """The iRNN baseline: ``nn.RNN(nonlinearity='relu')`` + readout, initialised like the official
    ``rnn_model.py`` (Wx = encoder, Wy = recurrent Linear with W_hh = identity, b_hh = 0 for 'eye').

    init: 'eye' (identity), 'fwd' (identity rolled +1 along the last axis: the paper's Sigma-init),
    'rand' (the PyTorch default). encoder_init: 'normal' (N(0, 0.001), the adding/copy code),
    'default' (the sMNIST/psMNIST code), 'v' (V-init). The input bias keeps the official Linear
    default, U(+-1/sqrt(n_inp)).
    """

    def __init__(self, n_inp: int, n: int, n_out: int, init: str = "eye", encoder_init: str = "normal",
                 readout: str = "last", mlp_hidden: int = 0, activation: str = "relu"):
        super().__init__()
        if init not in RECURRENT_INITS:
            raise ValueError(f"init must be one of {RECURRENT_INITS}, got {init!r}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        act = _activation_name(activation)
        if act == "identity":
            raise ValueError("nn.RNN supports only activation 'relu' or 'tanh'")
        self.n, self.readout_mode = n, readout
        self.rnn = nn.RNN(n_inp, n, nonlinearity=act)
        self.readout = make_readout(n, n_out, mlp_hidden)
        self._init_official(n_inp, n, init, encoder_init)

    def _init_official(self, n_inp, n, init, encoder_init):
        with torch.no_grad():
            # nn.Linear(n_inp, n)'s defaults: weight and bias U(+-1/sqrt(n_inp))
            bound = 1.0 / math.sqrt(n_inp)
            self.rnn.weight_ih_l0.uniform_(-bound, bound)
            self.rnn.bias_ih_l0.uniform_(-bound, bound)
            if encoder_init == "v":
                self.rnn.weight_ih_l0.zero_()
                self.rnn.bias_ih_l0.zero_()
                self.rnn.weight_ih_l0.view(1, n, n_inp)[:, 0] = 1.0
            elif encoder_init == "normal":
                self.rnn.weight_ih_l0.normal_(0.0, 0.001)
            elif encoder_init != "default":
                raise ValueError(f"encoder init must be one of {ENCODER_INITS}, got {encoder_init!r}")
            if init != "rand":  # 'rand' keeps nn.RNN's U(+-1/sqrt(n)), the Linear(n, n) default
                eye = torch.eye(n)
                self.rnn.weight_hh_l0.copy_(torch.roll(eye, 1, -1) if init == "fwd" else eye)
                self.rnn.bias_hh_l0.zero_()

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, h_T = self.rnn(x)
        if self.readout_mode == "all":
            return self.readout(H)
        return self.readout(h_T[0])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
