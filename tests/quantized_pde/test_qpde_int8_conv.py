"""Int8 convolution: bit-exact int32 accumulators, within one quantisation step of the
dequantised float conv, agreement with PyTorch's quantized conv (fbgemm), awkward shapes, bad inputs."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from helpers import cpu_isa  # noqa: F401  (fixture)
from helpers import assert_bad_input, check_opcheck, requires_cuda

from phasor.quantized_pde import ops
from phasor.quantized_pde import reference as ref

# (N, Ci, H, W, Co, k, stride, padding, dilation)
GEOMS = [
    (1, 3, 9, 11, 5, 3, 1, 1, 1),
    (2, 8, 16, 16, 6, 3, 2, 1, 1),
    (2, 5, 13, 7, 3, 3, 1, 2, 2),
    (3, 16, 8, 8, 17, 1, 1, 0, 1),
    # 1x1, stride 1, no padding (tiles read in place): a partial last tile, Ci not a multiple of 4
    (2, 6, 9, 13, 8, 1, 1, 0, 1),
    (2, 12, 10, 10, 8, 1, 1, 0, 1),
    # 1x1 that gathers: strided, padded
    (1, 8, 9, 9, 4, 1, 2, 0, 1),
    (1, 5, 6, 7, 4, 1, 1, 1, 1),
    (1, 4, 7, 30, 9, 5, 1, 2, 1),
    (1, 40, 6, 6, 4, 3, 1, 4, 3),
    (0, 4, 6, 6, 4, 3, 1, 1, 1),
]


def _case(geom, seed=0):
    N, Ci, H, W, Co, k, s, p, d = geom
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (N, Ci, H, W), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (Co, Ci, k, k), generator=g, dtype=torch.int8)
    ws = torch.rand(Co, generator=g) * 0.01 + 0.001
    bias = torch.randn(Co, generator=g)
    return x, w, ws, bias, [s, s], [p, p], [d, d]


@pytest.mark.parametrize("geom", GEOMS)
def test_accumulator_is_bit_exact(cpu_isa, geom):
    x, w, _, _, st, pad, dil = _case(geom)
    zp = -7
    got = ops.int8_conv2d(x, 1.0, zp, w, torch.ones(w.shape[0]), None, st, pad, dil)  # acc as float
    want = ref.int8_conv2d_accumulator_ref(x, zp, w, st, pad, dil)
    assert want.abs().max() < 2**24 if want.numel() else True  # exact in float32
    assert torch.equal(got.double(), want.double())


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("act", ["none", "relu", "gelu"])
def test_float_output_equals_dequantised_conv(cpu_isa, geom, act):
    x, w, ws, bias, st, pad, dil = _case(geom, 1)
    xs, zp = 0.03, 11
    got = ops.int8_conv2d(x, xs, zp, w, ws, bias, st, pad, dil, act)
    xf = (x.double() - zp) * xs
    wf = w.double() * ws.double().view(-1, 1, 1, 1)
    want = ref._act(F.conv2d(xf, wf, bias.double(), st, pad, dil), act)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("act", ["none", "relu", "gelu"])
def test_int8_output_within_one_step(cpu_isa, geom, act):
    x, w, ws, bias, st, pad, dil = _case(geom, 2)
    xs, zp, os_, oz = 0.03, -5, 0.2, 3
    got = ops.int8_conv2d(x, xs, zp, w, ws, bias, st, pad, dil, act, "int8", os_, oz)
    want = ref.int8_conv2d_ref(x, xs, zp, w, ws, bias, st, pad, dil, act, "int8", os_, oz)
    assert got.dtype == torch.int8
    assert (got.int() - want.int()).abs().max().item() <= 1 if got.numel() else True
    xf = (x.double() - zp) * xs
    wf = w.double() * ws.double().view(-1, 1, 1, 1)
    yf = ref._act(F.conv2d(xf, wf, bias.double(), st, pad, dil), act)
    deq = (got.double() - oz) * os_
    inside = (yf / os_ + oz > -128) & (yf / os_ + oz < 127)  # unsaturated outputs
    assert ((deq - yf).abs()[inside] <= os_ * 0.5 + 1e-4).all()  # within half a step of the float conv


@pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines, reason="needs fbgemm")
@pytest.mark.parametrize("geom", [g for g in GEOMS if g[0] > 0])
@pytest.mark.parametrize("relu", [False, True])
def test_equals_pytorch_quantized_conv(geom, relu):
    x, w, ws, bias, st, pad, dil = _case(geom, 3)
    xs, zp, os_, oz = 0.03, -5, 0.15, -20
    torch.backends.quantized.engine = "fbgemm"
    qx = torch._make_per_tensor_quantized_tensor((x.int() + 128).to(torch.uint8), xs, zp + 128)
    qw = torch._make_per_channel_quantized_tensor(w, ws.double(), torch.zeros(w.shape[0], dtype=torch.int64), 0)
    packed = torch.ops.quantized.conv2d_prepack(qw, bias, st, pad, dil, 1)
    conv = torch.ops.quantized.conv2d_relu if relu else torch.ops.quantized.conv2d
    yq = conv(qx, packed, os_, oz + 128)  # quint8 with zero point shifted by 128
    theirs = yq.int_repr().int() - 128
    ours = ops.int8_conv2d(x, xs, zp, w, ws, bias, st, pad, dil, "relu" if relu else "none", "int8", os_, oz).int()
    # fbgemm rounds the bias to int32 at scale s_x * s_w before adding it: one step at most
    assert (ours - theirs).abs().max().item() <= 1


def test_conv1d_equals_float_conv1d():
    g = torch.Generator().manual_seed(4)
    x = torch.randint(-128, 128, (2, 6, 37), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (5, 6, 5), generator=g, dtype=torch.int8)
    ws = torch.rand(5, generator=g) * 0.01 + 0.001
    b = torch.randn(5, generator=g)
    got = ops.int8_conv1d(x, 0.02, 4, w, ws, b, stride=2, padding=3, dilation=2, activation="relu")
    want = torch.relu(F.conv1d((x.double() - 4) * 0.02, w.double() * ws.double().view(-1, 1, 1), b.double(), 2, 3, 2))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_opcheck():
    x, w, ws, bias, st, pad, dil = _case(GEOMS[1])
    check_opcheck(torch.ops.phasor.int8_conv2d.default,
                  [x, 0.05, 1, w, ws, bias, st, pad, dil, "relu", "int8", 0.1, 0], with_grad=False)


def test_compile_fullgraph():
    x, w, ws, bias, st, pad, dil = _case(GEOMS[0])
    fn = lambda x: ops.int8_conv2d(x, 0.05, 1, w, ws, bias, st, pad, dil, "gelu")  # noqa: E731
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(x), fn(x), rtol=0, atol=0)


def test_bad_inputs():
    x, w, ws, bias, st, pad, dil = _case(GEOMS[0])
    c = ops.int8_conv2d
    assert_bad_input(c, x.float(), 0.1, 0, w, ws, bias, names="x")
    assert_bad_input(c, x, 0.1, 0, w.float(), ws, bias, names="weight")
    assert_bad_input(c, x, 0.0, 0, w, ws, bias, names="x_scale")
    assert_bad_input(c, x, 0.1, 200, w, ws, bias, names="x_zero_point")
    assert_bad_input(c, x, 0.1, 0, w, -ws, bias, names="w_scale")
    assert_bad_input(c, x, 0.1, 0, w, ws.double(), bias, names="w_scale")
    assert_bad_input(c, x, 0.1, 0, w, ws, bias[:2], names="bias")
    assert_bad_input(c, x, 0.1, 0, w[:, :2], ws, bias, names=["weight", "groups"])
    assert_bad_input(partial(c, activation="tanh"), x, 0.1, 0, w, ws, bias, names="activation")
    assert_bad_input(partial(c, output="int8", out_scale=-1.0), x, 0.1, 0, w, ws, bias, names="out_scale")
    assert_bad_input(partial(c, output="int8", out_zero_point=128), x, 0.1, 0, w, ws, bias, names="out_zero_point")
    assert_bad_input(partial(c, stride=0), x, 0.1, 0, w, ws, bias, names="stride")
    assert_bad_input(c, x[:, :, :1, :1], 0.1, 0, w, ws, bias, names="kernel")


@requires_cuda
@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("output", ["float", "int8"])
def test_cuda_matches_cpu(geom, output):
    x, w, ws, bias, st, pad, dil = _case(geom, 5)
    args = (0.03, -5, w, ws, bias, st, pad, dil, "gelu", output, 0.2, 3)
    cpu = ops.int8_conv2d(x, *args)
    gpu = ops.int8_conv2d(x.cuda(), args[0], args[1], *[a.cuda() for a in args[2:5]], *args[5:]).cpu()
    if output == "float":
        torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-4)
    else:
        assert (gpu.int() - cpu.int()).abs().max().item() <= 1 if cpu.numel() else True


def test_gelu_epilogue_is_as_accurate_as_float_rounding(cpu_isa):
    """The GELU epilogue (a vectorisable rational erf, not erff) against float64 GELU over [-7.7, 7.7]:
    within a few float32 roundings of the output; torch's own float32 GELU is looser than this."""
    x = torch.arange(-128, 128, dtype=torch.int8).view(1, 1, 16, 16)
    one = torch.ones(1, 1, 1, 1, dtype=torch.int8)
    for xs in torch.linspace(0.001, 0.06, 60).tolist():
        got = ops.int8_conv2d(x, xs, 0, one, torch.ones(1), None, 1, 0, 1, "gelu").double()
        want = F.gelu(x.double() * xs)
        assert (got - want).abs().max() <= 1e-6
        big = want.abs() > 1e-3
        assert ((got - want).abs() / want.abs())[big].max() <= 1e-5
    tail = torch.tensor([-128, -100, -20, -7], dtype=torch.int8).view(1, 1, 1, 4)  # GELU underflows to 0 there
    assert (ops.int8_conv2d(tail, 1.0, 0, one, torch.ones(1), None, 1, 0, 1, "gelu") == 0).all()
