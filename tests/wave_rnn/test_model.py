"""WaveRNN and IRNN: official semantics and inits, the impulse test, parameter counts, fused = eager."""
import pytest
import torch
from torch import nn

from phasor.wave_rnn import model as wm
from phasor.wave_rnn.model import IRNN, WaveRNN, count_parameters
from phasor.wave_rnn.reference import wave_rnn_ref

requires_fused = pytest.mark.skipif(not wm.fused_available(), reason="phasor.wave_rnn.ops is not built")


# ---------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("build, expected", [
    (lambda: WaveRNN(10, 100, 6, 10, readout="all"), 12_724),             # copy wRNN n100 c6
    (lambda: WaveRNN(2, 100, 27, 1), 13_015),                             # adding wRNN n100 c27
    (lambda: WaveRNN(1, 256, 16, 10), 49_946),                            # psMNIST wRNN n256 c16
    (lambda: WaveRNN(1, 256, 16, 10, mlp_hidden=100), 419_686),           # + MLP decoder
    (lambda: WaveRNN(96, 256, 16, 10), 439_066),                          # nsCIFAR wRNN
    (lambda: IRNN(10, 100, 10, readout="all"), 12_210),                   # copy iRNN n100
    (lambda: IRNN(10, 625, 10, readout="all"), 404_385),                  # copy iRNN n625
    (lambda: IRNN(2, 100, 1), 10_501),                                    # adding iRNN
    (lambda: IRNN(1, 256, 10, encoder_init="default"), 68_874),           # psMNIST iRNN n256
    (lambda: IRNN(96, 529, 10, encoder_init="default"), 336_983),         # nsCIFAR iRNN n529
])
def test_parameter_counts_match_spec(build, expected):
    assert count_parameters(build()) == expected


# ---------------------------------------------------------------------------- inits
def test_wave_inits_are_official():
    c, n, n_inp = 4, 9, 3
    m = WaveRNN(n_inp, n, c, 2)
    W = m.cell.Wy.weight
    expected = torch.zeros(c, c, 3)
    expected[range(c), range(c), 2] = 1.0  # Dirac rolled one tap right: u = [0, 0, 1] per channel
    assert torch.equal(W, expected)
    bound = 1 / (3 * c) ** 0.5  # the conv bias keeps the PyTorch default, not zeroed
    b = m.cell.Wy.bias
    assert (b.abs() <= bound).all() and (b != 0).all()
    V = m.cell.Wx.weight.view(c, n, n_inp)  # V-init: every feature drives ring position 0
    assert (V[:, 0] == 1).all() and (V[:, 1:] == 0).all() and (m.cell.Wx.bias == 0).all()
    eye = WaveRNN(n_inp, n, c, 2, init="eye").cell.Wy.weight
    assert torch.equal(eye, torch.roll(expected, -1, -1))
    no_v = WaveRNN(n_inp, 50, 8, 2, v_init=False).cell.Wx.weight
    assert 0.0007 < no_v.std() < 0.0013


def test_init_matches_official_construction_order():
    """With one seed, the initial weights equal the official RNN_Cell + coRNN construction."""
    n_inp, n, c, n_out = 3, 7, 2, 4
    torch.manual_seed(5)
    Wx = nn.Linear(n_inp, n * c)
    Wy = nn.Conv1d(c, c, 3, padding=1, padding_mode="circular")
    nn.init.normal_(Wx.weight, 0.0, 0.001)  # solo_init 'no'
    readout = nn.Linear(n * c, n_out)
    torch.manual_seed(5)
    m = WaveRNN(n_inp, n, c, n_out, v_init=False)
    assert torch.equal(m.cell.Wx.weight, Wx.weight) and torch.equal(m.cell.Wx.bias, Wx.bias)
    assert torch.equal(m.cell.Wy.bias, Wy.bias)
    assert torch.equal(m.readout.weight, readout.weight) and torch.equal(m.readout.bias, readout.bias)
    assert list(m.state_dict()) == ["cell.Wx.weight", "cell.Wx.bias", "cell.Wy.weight", "cell.Wy.bias",
                                    "readout.weight", "readout.bias"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="init"):
        WaveRNN(1, 4, 2, 1, init="diag")
    with pytest.raises(ValueError, match="activation"):
        WaveRNN(1, 4, 2, 1, activation="gelu")
    with pytest.raises(ValueError, match="readout"):
        WaveRNN(1, 4, 2, 1, readout="mean")
    with pytest.raises(ValueError, match="odd"):
        WaveRNN(1, 4, 2, 1, f=4)
    with pytest.raises(ValueError, match="init"):
        IRNN(1, 4, 1, init="diag")


# ---------------------------------------------------------------------------- the impulse test (spec 8.2)
def impulse_model(n, c, fused, init="fwd"):
    m = WaveRNN(1, n, c, 1, activation="identity", init=init, fused=fused).double()
    with torch.no_grad():
        m.cell.Wy.bias.zero_()
    return m


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=requires_fused)])
def test_impulse_moves_one_ring_position_down_per_step(fused):
    n, c, T = 7, 3, 17  # T > 2n: the impulse wraps around the ring twice
    x = torch.zeros(T, 1, 1, dtype=torch.float64)
    x[0] = 1.0
    H = impulse_model(n, c, fused).hidden_states(x)[:, 0]  # [T, c, n]
    for t in range(T):
        expected = torch.zeros(c, n, dtype=torch.float64)
        expected[:, (-t) % n] = 1.0  # injected at position 0, then t steps towards lower positions
        assert torch.equal(H[t], expected), f"step {t}: {H[t]}"


def test_impulse_with_eye_init_stays_put():
    x = torch.zeros(6, 1, 1, dtype=torch.float64)
    x[0] = 1.0
    H = impulse_model(5, 2, False, init="eye").hidden_states(x)[:, 0]
    assert (H[:, :, 0] == 1).all() and (H[:, :, 1:] == 0).all()


# ---------------------------------------------------------------------------- eager path semantics
@pytest.mark.parametrize("n_inp, activation", [(1, "relu"), (10, "tanh"), (2, "identity")])
def test_eager_loop_equals_reference_recurrence(n_inp, activation):
    """The official loop on the flat channel-major state equals the [B, c, n] reference recurrence."""
    torch.manual_seed(0)
    m = WaveRNN(n_inp, 6, 3, 2, activation=activation, init="rand", v_init=False, fused=False).double()
    x = torch.randn(9, 4, n_inp, dtype=torch.float64)
    u = m.cell.Wx(x).view(9, 4, 3, 6)
    expected = wave_rnn_ref(u, m.cell.Wy.weight, m.cell.Wy.bias, None, activation)
    torch.testing.assert_close(m.hidden_states(x), expected, rtol=1e-12, atol=1e-12)


def test_readouts_shapes_and_mlp():
    x = torch.rand(5, 3, 2)
    assert WaveRNN(2, 4, 2, 7, fused=False)(x).shape == (3, 7)
    assert WaveRNN(2, 4, 2, 7, readout="all", fused=False)(x).shape == (5, 3, 7)
    mlp = WaveRNN(2, 4, 2, 7, mlp_hidden=100, fused=False)
    assert isinstance(mlp.readout, nn.Sequential) and mlp(x).shape == (3, 7)
    assert IRNN(2, 4, 7)(x).shape == (3, 7) and IRNN(2, 4, 7, readout="all")(x).shape == (5, 3, 7)


# ---------------------------------------------------------------------------- fused == eager
def _fused_eager_pair(n_inp, readout, activation, mlp_hidden=0):
    torch.manual_seed(1)
    kw = dict(activation=activation, readout=readout, mlp_hidden=mlp_hidden)
    fused = WaveRNN(n_inp, 6, 3, 4, init="rand", v_init=False, fused=True, **kw).double()
    eager = WaveRNN(n_inp, 6, 3, 4, fused=False, **kw).double()
    eager.load_state_dict(fused.state_dict())  # the same parameters, interchangeable state dicts
    return fused, eager


@requires_fused
@pytest.mark.parametrize("n_inp, readout, activation", [
    (1, "last", "relu"),     # projection inside the kernel
    (2, "all", "tanh"),
    (10, "all", "relu"),     # one GEMM, then the recurrence
    (5, "last", "identity"),
])
def test_fused_equals_eager_forward_and_gradients(n_inp, readout, activation):
    fused, eager = _fused_eager_pair(n_inp, readout, activation)
    x = torch.randn(11, 3, n_inp, dtype=torch.float64)
    xf, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_f, out_e = fused(xf), eager(xe)
    torch.testing.assert_close(out_f, out_e, rtol=1e-10, atol=1e-10)
    cot = torch.randn_like(out_e)
    gf = torch.autograd.grad(out_f, [xf, *fused.parameters()], cot)
    ge = torch.autograd.grad(out_e, [xe, *eager.parameters()], cot)
    for a, b in zip(gf, ge):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@requires_fused
@pytest.mark.slow  # inductor's cold compile takes ~15 s on 2 cores
def test_fused_model_compiles_fullgraph():
    from helpers import check_compile

    fused, _ = _fused_eager_pair(2, "last", "relu")
    check_compile(fused.float(), [torch.rand(8, 3, 2)])


def test_fused_without_ops_raises_clear_error(monkeypatch):
    monkeypatch.setattr(wm, "_ops", None)
    monkeypatch.setattr(wm, "_OPS_ERROR", ImportError("not built"))
    with pytest.raises(RuntimeError, match="fused=True"):
        WaveRNN(2, 4, 2, 1, fused=True)(torch.rand(3, 2, 2))


# ---------------------------------------------------------------------------- iRNN (spec 8.7)
class OfficialIRNNCell(nn.Module):
    """rnn_model.RNN_Cell of the official code (n_ch = 1): h = act(Wx(x) + Wy(h))."""

    def __init__(self, n_inp, n):
        super().__init__()
        self.Wx, self.Wy = nn.Linear(n_inp, n), nn.Linear(n, n)
        nn.init.normal_(self.Wx.weight, 0.0, 0.001)
        nn.init.eye_(self.Wy.weight)
        nn.init.zeros_(self.Wy.bias)

    def forward(self, x, h):
        return torch.relu(self.Wx(x) + self.Wy(h))


@pytest.mark.parametrize("readout", ["last", "all"])
def test_irnn_equals_official_cell_with_eye_init(readout):
    torch.manual_seed(3)
    m = IRNN(3, 8, 2, init="eye", readout=readout).double()
    assert torch.equal(m.rnn.weight_hh_l0, torch.eye(8, dtype=torch.float64))
    assert (m.rnn.bias_hh_l0 == 0).all()
    assert 0.0005 < m.rnn.weight_ih_l0.std() < 0.002  # solo_init 'no': N(0, 0.001)
    cell = OfficialIRNNCell(3, 8).double()
    assert torch.equal(cell.Wy.weight, m.rnn.weight_hh_l0) and torch.equal(cell.Wy.bias, m.rnn.bias_hh_l0)
    with torch.no_grad():  # the encoder is random in both: share it
        cell.Wx.weight.copy_(m.rnn.weight_ih_l0)
        cell.Wx.bias.copy_(m.rnn.bias_ih_l0)
    x = torch.randn(12, 5, 3, dtype=torch.float64)
    h, outs = torch.zeros(5, 8, dtype=torch.float64), []
    for t in range(12):
        h = cell(x[t], h)
        outs.append(m.readout(h))
    expected = torch.stack(outs) if readout == "all" else outs[-1]
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)


def test_irnn_inits():
    fwd = IRNN(2, 6, 1, init="fwd").rnn.weight_hh_l0
    assert torch.equal(fwd, torch.roll(torch.eye(6), 1, -1))  # Sigma-init: h'[i] = h[i + 1]
    rand = IRNN(2, 6, 1, init="rand").rnn
    assert not torch.equal(rand.weight_hh_l0, torch.eye(6)) and (rand.bias_hh_l0 != 0).all()
    v = IRNN(2, 6, 1, encoder_init="v").rnn
    assert (v.weight_ih_l0[0] == 1).all() and (v.weight_ih_l0[1:] == 0).all() and (v.bias_ih_l0 == 0).all()
    default = IRNN(2, 600, 1, encoder_init="default").rnn.weight_ih_l0
    assert default.abs().max() <= 2 ** -0.5 and default.std() > 0.3  # Linear(2, n) default U(+-1/sqrt(2))
