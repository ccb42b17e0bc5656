"""torch.export of a module around each system's forward op: the exported graph calls the phasor op
(not a decomposition) and gives the eager module's outputs. (Rotating Features: test_rot_epilogue.py.)"""
import math

import pytest
import torch

from phasor.complex_rnn import ops as cvrnn_ops
from phasor.gta.nn import Geometry, GTAttention
from phasor.quantized_pde import ops as qpde_ops
from phasor.wave_rnn import ops as wave_ops


class _Call(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


class _GTA(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = GTAttention(dim=32, heads=2, dims=(0, 8, 0, 8))

    def forward(self, x, E, pos):
        return self.layer(x, Geometry(E, pos), x, Geometry(E, pos))


def _poses(B, V, g):
    R, _ = torch.linalg.qr(torch.randn(B, V, 3, 3, generator=g))
    E = torch.eye(4).repeat(B, V, 1, 1)
    E[..., :3, :3] = R * torch.det(R).sign()[..., None, None]
    E[..., :3, 3] = torch.randn(B, V, 3, generator=g)
    return E


def _cases():
    g = torch.Generator().manual_seed(0)
    c, n = 3, 10
    w = torch.randn(c, c, 3, generator=g) * 0.3
    yield "wave_rnn_fwd", _Call(lambda u, h0: wave_ops.wave_rnn(u, w, torch.zeros(c), h0, "tanh")), (
        torch.randn(5, 2, c, n, generator=g), torch.randn(2, c, n, generator=g))
    x0 = torch.polar(torch.ones(2, 6, 7), 2 * math.pi * torch.rand(2, 6, 7, generator=g))
    yield "cvrnn_run", _Call(lambda x0, om: cvrnn_ops.cvrnn_run(x0, om, 0.5, 0.3, 8, save_start=4, save_phase=True)), (
        x0, torch.randn(2, 6, 7, generator=g))
    yield "gta_attention_fwd", _GTA().eval(), (torch.randn(2, 16, 32, generator=g), _poses(2, 2, g), torch.rand(2, 16, 2, generator=g))
    scale, zp = torch.tensor(0.05), torch.tensor(3.0)
    yield "fake_quant_per_tensor", _Call(lambda x: qpde_ops.fake_quant_per_tensor(x, scale, zp, 8)), (
        torch.randn(2, 3, 5, 5, generator=g),)
    wq = torch.randint(-127, 128, (4, 3, 3, 3), generator=g, dtype=torch.int8)
    ws = torch.rand(4, generator=g) * 0.01 + 0.001
    yield "int8_conv2d", _Call(lambda x: qpde_ops.int8_conv2d(x, 0.02, -3, wq, ws, None, 1, 1, 1, "gelu")), (
        torch.randint(-128, 128, (2, 3, 6, 7), generator=g, dtype=torch.int8),)


@pytest.mark.parametrize("op,module,args", list(_cases()), ids=[c[0] for c in _cases()])
def test_export_records_the_op(op, module, args):
    ep = torch.export.export(module, args)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any(t.startswith(f"phasor.{op}") for t in targets), targets
    torch.testing.assert_close(ep.module()(*args), module(*args))
