"""Rotating layers and the autoencoder: the fused paths equal the official-code paths."""
import pytest
import torch

from helpers import assert_bad_input, check_compile, device_params
from phasor.rotating_features import (RotatingAutoEncoder, RotatingConv2d, RotatingConvTranspose2d,
                                      RotatingLinear)
from phasor.rotating_features.reference import lift_input

torch.set_default_dtype(torch.float32)


def twin(make):
    """A fused layer and an official-path twin with identical parameters and buffers (float64).

    Norm parameters and running statistics are randomised, as in a trained model. At init (mean 0,
    bias 0) a ConvTranspose position fed by one kernel tap has m = 0.5|psi| + 0.5 chi = 0 up to
    rounding and lands exactly on the ReLU threshold, where two correct summation orders round to
    opposite sides of the gate."""
    torch.manual_seed(0)
    fused = make(True).double()
    with torch.no_grad():
        for mod in fused.modules():
            if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    official = make(False).double()
    official.load_state_dict(fused.state_dict())
    return fused, official


def grads(module, out, cot):
    loss = sum((o * c).sum() for o, c in zip(out, cot))
    return torch.autograd.grad(loss, list(module.parameters()), allow_unused=True)


def assert_same(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


LAYERS = {
    "conv": (lambda f: RotatingConv2d(3, 5, stride=2, n=4, fused=f), (2, 4, 3, 9, 9)),
    "convT": (lambda f: RotatingConvTranspose2d(3, 5, n=4, fused=f), (2, 4, 3, 5, 5)),
    "linear": (lambda f: RotatingLinear(7, 6, n=4, fused=f), (3, 4, 7)),
}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layer_fused_equals_official(kind, training):
    make, shape = LAYERS[kind]
    fused, official = twin(make)
    fused.train(training), official.train(training)
    z = torch.randn(shape, dtype=torch.float64)
    mag = torch.linalg.vector_norm(z, dim=1)
    out_f = fused(z, mag)          # chi from the previous layer's magnitude (chi reuse)
    out_o = official(z)            # official: recompute |z|
    assert_same(out_f, out_o)
    cot = [torch.randn_like(o) for o in out_o]
    assert_same(grads(fused, fused(z, mag), cot), grads(official, official(z), cot))
    if training and hasattr(fused, "norm") and isinstance(fused.norm, torch.nn.BatchNorm2d):
        assert_same([fused.norm.running_mean, fused.norm.running_var], [official.norm.running_mean, official.norm.running_var])
        assert int(fused.norm.num_batches_tracked) == int(official.norm.num_batches_tracked) == 2


def test_chi_reuse_gradient_matches_recomputing_the_norm():
    """Spec §10.3: feeding mag_out forward gives the same gradients into the previous layer."""
    torch.manual_seed(1)
    l1, l2 = RotatingConv2d(2, 4, n=3).double(), RotatingConv2d(4, 3, n=3).double()
    z = torch.randn(2, 3, 2, 6, 6, dtype=torch.float64)
    z1, m1 = l1(z)
    a = l2(z1, m1)
    ga = torch.autograd.grad(sum(o.sum() for o in a), list(l1.parameters()))
    z1, m1 = l1(z)
    b = l2(z1)  # recompute |z1|
    gb = torch.autograd.grad(sum(o.sum() for o in b), list(l1.parameters()))
    assert_same(a, b)
    assert_same(ga, gb)


@pytest.mark.parametrize("training", [True, False])
def test_first_layer_lift_equals_official(training):
    """Spec §10.2: one conv on the image equals n + 1 convs on the lifted input (forward, weight grads)."""
    fused, official = twin(lambda f: RotatingConv2d(2, 5, stride=2, n=6, fused=f))
    fused.train(training), official.train(training)
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    out_f, out_o = fused.forward_lifted(x), official(lift_input(x, 6))
    assert_same(out_f, out_o)
    cot = [torch.randn_like(o) for o in out_o]
    assert_same(grads(fused, fused.forward_lifted(x), cot), grads(official, official(lift_input(x, 6)), cot))


def test_magnitudes_invariant_to_rotations_of_the_n_axis():
    """Spec §11.1: with zero rotation bias, magnitudes are O(n)-invariant, orientations equivariant."""
    torch.manual_seed(2)
    layer = RotatingConv2d(3, 4, n=5).double().eval()
    with torch.no_grad():
        layer.rot_bias.zero_()
        layer.norm.running_mean.uniform_(0, 1)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    z = torch.randn(2, 5, 3, 7, 7, dtype=torch.float64)
    zr = torch.einsum("ij,bjchw->bichw", q, z)
    out, mag = layer(z)
    out_r, mag_r = layer(zr)
    torch.testing.assert_close(mag_r, mag)
    torch.testing.assert_close(out_r, torch.einsum("ij,bjchw->bichw", q, out))


@pytest.mark.parametrize("training", [True, False])
def test_autoencoder_fused_equals_official(training):
    fused, official = twin(lambda f: RotatingAutoEncoder(1, 16, n=4, hidden_dim=4, linear_dim=8, fused=f))
    fused.train(training), official.train(training)
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    out_f, out_o = fused(x), official(x)
    assert out_f[0].shape == (3, 1, 16, 16) and out_f[1].shape == (3, 4, 1, 16, 16)
    assert_same(out_f, out_o)
    cot = [torch.randn_like(o) for o in out_o]
    assert_same(grads(fused, fused(x), cot), grads(official, official(x), cot))


def test_autoencoder_4shapes_config_shapes_and_parameter_count():
    m = RotatingAutoEncoder()  # the paper's 4Shapes configuration
    assert (m.n, m.in_channels, m.image_size, m.latent) == (8, 1, 32, 4)
    recon, rot = m(torch.rand(2, 1, 32, 32))
    assert recon.shape == (2, 1, 32, 32) and rot.shape == (2, 8, 1, 32, 32)
    assert 0 <= float(recon.min()) and float(recon.max()) <= 1


def _move_norms_off_their_init(model: torch.nn.Module, seed: int = 0):
    """Nonzero norm biases, as after training. At init (bias 0, running mean 0, eval mode) every
    site whose magnitude 0.5|psi| + 0.5 chi is zero sits exactly on the relu kink, and a
    ConvTranspose2d output fed by a single input makes |psi| = -chi exactly there; which side of the
    kink such a site lands on then depends on the last bit of |psi|, so eager, compiled and the
    float64 truth legitimately pick different subgradients (seen: 3e-4 in one BN-bias gradient)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                sign = torch.where(torch.rand(mod.bias.shape, generator=g) < 0.5, -1.0, 1.0)
                mod.bias.copy_(sign * (0.1 + 0.4 * torch.rand(mod.bias.shape, generator=g)))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_autoencoder_compiles_fullgraph(device, dtype):
    torch.manual_seed(3)
    m = RotatingAutoEncoder(1, 16, n=4, hidden_dim=4, linear_dim=8).to(device, dtype).eval()
    _move_norms_off_their_init(m)
    check_compile(m, [torch.rand(2, 1, 16, 16, device=device, dtype=dtype)], dtype)


def test_bad_inputs():
    layer = RotatingConv2d(3, 4, n=5)
    assert_bad_input(layer, torch.randn(2, 4, 3, 6, 6), names="z")            # n mismatch
    assert_bad_input(layer, torch.randn(2, 5, 2, 6, 6), names="z")            # channel mismatch
    assert_bad_input(layer, torch.randn(2, 5, 3, 6, 6), torch.rand(2, 3, 5, 6), names="mag")
    assert_bad_input(layer.forward_lifted, torch.rand(2, 2, 6, 6), names="x")
    lin = RotatingLinear(4, 3, n=2)
    assert_bad_input(lin, torch.randn(2, 2, 5), names="z")
    ae = RotatingAutoEncoder(1, 16, n=4, hidden_dim=4, linear_dim=8)
    assert_bad_input(ae, -torch.rand(2, 1, 16, 16), names="x")
    assert_bad_input(ae, torch.rand(2, 3, 16, 16), names="x")
    with pytest.raises(ValueError, match="n"):
        RotatingConv2d(3, 4, n=0)


def test_a_few_training_steps_reduce_the_loss():
    from phasor.rotating_features.data import generate_shapes
    torch.manual_seed(0)
    x = generate_shapes("4Shapes", "train", 16)["images"]
    m = RotatingAutoEncoder(1, 32, n=4, hidden_dim=8, linear_dim=16)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.mse_loss(m(x)[0], x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
