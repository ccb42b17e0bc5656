"""The quantized-PDE CUDA kernels, run from their own source on the CPU (tools/cuda_emu), against the
CPU op on identical inputs: fused fake quantization (per tensor / per channel, forward and the
one-pass LSQ backward with its two-stage fixed-order sums, float32 and float64, bits 2..8), and the
int8 conv2d / conv1d through every kernel path PHASOR_QPDE_CUDA_KERNEL can force: the prep + mma
implicit GEMM (vectorised and scalar prep, vector and scalar NCHW stores), the direct 1x1 kernel
(16-byte cp.async or byte loads, word or byte weight loads), the direct 3x3 kernel (vec / non-vec),
and the dp4a kernel; int8 and float output, each epilogue, stride / padding / dilation, odd channel
counts, sizes that are not multiples of the tiles, misaligned and non-contiguous inputs.

Tolerances. Fake quant: forward and grad_x are elementwise and bit-exact; the scale / zero-point
gradients are double sums in a different (but fixed) order, so they agree to double rounding and,
stored as float32, to 1 ulp, under every CPU kernel build (the CPU backward keeps the fake-quant
product unfused, as the CUDA kernel does with __fmul_rn). Int8 conv: accumulators are exact integers; the float epilogue
fmaf(acc - corr, mult, bias) is the CPU's contracted line bit for bit, except (a) GELU: CUDA's
erff in float against the CPU's double evaluation (a few float ulp), and (b) the dp4a kernel's
unfused `float(acc) * mult + bias`, which nvcc contracts on a GPU but the emulator's host compiler
does not (1 rounding). An int8 output may then differ by 1 code, and only where y / out_scale lies
within float rounding of a .5 tie (checked, not assumed)."""

import pytest
import torch

from helpers import cpu_isa, emulated_cuda_ops, misaligned_copy  # noqa: F401  (cpu_isa: fixture)

from phasor.quantized_pde import ops

pytestmark = [pytest.mark.cuda_emu, pytest.mark.slow]

CPU = torch.ops.phasor
@pytest.fixture(scope="module")
def emu():
    return emulated_cuda_ops("quantized_pde")


# ---------------------------------------------------------------------------------- fake quant
def _fq_tensor_case(shape, dtype, bits, signed, seed=0):
    g = torch.Generator().manual_seed(seed)
    qmin, qmax = ops.quant_range(bits, signed)
    s = 4.0 / (qmax - qmin)  # clips some of both tails
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    flat = x.view(-1)
    k = min(flat.numel(), 64)  # values on (or next to) rounding ties of x / s
    flat[:k] = (torch.randint(-(1 << bits), 1 << bits, (k,), generator=g) + 0.5).double() * s
    zp = (qmax + qmin) / 2 - 0.3  # rounded by both (a learnable float zero point)
    return (x.to(dtype), torch.tensor([s], dtype=dtype), torch.tensor([zp], dtype=dtype), qmin, qmax,
            torch.randn(shape, generator=g, dtype=torch.float64).to(dtype))


def _sum_tol(dtype):
    # fixed-order double sums in another order: double rounding; cast to float32: 1 ulp
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1.2e-7, atol=1e-7)


def _assert_equal(e, c, what):
    assert e.shape == c.shape and e.dtype == c.dtype, what
    assert not torch.isnan(e).any(), f"{what} has NaN (a read of memory no thread wrote?)"
    assert torch.equal(e, c), f"{what}: max diff {(e.double() - c.double()).abs().max().item()}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("shape,signed", [((7,), False), ((3, 5, 9), True), ((2, 4100), False)])
def test_fake_quant_per_tensor(emu, cpu_isa, shape, signed, bits, dtype):
    """(2, 4100) spans three 4096-element partial blocks, the last one partial."""
    x, s, z, qmin, qmax, cot = _fq_tensor_case(shape, dtype, bits, signed, seed=bits)
    _assert_equal(emu.fake_quant_per_tensor(x, s, z, qmin, qmax, 0.37), CPU.fake_quant_per_tensor(x, s, z, qmin, qmax),
                  "y")
    e = emu.fake_quant_per_tensor_bwd(cot, x, s, z, qmin, qmax, 0.37)
    c = CPU.fake_quant_per_tensor_bwd(cot, x, s, z, qmin, qmax, 0.37)
    _assert_equal(e[0], c[0], "grad_x")
    for i, name in ((1, "grad_scale"), (2, "grad_zero_point")):
        assert c[i].abs().item() > 0, name  # some elements clip: both gradients are exercised
        torch.testing.assert_close(e[i], c[i], **_sum_tol(dtype), msg=lambda m: f"{name}: {m}")


def test_fake_quant_per_tensor_many_partials(emu, cpu_isa):
    """> 256 partial blocks: the final sum kernel's threads add several partials each. Also a
    non-contiguous x and grad (both ops copy them to contiguous first)."""
    x, s, z, qmin, qmax, cot = _fq_tensor_case((260, 4099), torch.float32, 8, False, seed=20)
    x, cot = x.t().contiguous().t(), cot.t().contiguous().t()
    assert not x.is_contiguous()
    _assert_equal(emu.fake_quant_per_tensor(x, s, z, qmin, qmax), CPU.fake_quant_per_tensor(x, s, z, qmin, qmax), "y")
    e = emu.fake_quant_per_tensor_bwd(cot, x, s, z, qmin, qmax, 1e-3)
    c = CPU.fake_quant_per_tensor_bwd(cot, x, s, z, qmin, qmax, 1e-3)
    _assert_equal(e[0], c[0], "grad_x")
    for i in (1, 2):
        torch.testing.assert_close(e[i], c[i], **_sum_tol(torch.float32))


def test_fake_quant_non_finite_inputs(emu, cpu_isa):
    """NaN passes through the clamp in both; +-inf clip (zero grad_x, edge scale gradient)."""
    x, s, z, qmin, qmax, cot = _fq_tensor_case((5, 7), torch.float32, 4, False, seed=22)
    x[0, :3] = torch.tensor([float("inf"), -float("inf"), float("nan")])
    x[1, 0] = float("nan")
    same = dict(rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(emu.fake_quant_per_tensor(x, s, z, qmin, qmax),
                               CPU.fake_quant_per_tensor(x, s, z, qmin, qmax), **same)
    for e, c in zip(emu.fake_quant_per_tensor_bwd(cot, x, s, z, qmin, qmax, 0.5),
                    CPU.fake_quant_per_tensor_bwd(cot, x, s, z, qmin, qmax, 0.5)):
        torch.testing.assert_close(e, c, **same)
    sc = torch.full((5,), 0.3)
    torch.testing.assert_close(emu.fake_quant_per_channel(x, sc, 0, -8, 7), CPU.fake_quant_per_channel(x, sc, 0, -8, 7),
                               **same)
    for e, c in zip(emu.fake_quant_per_channel_bwd(cot, x, sc, 0, -8, 7, 0.5),
                    CPU.fake_quant_per_channel_bwd(cot, x, sc, 0, -8, 7, 0.5)):
        torch.testing.assert_close(e, c, **same)


def _fq_channel_case(shape, axis, dtype, bits, seed=0):
    g = torch.Generator().manual_seed(seed)
    qmin, qmax = ops.quant_range(bits, True)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    C = shape[axis]
    scale = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5) * 3.0 / qmax  # clips the tails
    row = x.movedim(axis, 0)[0]  # a view: channel 0, where some x / s land on rounding ties
    ties = (torch.randint(qmin, qmax, row.shape, generator=g) + 0.5).double() * scale[0]
    pick = torch.rand(row.shape, generator=g) < 0.3
    row[pick] = ties[pick]
    return (x.to(dtype), scale.to(dtype), qmin, qmax, torch.randn(shape, generator=g, dtype=torch.float64).to(dtype))


@pytest.mark.parametrize("dtype,bits", [(torch.float32, b) for b in range(2, 9)] + [(torch.float64, 3), (torch.float64, 8)])
@pytest.mark.parametrize("shape,axis", [((3, 5, 9), 1), ((4, 7), 0), ((2, 3, 13), -1), ((2, 3, 17, 19), 1)])
def test_fake_quant_per_channel(emu, cpu_isa, shape, axis, bits, dtype):
    """inner 1 (axis -1: one element per row, 78 one-block rows), inner 323 > 256 threads (several
    elements per thread)."""
    x, s, qmin, qmax, cot = _fq_channel_case(shape, axis, dtype, bits, seed=bits)
    _assert_equal(emu.fake_quant_per_channel(x, s, axis, qmin, qmax, 0.5),
                  CPU.fake_quant_per_channel(x, s, axis, qmin, qmax), "y")
    e = emu.fake_quant_per_channel_bwd(cot, x, s, axis, qmin, qmax, 0.37)
    c = CPU.fake_quant_per_channel_bwd(cot, x, s, axis, qmin, qmax, 0.37)
    _assert_equal(e[0], c[0], "grad_x")
    torch.testing.assert_close(e[1], c[1], **_sum_tol(dtype))


def test_fake_quant_per_channel_many_rows(emu, cpu_isa):
    """260 outer rows per channel (> 256: a thread of the column sum adds several partials) and a
    non-contiguous x."""
    x, s, qmin, qmax, cot = _fq_channel_case((260, 2, 3), 1, torch.float32, 4, seed=21)
    xt = x.transpose(0, 2).contiguous().transpose(0, 2)
    for xx in (x, xt):
        _assert_equal(emu.fake_quant_per_channel(xx, s, 1, qmin, qmax), CPU.fake_quant_per_channel(xx, s, 1, qmin, qmax),
                      "y")
        e = emu.fake_quant_per_channel_bwd(cot, xx, s, 1, qmin, qmax, 1e-2)
        c = CPU.fake_quant_per_channel_bwd(cot, xx, s, 1, qmin, qmax, 1e-2)
        _assert_equal(e[0], c[0], "grad_x")
        torch.testing.assert_close(e[1], c[1], **_sum_tol(torch.float32))


def test_fake_quant_rejects_16_bit(emu):
    x = torch.randn(5, dtype=torch.float16)
    one = torch.ones(1, dtype=torch.float16)
    with pytest.raises(TypeError, match="float32 and float64"):
        emu.fake_quant_per_tensor(x, one, one * 0, 0, 255)
    with pytest.raises(TypeError, match="float32 and float64"):
        emu.fake_quant_per_channel(x, torch.ones(5, dtype=torch.float16), 0, -8, 7)


# ------------------------------------------------------------------------------------- int8 conv
# (N, Ci, H, W, Co, kh, kw, stride, padding, dilation)
MMA_GEOMS = [
    (1, 3, 9, 11, 5, 3, 3, (1, 1), (1, 1), (1, 1)),       # Ci < 32, one tile
    (2, 17, 13, 7, 10, 3, 3, (2, 2), (1, 1), (1, 1)),     # stride 2
    (3, 17, 10, 12, 70, 3, 3, (1, 1), (2, 2), (2, 2)),    # dilation 2; Co 70: two channel tiles; M 360: 3 pixel tiles
    (2, 40, 9, 9, 80, 3, 3, (1, 1), (1, 1), (1, 2)),      # Cp 64: 18 k chunks, 9 stages (> 3-stage ring)
    (1, 8, 12, 20, 3, 5, 5, (1, 1), (2, 2), (1, 1)),      # 5x5
    (2, 16, 8, 8, 16, 3, 3, (1, 1), (1, 1), (1, 1)),      # HW 64: vectorised prep, 16-byte stores
    (1, 33, 6, 10, 7, 2, 3, (2, 1), (0, 1), (1, 2)),      # asymmetric kernel / stride / padding / dilation
    (2, 64, 8, 8, 64, 1, 1, (1, 1), (0, 0), (1, 1)),      # 1x1 through the GEMM
    (1, 100, 5, 5, 9, 3, 3, (1, 1), (0, 0), (1, 1)),      # Cp 128, odd tap count x chunks
    (2, 32, 3, 2, 64, 5, 5, (3, 1), (2, 2), (1, 1)),      # kernel larger than the input; Ci 32, Co 64 exactly
]
CONV1X1_GEOMS = [
    (2, 17, 13, 7, 10, 1, 1, (1, 1), (0, 0), (1, 1)),     # HW 91: byte loads / stores; Ci odd: byte weights
    (2, 64, 16, 16, 64, 1, 1, (1, 1), (0, 0), (1, 1)),    # 16-byte path, word weights
    (1, 256, 12, 12, 70, 1, 1, (1, 1), (0, 0), (1, 1)),   # Cp 256 (the limit): 8 k chunks > 4 stages; Co 70
    (1, 36, 20, 20, 5, 1, 1, (1, 1), (0, 0), (2, 3)),     # HW 400: 4 pixel tiles, the last partial; dilation
    (1, 200, 3, 50, 130, 1, 1, (1, 1), (0, 0), (1, 1)),   # Cp 224, HW 150 (byte path), 3 channel tiles
    (3, 7, 1, 1, 9, 1, 1, (1, 1), (0, 0), (1, 1)),        # one pixel per image
]
CONV3X3_GEOMS = [
    (1, 3, 9, 11, 5, 3, 3, (1, 1), (1, 1), (1, 1)),       # byte path, H not a multiple of 4
    (2, 17, 6, 16, 10, 3, 3, (1, 1), (1, 1), (1, 1)),     # vec path (W 16), half a column tile
    (1, 40, 7, 32, 70, 3, 3, (1, 1), (1, 1), (1, 1)),     # vec, 2 k chunks, Co 70
    (1, 70, 5, 35, 9, 3, 3, (1, 1), (1, 1), (1, 1)),      # Cp 96: 3 k chunks; W 35: 2 column tiles, byte path
    (2, 8, 9, 48, 3, 3, 3, (1, 1), (1, 1), (1, 1)),       # vec, second column tile half empty
    (2, 5, 1, 3, 4, 3, 3, (1, 1), (1, 1), (1, 1)),        # a 1 x 3 image: all but one tap row padded
]
DP4A_GEOMS = [MMA_GEOMS[i] for i in (0, 1, 2, 4, 6)] + [CONV1X1_GEOMS[0], CONV3X3_GEOMS[3]]
PATHS = {"mma": MMA_GEOMS, "mma1x1": CONV1X1_GEOMS, "mma3x3": CONV3X3_GEOMS, "dp4a": DP4A_GEOMS}
PATH_CASES = [(k, geom) for k, geoms in PATHS.items() for geom in geoms]
ACTS = ["none", "relu", "gelu"]


def _conv_case(geom, seed):
    N, Ci, H, W, Co, kh, kw, st, pad, dil = geom
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (N, Ci, H, W), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (Co, Ci, kh, kw), generator=g, dtype=torch.int8)
    ws = torch.rand(Co, generator=g) * 0.01 + 0.001
    bias = torch.randn(Co, generator=g)
    return x, w, ws, bias, list(st), list(pad), list(dil)


def _conv(ns, x, x_scale, x_zp, w, ws, bias, st, pad, dil, act="none", output="float", out_scale=1.0, out_zp=0):
    return ns.int8_conv2d(x, x_scale, x_zp, w, ws, bias, st, pad, dil, act, output, out_scale, out_zp)


def _assert_conv_matches(e, c, act, kernel, y_float=None, out_scale=1.0, out_zp=0):
    """y_float: the CPU's float output for the same conv (before requantisation), for int8 outputs."""
    assert e.shape == c.shape and e.dtype == c.dtype
    exact = act != "gelu" and kernel != "dp4a"  # see the module docstring
    if c.dtype == torch.float32:
        assert not torch.isnan(e).any(), "NaN in the output (a read of memory no thread wrote?)"
        if exact:
            assert torch.equal(e, c), f"max diff {(e - c).abs().max().item()}"
        else:  # a few float roundings of |y| (GELU's erff; one unfused rounding in dp4a)
            torch.testing.assert_close(e, c, rtol=4e-7, atol=4e-7 * max(1.0, c.abs().max().item()))
        return
    d = (e.int() - c.int()).abs()
    if exact:
        assert d.max().item() == 0, f"{int((d > 0).sum())} int8 outputs differ"
        return
    assert d.max().item() <= 1
    if d.max().item() == 1:  # only at a rounding tie of y / out_scale, after clamping
        q = y_float.double() / out_scale  # float32(1 / out_scale) vs exact: far below the tolerance
        frac = (q - q.floor() - 0.5).abs()
        clamped = (c.int() == -128) | (c.int() == 127)
        bad = (d > 0) & ~clamped & (frac > 1e-5 * q.abs().clamp(min=1.0))
        assert not bad.any(), f"{int(bad.sum())} int8 outputs differ by 1 away from a rounding tie"


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("kernel,geom", PATH_CASES)
def test_int8_conv_path_matches_cpu(emu, monkeypatch, kernel, geom, act):
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", kernel)
    x, w, ws, bias, st, pad, dil = _conv_case(geom, 11)
    args = (x, 0.03, -37, w, ws, bias, st, pad, dil, act)
    cf = _conv(CPU, *args, "float")
    _assert_conv_matches(_conv(emu, *args, "float"), cf, act, kernel)
    _assert_conv_matches(_conv(emu, *args, "int8", 0.2, 3), _conv(CPU, *args, "int8", 0.2, 3), act, kernel, cf, 0.2)


@pytest.mark.parametrize("kernel,geom", PATH_CASES)
def test_int8_conv_accumulators_bit_exact(emu, monkeypatch, kernel, geom):
    """x_scale = w_scale = 1, no bias, float output: the output is the int32 accumulator (< 2^24)."""
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", kernel)
    x, w, _, _, st, pad, dil = _conv_case(geom, 12)
    ones = torch.ones(w.shape[0])
    e, c = _conv(emu, x, 1.0, 19, w, ones, None, st, pad, dil), _conv(CPU, x, 1.0, 19, w, ones, None, st, pad, dil)
    assert c.abs().max().item() < 2**24 and torch.equal(c, c.round())
    _assert_equal(e, c, "accumulators")


@pytest.mark.parametrize("x_zp,out_zp", [(-128, 127), (127, -128), (0, 0)])
@pytest.mark.parametrize("kernel,geom", [("mma", MMA_GEOMS[2]), ("mma1x1", CONV1X1_GEOMS[0]),
                                         ("mma3x3", CONV3X3_GEOMS[1]), ("mma3x3", CONV3X3_GEOMS[0]),
                                         ("dp4a", MMA_GEOMS[1])])
def test_int8_conv_extreme_zero_points(emu, monkeypatch, kernel, geom, x_zp, out_zp):
    """The padding value is the zero point: -128 / 127 fill every byte of the padded chunks."""
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", kernel)
    x, w, ws, bias, st, pad, dil = _conv_case(geom, 13)
    args = (x, 0.05, x_zp, w, ws, bias, st, pad, dil, "relu")
    cf = _conv(CPU, *args, "float")
    _assert_conv_matches(_conv(emu, *args, "float"), cf, "relu", kernel)
    _assert_conv_matches(_conv(emu, *args, "int8", 0.3, out_zp), _conv(CPU, *args, "int8", 0.3, out_zp), "relu", kernel,
                         cf, 0.3)


@pytest.mark.parametrize("kernel,geom", [("mma", MMA_GEOMS[5]), ("mma1x1", CONV1X1_GEOMS[1]),
                                         ("mma3x3", CONV3X3_GEOMS[2]), ("dp4a", MMA_GEOMS[5])])
def test_int8_conv_misaligned_and_noncontiguous(emu, monkeypatch, kernel, geom):
    """Geometries whose aligned inputs take the vectorised paths: a misaligned x (and weight) must
    switch to the scalar prep / byte loads / byte weights; channels_last is made contiguous."""
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", kernel)
    x, w, ws, bias, st, pad, dil = _conv_case(geom, 14)
    for output in ("float", "int8"):
        rest = (0.03, 5, w, ws, bias, st, pad, dil, "relu", output, 0.2, -3)
        want = _conv(CPU, x, *rest)
        _assert_conv_matches(_conv(emu, misaligned_copy(x), *rest), want, "relu", kernel)
        rest_w = (0.03, 5, misaligned_copy(w), ws, bias, st, pad, dil, "relu", output, 0.2, -3)
        _assert_conv_matches(_conv(emu, x, *rest_w), want, "relu", kernel)
        xc = x.contiguous(memory_format=torch.channels_last)
        _assert_conv_matches(_conv(emu, xc, *rest), want, "relu", kernel)


# (N, Ci, L, Co, k, stride, padding, dilation): int8_conv1d is a height-1 int8_conv2d
CONV1D = [(2, 6, 37, 5, 5, 2, 3, 2), (3, 5, 33, 3, 1, 1, 0, 1), (2, 40, 64, 70, 3, 1, 1, 1), (1, 9, 20, 4, 3, 1, 1, 1)]


@pytest.mark.parametrize("kernel", ["auto", "mma", "dp4a"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", CONV1D)
def test_int8_conv1d_matches_cpu(emu, monkeypatch, case, act, kernel):
    """k = 1 takes the direct 1x1 kernel under auto; k = 3 padding 1 is not the 3x3 kernel's
    (no height padding) and takes the GEMM."""
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", kernel)
    N, Ci, L, Co, k, s, p, d = case
    g = torch.Generator().manual_seed(16)
    x = torch.randint(-128, 128, (N, Ci, 1, L), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (Co, Ci, 1, k), generator=g, dtype=torch.int8)
    ws, b = torch.rand(Co, generator=g) * 0.01 + 0.001, torch.randn(Co, generator=g)
    args = (x, 0.02, 4, w, ws, b, [1, s], [0, p], [1, d], act)
    cf = _conv(CPU, *args, "float")
    _assert_conv_matches(_conv(emu, *args, "float"), cf, act, kernel)
    _assert_conv_matches(_conv(emu, *args, "int8", 0.1, -2), _conv(CPU, *args, "int8", 0.1, -2), act, kernel, cf, 0.1)


@pytest.mark.parametrize("geom", [MMA_GEOMS[1], CONV1X1_GEOMS[4], CONV3X3_GEOMS[3],
                                  (1, 300, 4, 5, 6, 1, 1, (1, 1), (0, 0), (1, 1))])
def test_int8_conv_auto_matches_cpu(emu, monkeypatch, geom):
    """auto: the 1x1, 3x3 and GEMM kernels by geometry; a 1x1 conv with Ci 300 > 256 takes the GEMM."""
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "auto")
    x, w, ws, bias, st, pad, dil = _conv_case(geom, 15)
    args = (x, 0.03, -7, w, ws, bias, st, pad, dil, "relu")
    for output in ("float", "int8"):
        _assert_conv_matches(_conv(emu, *args, output, 0.2, 1), _conv(CPU, *args, output, 0.2, 1), "relu", "auto")


def test_int8_conv_env_var(emu, monkeypatch):
    x, w, ws, bias, st, pad, dil = _conv_case(MMA_GEOMS[0], 18)
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "cutlass")
    with pytest.raises(ValueError, match="PHASOR_QPDE_CUDA_KERNEL"):
        _conv(emu, x, 0.03, 0, w, ws, bias, st, pad, dil)
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "mma1x1")
    with pytest.raises(ValueError, match="mma1x1"):
        _conv(emu, x, 0.03, 0, w, ws, bias, st, pad, dil)
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "mma3x3")
    with pytest.raises(ValueError, match="mma3x3"):
        _conv(emu, x, 0.03, 0, w, ws, bias, [2, 2], pad, dil)


def test_int8_conv_empty_batch(emu, monkeypatch):
    x, w, ws, bias, st, pad, dil = _conv_case(MMA_GEOMS[0], 18)
    for k in ("auto", "mma", "mma3x3", "dp4a"):
        monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", k)
        e = _conv(emu, x[:0], 0.03, 1, w, ws, bias, st, pad, dil, "relu", "int8", 0.1, 0)
        assert e.shape == (0, 5, 9, 11) and e.dtype == torch.int8


def test_int8_conv_repeats_bitwise(emu, monkeypatch):
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "mma")
    x, w, ws, bias, st, pad, dil = _conv_case(MMA_GEOMS[3], 19)
    a, b = (_conv(emu, x, 0.03, 2, w, ws, bias, st, pad, dil, "gelu") for _ in range(2))
    assert torch.equal(a, b)
