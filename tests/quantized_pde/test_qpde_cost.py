"""Cost accounting on a hand-countable model and on the spec's FNO-128-16m worked example."""
import math

import torch
import torch.nn as nn

from phasor.quantized_pde import cost, models, qat


def _tiny():
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                         models.SpectralConv(1, 4, 4, 3), nn.Conv1d(4, 1, 1))


def test_hand_counted_model():
    x = torch.randn(1, 2, 10)
    c = cost.count_cost(_tiny(), x)
    conv_macs = 10 * 4 * 2 * 3 + 10 * 1 * 4
    spec_macs = 4 * 3 * 4 * 4
    assert c["macs"] == conv_macs + spec_macs
    assert c["bops"] == (conv_macs + spec_macs) * 32 * 32
    fft = 2.5 * 10 * math.log2(10) * 8
    assert math.isclose(c["fft_flops"], fft)
    q = qat.prepare_qat(_tiny(), 4, 6, keep_first_last_8bit=False)
    cq = cost.count_cost(q, x)
    assert cq["macs"] == c["macs"]
    assert cq["bops"] == conv_macs * 4 * 6 + spec_macs * 4 * 32  # Fourier inputs stay float
    assert math.isclose(cq["fp32_equiv_flops"], 2 * cq["bops"] / 1024 + fft)
    converted = qat.convert(qat.calibrate(q, [x]))
    assert cost.count_cost(converted, x)["macs"] == c["macs"]


class _Pad(nn.Module):
    def forward(self, x):
        return nn.functional.pad(x, [0, 9, 0, 9])


def test_fno_128_16m_worked_example():
    # spec §6.4: lifting and projection at 128^2, trunk of 8 spectral + 8 1x1 layers at 137^2
    w = 128
    trunk = []
    for _ in range(8):
        trunk += [models.SpectralConv(2, w, w, 16), nn.Conv2d(w, w, 1)]

    class FNO(nn.Module):
        def __init__(self):
            super().__init__()
            self.lift = nn.Sequential(nn.Conv2d(12, w, 1), nn.Conv2d(w, w, 1))
            self.trunk = nn.ModuleList(trunk)
            self.proj = nn.Sequential(nn.Conv2d(w, w, 1), nn.Conv2d(w, 3, 1))

        def forward(self, x):
            h = _Pad()(self.lift(x))
            for i in range(0, 16, 2):
                h = self.trunk[i](h) + self.trunk[i + 1](h)
            return self.proj(h[..., :128, :128])

    m = FNO()
    x = torch.zeros(1, 12, 128, 128)
    c = cost.count_cost(m, x)
    assert abs(c["macs"] / 1e9 - 3.30) < 0.005
    assert abs(c["fft_flops"] / 1e9 - 1.36) < 0.01
    q = qat.prepare_qat(m, 8, 8, keep_first_last_8bit=False)
    full = c["fp32_equiv_flops"]
    ratio8 = full / cost.count_cost(q, x, spectral_act_bits=None)["fp32_equiv_flops"]
    for layer in q.modules():
        if isinstance(layer, qat.QuantConv):
            layer.weight_bits = layer.act_quant.bits = 4
        if isinstance(layer, models.SpectralConv):
            layer.weight_bits = 4
    ratio4 = full / cost.count_cost(q, x, spectral_act_bits=None)["fp32_equiv_flops"]
    assert abs(ratio8 - 4.5) < 0.05 and abs(ratio4 - 5.4) < 0.05
