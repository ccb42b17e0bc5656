"""QAT workflow: prepare_qat / calibrate / train / convert on every architecture; the int8 model
matches the QAT model's fake-quant output; state_dict round trips; bit-width validation."""
import copy

import pytest
import torch

from phasor.quantized_pde import models, qat

ARCHS = [("resnet", 1), ("dilresnet", 1), ("unet", 1), ("fno", 1), ("resnet", 2), ("unet", 2), ("fno", 2),
         ("dilresnet", 2)]


def _setup(arch, ndim, wb=4, ab=4, seed=0):
    torch.manual_seed(seed)
    model = models.build(arch, ndim, 2, 8, 4)
    x = torch.randn(3, 2, *([16] * ndim))
    q = qat.prepare_qat(copy.deepcopy(model), wb, ab)
    qat.calibrate(q, [x])
    return model, q, x


@pytest.mark.parametrize("arch,ndim", ARCHS)
def test_converted_matches_fake_quant(arch, ndim):
    _, q, x = _setup(arch, ndim)
    with torch.no_grad():
        want = q(x)
        got = qat.convert(copy.deepcopy(q))(x)
    assert any(isinstance(m, qat.Int8Conv) for m in qat.convert(copy.deepcopy(q)).modules())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_prepare_places_quantizers_and_keeps_first_last_at_8_bits():
    model, q, _ = _setup("resnet", 1, wb=4, ab=6)
    qc = [m for m in q.modules() if isinstance(m, qat.QuantConv)]
    n_convs = sum(isinstance(m, qat.CONVS) for m in model.modules())
    assert len(qc) == n_convs
    assert (qc[0].weight_bits, qc[0].act_quant.bits) == (8, 8)
    assert (qc[-1].weight_bits, qc[-1].act_quant.bits) == (8, 8)
    assert all((m.weight_bits, m.act_quant.bits) == (4, 6) for m in qc[1:-1])
    assert all(m.conv.bias is not None and m.conv.bias.dtype == torch.float32 for m in qc)  # biases float
    q2 = qat.prepare_qat(copy.deepcopy(model), 4, 6, keep_first_last_8bit=False)
    assert all(m.weight_bits == 4 for m in q2.modules() if isinstance(m, qat.QuantConv))


def test_calibrated_weights_and_activations_are_on_the_grid():
    _, q, x = _setup("resnet", 1, wb=3, ab=4)
    m = [m for m in q.modules() if isinstance(m, qat.QuantConv)][1]
    w = m.quantized_weight().detach()
    codes = w / m.weight_scale.detach().view(-1, 1, 1)
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 4
    assert len(torch.unique(m.act_quant(torch.randn(1000)).detach())) <= 16


def test_qat_training_step_updates_scales():
    _, q, x = _setup("fno", 1)
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    scales = [p for n, p in q.named_parameters() if n.endswith("scale")]
    before = [s.detach().clone() for s in scales]
    loss = (q(x) - x).square().mean()
    loss.backward()
    assert all(s.grad is not None for s in scales)
    opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, scales))


@pytest.mark.parametrize("converted", [False, True])
def test_state_dict_round_trip(converted):
    model, q, x = _setup("unet", 2)
    if converted:
        q = qat.convert(q)
    fresh = qat.prepare_qat(models.build("unet", 2, 2, 8, 4), 4, 4)
    if converted:
        fresh = qat.convert(fresh)
    fresh.load_state_dict(q.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), q(x), rtol=0, atol=0)


def test_bad_bits():
    model = models.build("resnet", 1, 1, 8)
    for wb, ab in ((1, 8), (9, 8), (8, 1), (8, 16)):
        with pytest.raises(ValueError, match="bits"):
            qat.prepare_qat(copy.deepcopy(model), wb, ab)


@pytest.mark.parametrize("arch,ndim", [("fno", 1), ("unet", 2)])
def test_per_sample_input_scaling(arch, ndim):
    """models.build(..., input_scaling="per_sample"): scale-equivariant (f(c u) = c f(u)), quantised and
    converted like the plain model, on the same activation grid at any amplitude."""
    torch.manual_seed(0)
    model = models.build(arch, ndim, 2, 8, 4, input_scaling="per_sample")
    x = torch.randn(3, 2, *([16] * ndim))
    with torch.no_grad():
        torch.testing.assert_close(model(100.0 * x), 100.0 * model(x), rtol=1e-4, atol=1e-4)
    q = qat.prepare_qat(copy.deepcopy(model), 8, 8)
    qat.calibrate(q, [x])
    with torch.no_grad():
        torch.testing.assert_close(q(0.01 * x), 0.01 * q(x), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(qat.convert(copy.deepcopy(q))(x), q(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,ndim", [("resnet", 1), ("fno", 2)])
def test_per_sample_scaling_with_log_rms_channel(arch, ndim):
    """input_scaling="per_sample_log_rms": the model sees u / s and log s (one more channel), returns
    C channels; it equals the inner model run by hand; QAT and convert work on it; bad names raise."""
    torch.manual_seed(0)
    model = models.build(arch, ndim, 2, 8, 4, input_scaling="per_sample_log_rms")
    x = torch.randn(3, 2, *([16] * ndim)) * torch.tensor([0.01, 1.0, 30.0]).view(3, *([1] * (ndim + 1)))
    s = x.pow(2).mean(dim=tuple(range(1, x.dim())), keepdim=True).sqrt()
    with torch.no_grad():
        by_hand = model.model(torch.cat([x / s, s.log().expand(3, 1, *x.shape[2:])], 1))[:, :2] * s
        torch.testing.assert_close(model(x), by_hand)
    q = qat.prepare_qat(copy.deepcopy(model), 8, 8)
    qat.calibrate(q, [x])
    with torch.no_grad():
        torch.testing.assert_close(qat.convert(copy.deepcopy(q))(x), q(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="input_scaling"):
        models.build(arch, ndim, 2, 8, 4, input_scaling="per_channel")


@pytest.mark.parametrize("arch,ndim", [("resnet", 2), ("unet", 1), ("fno", 2)])
def test_convert_fuses_the_following_activation(arch, ndim):
    """In an nn.Sequential, a conv's GELU/ReLU runs in its Int8Conv's epilogue (the module becomes
    Identity); the converted model still matches the fake-quant model; tanh-GELU is left alone."""
    model, q, x = _setup(arch, ndim, 8, 8)
    converted = qat.convert(copy.deepcopy(q))
    fused = [m for m in converted.modules() if isinstance(m, qat.Int8Conv) and m.activation == "gelu"]
    assert fused and any(isinstance(m, torch.nn.Identity) for m in converted.modules())
    with torch.no_grad():
        torch.testing.assert_close(converted(x), q(x), rtol=1e-4, atol=1e-4)
    seq = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.GELU(approximate="tanh"))
    qs = qat.prepare_qat(seq, 8, 8, keep_first_last_8bit=False)
    qat.calibrate(qs, [torch.randn(2, 2, 16)])
    plain = qat.convert(qs)
    assert isinstance(plain[1], torch.nn.GELU) and plain[0].activation == "none"
