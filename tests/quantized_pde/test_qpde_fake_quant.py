"""Fused fake quantization vs torch's fake_quantize ops, the LSQ autograd reference, gradcheck,
opcheck, torch.compile and bad inputs."""
import pytest
import torch
from helpers import cpu_isa  # noqa: F401  (fixture)
from helpers import (assert_bad_input, check_compile, check_gradcheck, check_opcheck, compare_with_reference,
                     noncontiguous, requires_cuda)

from phasor.quantized_pde import ops
from phasor.quantized_pde import reference as ref

SHAPES = [(1,), (7,), (3, 5, 9), (2, 3, 17, 5), (0, 4), (4, 9000)]  # odd, batch 1, empty, > one reduce block


def _tensor_args(shape, dtype, bits=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) * 2
    qmin, qmax = ops.quant_range(bits, False)
    scale = torch.tensor([4.0 / (qmax - qmin)], dtype=dtype)  # clips some of the tails
    zp = torch.tensor([float((qmax + qmin) // 2 - 1)], dtype=dtype)
    return x, scale, zp, qmin, qmax


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_tensor_equals_torch_forward_and_ste(cpu_isa, shape, bits):
    x, scale, zp, qmin, qmax = _tensor_args(shape, torch.float32, bits)
    x.requires_grad_()
    y = torch.ops.phasor.fake_quant_per_tensor(x, scale, zp, qmin, qmax)
    xt = x.detach().clone().requires_grad_()
    yt = torch.fake_quantize_per_tensor_affine(xt, scale, zp.int(), qmin, qmax)
    torch.testing.assert_close(y, yt, rtol=0, atol=0)
    cot = torch.randn(shape)
    (gx,) = torch.autograd.grad(y, x, cot)
    (gt,) = torch.autograd.grad(yt, xt, cot)
    torch.testing.assert_close(gx, gt, rtol=0, atol=0)


@pytest.mark.parametrize("shape,axis", [((6, 3, 3, 3), 0), ((5, 7), 1), ((2, 4, 33), 1), ((3, 2, 5), -1), ((4, 0, 2), 0)])
@pytest.mark.parametrize("bits", [3, 8])
def test_per_channel_equals_torch_forward_and_ste(cpu_isa, shape, axis, bits):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g) * 2).requires_grad_()
    C = shape[axis]
    scale = torch.rand(C, generator=g) * 0.3 + 0.05
    qmin, qmax = ops.quant_range(bits, True)
    y = torch.ops.phasor.fake_quant_per_channel(x, scale, axis, qmin, qmax)
    xt = x.detach().clone().requires_grad_()
    yt = torch.fake_quantize_per_channel_affine(xt, scale, torch.zeros(C, dtype=torch.int32), axis % x.dim(), qmin, qmax)
    torch.testing.assert_close(y, yt, rtol=0, atol=0)
    cot = torch.randn(shape)
    torch.testing.assert_close(torch.autograd.grad(y, x, cot)[0], torch.autograd.grad(yt, xt, cot)[0], rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_tensor_lsq_gradients_equal_autograd_reference(cpu_isa, shape, dtype):
    x, scale, zp, qmin, qmax = _tensor_args(shape, dtype, 4, seed=2)
    factor = ops.lsq_grad_factor(x.numel(), qmax)
    compare_with_reference(torch.ops.phasor.fake_quant_per_tensor, ref.fake_quant_per_tensor_ref,
                           [x, scale, zp, qmin, qmax, factor], dtype)
    compare_with_reference(torch.ops.phasor.fake_quant_per_tensor, ref.fake_quant_per_tensor_ref,
                           [noncontiguous(x), scale, zp, qmin, qmax, factor], dtype)


@pytest.mark.parametrize("shape,axis", [((6, 3, 3, 3), 0), ((2, 4, 33), 1), ((3, 2, 5), 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_channel_lsq_gradients_equal_autograd_reference(cpu_isa, shape, axis, dtype):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    scale = (torch.rand(shape[axis], generator=g, dtype=torch.float64) * 0.3 + 0.1).to(dtype)
    qmin, qmax = ops.quant_range(4, True)
    args = [x, scale, axis, qmin, qmax, 0.37]
    compare_with_reference(torch.ops.phasor.fake_quant_per_channel, ref.fake_quant_per_channel_ref, args, dtype)


def test_lsq_scale_gradient_equals_torch_learnable():
    x, scale, zp, qmin, qmax = _tensor_args((4, 33), torch.float32, 8, seed=4)
    factor = 0.25
    s1, z1 = scale.clone().requires_grad_(), zp.clone().requires_grad_()
    s2, z2 = scale.clone().requires_grad_(), zp.clone().requires_grad_()
    cot = torch.randn(4, 33)
    g1 = torch.autograd.grad(torch.ops.phasor.fake_quant_per_tensor(x, s1, z1, qmin, qmax, factor), (s1, z1), cot)
    y2 = torch._fake_quantize_learnable_per_tensor_affine(x, s2, z2, qmin, qmax, factor)
    g2 = torch.autograd.grad(y2, (s2, z2), cot)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


def test_gradients_do_not_depend_on_thread_count():
    x, scale, zp, qmin, qmax = _tensor_args((8, 20000), torch.float32, 6, seed=5)
    s = scale.clone().requires_grad_()
    cot = torch.randn(8, 20000)
    before = torch.get_num_threads()
    out = []
    for n in (1, 2):
        torch.set_num_threads(n)
        out.append(torch.autograd.grad(torch.ops.phasor.fake_quant_per_tensor(x, s, zp, qmin, qmax, 0.1), s, cot)[0])
    torch.set_num_threads(before)
    assert torch.equal(out[0], out[1])


def test_gradcheck_on_clipped_elements():
    # gradcheck is meaningful only where the LSQ gradient is the true derivative: on clipped
    # elements x_hat = (qmin - z) s or (qmax - z) s, so d x_hat / d s = qmin - z or qmax - z exactly
    # (inside the range x_hat is piecewise constant in x and the STE/LSQ gradients are surrogates,
    # checked against the autograd reference above instead).
    zp = torch.tensor([5.0], dtype=torch.float64)
    x = torch.cat([torch.linspace(-9, -3, 7), torch.linspace(3, 9, 7)]).double().reshape(2, 7)
    check_gradcheck(lambda s: torch.ops.phasor.fake_quant_per_tensor(x, s, zp, 0, 15, 1.0),
                    [torch.tensor([0.1], dtype=torch.float64)])
    w = torch.tensor([[-5.0, 4.0, 7.0], [3.0, -6.0, 2.5]], dtype=torch.float64)
    check_gradcheck(lambda s: torch.ops.phasor.fake_quant_per_channel(w, s, 0, -8, 7, 1.0),
                    [torch.tensor([0.1, 0.2], dtype=torch.float64)])


def test_opcheck():
    x, scale, zp, qmin, qmax = _tensor_args((3, 5, 9), torch.float32, 8)
    check_opcheck(torch.ops.phasor.fake_quant_per_tensor.default, [x, scale, zp, qmin, qmax, 0.5])
    check_opcheck(torch.ops.phasor.fake_quant_per_channel.default, [x, torch.rand(5) + 0.1, 1, -128, 127, 0.5])


class _QuantMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(6, 5))
        self.ws = torch.nn.Parameter(torch.full((6,), 0.05))
        self.s = torch.nn.Parameter(torch.tensor([0.05]))
        self.z = torch.nn.Parameter(torch.tensor([7.0]))

    def forward(self, x):
        xq = ops.fake_quant_per_tensor(x, self.s, self.z, 4)
        return xq @ ops.fake_quant_per_channel(self.w, self.ws, 0, 4).t()


def test_compile_fullgraph():
    torch.manual_seed(0)
    check_compile(_QuantMLP(), [torch.randn(4, 5) * 0.3])


def test_complex_per_channel_equals_real_view():
    torch.manual_seed(0)
    w = torch.randn(3, 4, 5, dtype=torch.cfloat)
    scale = torch.rand(4) * 0.1 + 0.05
    got = ops.fake_quant_complex_per_channel(w, scale, axis=1, bits=6)
    want = ref.fake_quant_per_channel_ref(torch.view_as_real(w), scale, 1, -32, 31)
    torch.testing.assert_close(torch.view_as_real(got), want, rtol=0, atol=0)


def test_bad_inputs():
    x, scale, zp, qmin, qmax = _tensor_args((3, 4), torch.float32)
    fq, fc = torch.ops.phasor.fake_quant_per_tensor, torch.ops.phasor.fake_quant_per_channel
    assert_bad_input(ops.fake_quant_per_tensor, x, scale, zp, 9, names="bits")
    assert_bad_input(ops.fake_quant_per_tensor, x, scale, zp, 1, names="bits")
    assert_bad_input(fq, x, torch.tensor([0.0]), zp, qmin, qmax, names="scale")
    assert_bad_input(fq, x, torch.tensor([-0.1]), zp, qmin, qmax, names="scale")
    assert_bad_input(fq, x, scale, torch.tensor([300.0]), qmin, qmax, names="zero_point")
    assert_bad_input(fq, x, scale.double(), zp, qmin, qmax, names="scale")
    assert_bad_input(fq, x, torch.ones(2), zp, qmin, qmax, names="scale")
    assert_bad_input(fq, x.int(), scale, zp, qmin, qmax, names="x")
    assert_bad_input(fq, x, scale, zp, 0, 200, names="quant_max")
    assert_bad_input(fc, x, torch.ones(4), 2, -8, 7, names="axis")
    assert_bad_input(fc, x, torch.ones(3), 1, -8, 7, names="scale")
    assert_bad_input(fc, x, torch.tensor([1.0, 0.0, 1.0, 1.0]), 1, -8, 7, names="scale")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    x, scale, zp, qmin, qmax = _tensor_args((3, 70, 50), dtype, 6, seed=6)
    cot = torch.randn(x.shape, dtype=dtype)
    outs = []
    for dev in ("cpu", "cuda"):
        xd, sd, zd = (t.to(dev).requires_grad_() for t in (x, scale, zp))
        y = torch.ops.phasor.fake_quant_per_tensor(xd, sd, zd, qmin, qmax, 0.1)
        outs.append([t.cpu() for t in (y, *torch.autograd.grad(y, (xd, sd, zd), cot.to(dev)))])
        sc = (torch.rand(70, dtype=dtype) + 0.1).to(dev).requires_grad_()
        yc = torch.ops.phasor.fake_quant_per_channel(xd, sc, 1, -32, 31, 0.1)
        outs[-1] += [t.cpu() for t in (yc, *torch.autograd.grad(yc, (xd, sc), cot.to(dev)))]
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
