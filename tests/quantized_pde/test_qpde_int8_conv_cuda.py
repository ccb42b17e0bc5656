"""CUDA int8 conv (tensor-core mma path, direct 1x1 path and dp4a fallback, chosen with
PHASOR_QPDE_CUDA_KERNEL) against the CPU op on identical inputs, and the CUDA fake-quant reductions on large tensors.
Every test here needs a GPU (skipped otherwise; conftest gives them the `cuda` mark)."""
import pytest
import torch
from helpers import misaligned_copy, requires_cuda

from phasor.quantized_pde import ops
from phasor.quantized_pde import reference as ref

pytestmark = requires_cuda

# (N, Ci, H, W, Co, k, stride, padding, dilation): channel counts below, at and above one 32-wide
# k chunk, Co below / at / above the 64-channel tile, odd sizes, batch 1, 1x1 / 3x3 / 5x5,
# pixel counts that are and are not multiples of 16 (the vectorised prep and store paths).
GEOMS = [
    (1, 3, 9, 11, 5, 3, 1, 1, 1),
    (2, 17, 13, 7, 10, 3, 2, 1, 1),
    (1, 3, 8, 8, 10, 3, 2, 0, 1),
    (3, 17, 10, 12, 64, 3, 1, 2, 2),
    (2, 40, 9, 9, 80, 3, 1, 1, 2),
    (2, 64, 16, 16, 64, 3, 1, 1, 1),
    (2, 64, 16, 16, 64, 1, 1, 0, 1),
    (1, 64, 15, 17, 1, 1, 2, 0, 1),
    (1, 8, 12, 20, 3, 5, 1, 2, 1),
    (2, 64, 40, 24, 64, 3, 1, 1, 1),
]
KERNELS = ["mma", "dp4a"]


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", request.param)
    return request.param


def _inputs(geom, seed):
    N, Ci, H, W, Co, k, s, p, d = geom
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (N, Ci, H, W), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (Co, Ci, k, k), generator=g, dtype=torch.int8)
    ws = torch.rand(Co, generator=g) * 0.01 + 0.001
    bias = torch.randn(Co, generator=g)
    return x, w, ws, bias, [s, s], [p, p], [d, d]


def _both(x, x_scale, x_zp, w, ws, bias, st, pad, dil, act="none", output="float", out_scale=1.0, out_zp=0):
    cpu = ops.int8_conv2d(x, x_scale, x_zp, w, ws, bias, st, pad, dil, act, output, out_scale, out_zp)
    cb = None if bias is None else bias.cuda()
    gpu = ops.int8_conv2d(x.cuda(), x_scale, x_zp, w.cuda(), ws.cuda(), cb, st, pad, dil, act, output, out_scale,
                          out_zp)
    torch.cuda.synchronize()
    return cpu, gpu.cpu()


def _assert_match(cpu, gpu, output):
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape
    if cpu.numel() == 0:
        return
    if output == "float":
        torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-4)
    else:
        assert (gpu.int() - cpu.int()).abs().max().item() <= 1


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("output", ["float", "int8"])
@pytest.mark.parametrize("act", ["none", "relu", "gelu"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_cuda_matches_cpu(kernel, geom, output, act, with_bias):
    x, w, ws, bias, st, pad, dil = _inputs(geom, 11)
    cpu, gpu = _both(x, 0.03, -37, w, ws, bias if with_bias else None, st, pad, dil, act, output, 0.2, 3)
    _assert_match(cpu, gpu, output)


@pytest.mark.parametrize("geom", GEOMS)
def test_cuda_accumulators_bit_exact(kernel, geom):
    # x_scale = w_scale = 1, no bias, float output: the output is the int32 accumulator itself
    x, w, _, _, st, pad, dil = _inputs(geom, 12)
    want = ref.int8_conv2d_accumulator_ref(x, 19, w, st, pad, dil)
    assert want.abs().max() < 2**24
    got = ops.int8_conv2d(x.cuda(), 1.0, 19, w.cuda(), torch.ones(w.shape[0], device="cuda"), None, st, pad, dil)
    assert torch.equal(got.cpu().double(), want.double())


@pytest.mark.parametrize("x_zp,out_zp", [(-128, 127), (127, -128), (0, 0)])
@pytest.mark.parametrize("geom", [GEOMS[1], GEOMS[5]])
def test_cuda_extreme_zero_points(kernel, geom, x_zp, out_zp):
    x, w, ws, bias, st, pad, dil = _inputs(geom, 13)
    for output in ("float", "int8"):
        cpu, gpu = _both(x, 0.05, x_zp, w, ws, bias, st, pad, dil, "relu", output, 0.3, out_zp)
        _assert_match(cpu, gpu, output)


def test_cuda_unaligned_and_noncontiguous_input(kernel):
    # HW % 16 == 0 but the data does not start on 16 bytes (the prep pass's scalar path), and a
    # channels_last input (made contiguous by the op)
    x, w, ws, bias, st, pad, dil = _inputs(GEOMS[5], 14)
    buf = torch.empty(x.numel() + 1, dtype=torch.int8, device="cuda")
    xu = buf[1:].view(x.shape)
    xu.copy_(x.cuda())
    assert xu.is_contiguous() and xu.data_ptr() % 16 != 0
    cpu = ops.int8_conv2d(x, 0.03, 5, w, ws, bias, st, pad, dil, "gelu", "int8", 0.2, -3)
    args = (0.03, 5, w.cuda(), ws.cuda(), bias.cuda(), st, pad, dil, "gelu", "int8", 0.2, -3)
    _assert_match(cpu, ops.int8_conv2d(xu, *args).cpu(), "int8")
    xc = x.cuda().contiguous(memory_format=torch.channels_last)
    _assert_match(cpu, ops.int8_conv2d(xc, *args).cpu(), "int8")


def test_cuda_empty_batch_and_conv1d(kernel):
    x, w, ws, bias, st, pad, dil = _inputs((0, 4, 6, 6, 4, 3, 1, 1, 1), 15)
    cpu, gpu = _both(x, 0.03, 1, w, ws, bias, st, pad, dil, "relu", "int8", 0.1, 0)
    assert gpu.shape == cpu.shape == (0, 4, 6, 6)
    g = torch.Generator().manual_seed(16)
    x = torch.randint(-128, 128, (2, 6, 37), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (5, 6, 5), generator=g, dtype=torch.int8)
    ws = torch.rand(5, generator=g) * 0.01 + 0.001
    b = torch.randn(5, generator=g)
    kw = dict(stride=2, padding=3, dilation=2, activation="relu")
    cpu = ops.int8_conv1d(x, 0.02, 4, w, ws, b, **kw)
    gpu = ops.int8_conv1d(x.cuda(), 0.02, 4, w.cuda(), ws.cuda(), b.cuda(), **kw).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-4)


def test_cuda_kernels_agree_at_bench_shape(monkeypatch):
    # the benchmark's shape (N 8, 64 channels, 128 x 128, 3x3): mma and dp4a give the same int8 output
    g = torch.Generator().manual_seed(17)
    x = torch.randint(-128, 128, (8, 64, 128, 128), generator=g, dtype=torch.int8).cuda()
    w = torch.randint(-127, 128, (64, 64, 3, 3), generator=g, dtype=torch.int8).cuda()
    ws = (torch.rand(64, generator=g) * 0.002 + 0.001).cuda()
    b = torch.randn(64, generator=g).cuda()
    outs = {}
    for k in KERNELS:
        monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", k)
        outs[k] = ops.int8_conv2d(x, 0.02, -3, w, ws, b, 1, 1, 1, "relu", "int8", 0.5, -128)
    assert (outs["mma"].int() - outs["dp4a"].int()).abs().max().item() <= 1
    want = ref.int8_conv2d_ref(x[:1].cpu(), 0.02, -3, w.cpu(), ws.cpu(), b.cpu(), [1, 1], [1, 1], [1, 1], "relu",
                               "int8", 0.5, -128)
    assert (outs["mma"][:1].cpu().int() - want.int()).abs().max().item() <= 1


def test_cuda_kernel_env_var(monkeypatch):
    x, w, ws, bias, st, pad, dil = _inputs(GEOMS[0], 18)
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "cutlass")
    with pytest.raises(ValueError, match="PHASOR_QPDE_CUDA_KERNEL"):
        ops.int8_conv2d(x.cuda(), 0.03, 0, w.cuda(), ws.cuda(), bias.cuda(), st, pad, dil)
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "auto")
    cpu, gpu = _both(x, 0.03, 0, w, ws, bias, st, pad, dil)
    _assert_match(cpu, gpu, "float")


def test_cuda_graph_compile():
    # launches on the current stream: CUDA-graph replay (reduce-overhead) equals eager
    x, w, ws, bias, st, pad, dil = (t.cuda() if isinstance(t, torch.Tensor) else t for t in _inputs(GEOMS[5], 19))
    fn = lambda x: ops.int8_conv2d(x, 0.03, 2, w, ws, bias, st, pad, dil, "relu", "int8", 0.2, 0)  # noqa: E731
    torch._dynamo.reset()
    comp = torch.compile(fn, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):
        got = comp(x)
    assert torch.equal(got, fn(x))


# ---------------------------------------------------------------------------- direct 1x1 path
# (N, Ci, H, W, Co): Ci below / at / above one 32-wide k chunk up to the 256 limit (1..8 chunks: the
# 4-stage ring wraps), Co below / at / above the 64-channel tile, pixel counts below / above the
# 128-pixel tile, multiples of 16 (16-byte loads and stores) or not (byte path), batch 1 and 3.
GEOMS_1X1 = [
    (1, 3, 5, 7, 1),
    (3, 17, 3, 3, 10),
    (2, 64, 16, 16, 64),
    (3, 100, 9, 13, 80),
    (1, 64, 12, 12, 10),
    (2, 200, 16, 20, 64),
    (1, 256, 11, 3, 80),
    (3, 3, 1, 37, 129),
]


def _inputs_1x1(geom, seed, dil=1):
    N, Ci, H, W, Co = geom
    return _inputs((N, Ci, H, W, Co, 1, 1, 0, dil), seed)


@pytest.mark.parametrize("geom", GEOMS_1X1)
@pytest.mark.parametrize("output", ["float", "int8"])
@pytest.mark.parametrize("act", ["none", "relu", "gelu"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_cuda_1x1_matches_cpu(monkeypatch, geom, output, act, with_bias):
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "mma1x1")
    x, w, ws, bias, st, pad, dil = _inputs_1x1(geom, 21)
    cpu, gpu = _both(x, 0.03, -37, w, ws, bias if with_bias else None, st, pad, dil, act, output, 0.2, 3)
    _assert_match(cpu, gpu, output)


@pytest.mark.parametrize("geom", GEOMS_1X1)
def test_cuda_1x1_accumulators_bit_exact(monkeypatch, geom):
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "mma1x1")
    x, w, _, _, st, pad, dil = _inputs_1x1(geom, 22)
    want = ref.int8_conv2d_accumulator_ref(x, 19, w, st, pad, dil)
    assert want.abs().max() < 2**24
    got = ops.int8_conv2d(x.cuda(), 1.0, 19, w.cuda(), torch.ones(w.shape[0], device="cuda"), None, st, pad, dil)
    assert torch.equal(got.cpu().double(), want.double())


@pytest.mark.parametrize("geom", GEOMS_1X1)
@pytest.mark.parametrize("output,act", [("float", "gelu"), ("int8", "relu"), ("int8", "none")])
def test_cuda_1x1_equals_mma_and_auto(monkeypatch, geom, output, act):
    # same integer accumulators and the same epilogue code: the direct path, the prep + GEMM path and
    # the default choice give identical bits
    x, w, ws, bias, st, pad, dil = (t.cuda() if isinstance(t, torch.Tensor) else t for t in _inputs_1x1(geom, 23))
    outs = {}
    for k in ("mma1x1", "mma", "auto"):
        monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", k)
        outs[k] = ops.int8_conv2d(x, 0.03, 11, w, ws, bias, st, pad, dil, act, output, 0.2, -4)
    assert torch.equal(outs["mma1x1"], outs["mma"])
    assert torch.equal(outs["mma1x1"], outs["auto"])


@pytest.mark.parametrize("x_zp,out_zp", [(-128, 127), (127, -128), (0, 0)])
def test_cuda_1x1_extreme_zero_points_and_dilation(monkeypatch, x_zp, out_zp):
    # dilation does nothing to a 1x1 kernel: the direct path takes it
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "mma1x1")
    x, w, ws, bias, st, pad, dil = _inputs_1x1(GEOMS_1X1[3], 24, dil=2)
    for output in ("float", "int8"):
        cpu, gpu = _both(x, 0.05, x_zp, w, ws, bias, st, pad, dil, "relu", output, 0.3, out_zp)
        _assert_match(cpu, gpu, output)


def test_cuda_1x1_unaligned_noncontiguous_and_conv1d(monkeypatch):
    # HW % 16 == 0 but x not 16-byte aligned (the byte path), channels_last, and conv1d with k = 1
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "mma1x1")
    x, w, ws, bias, st, pad, dil = _inputs_1x1(GEOMS_1X1[5], 25)
    buf = torch.empty(x.numel() + 1, dtype=torch.int8, device="cuda")
    xu = buf[1:].view(x.shape)
    xu.copy_(x.cuda())
    assert xu.is_contiguous() and xu.data_ptr() % 16 != 0
    for output in ("int8", "float"):
        cpu = ops.int8_conv2d(x, 0.03, 5, w, ws, bias, st, pad, dil, "gelu", output, 0.2, -3)
        args = (0.03, 5, w.cuda(), ws.cuda(), bias.cuda(), st, pad, dil, "gelu", output, 0.2, -3)
        _assert_match(cpu, ops.int8_conv2d(xu, *args).cpu(), output)
        xc = x.cuda().contiguous(memory_format=torch.channels_last)
        _assert_match(cpu, ops.int8_conv2d(xc, *args).cpu(), output)
    g = torch.Generator().manual_seed(26)
    x = torch.randint(-128, 128, (3, 40, 37), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (70, 40, 1), generator=g, dtype=torch.int8)
    ws = torch.rand(70, generator=g) * 0.01 + 0.001
    b = torch.randn(70, generator=g)
    cpu = ops.int8_conv1d(x, 0.02, 4, w, ws, b, activation="relu")
    gpu = ops.int8_conv1d(x.cuda(), 0.02, 4, w.cuda(), ws.cuda(), b.cuda(), activation="relu").cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-4)


# Shapes each direct path does not take: its switch value raises, and auto falls back to another path.
INELIGIBLE = [("mma1x1", g) for g in [
    (1, 8, 9, 9, 4, 3, 1, 1, 1),    # 3x3
    (1, 8, 9, 9, 4, 1, 2, 0, 1),    # stride 2
    (1, 8, 9, 9, 4, 1, 1, 1, 1),    # padding 1
    (1, 257, 4, 4, 4, 1, 1, 0, 1),  # Cp 288 > 256
]] + [("mma3x3", g) for g in [
    (1, 8, 9, 9, 4, 1, 1, 0, 1),    # 1x1
    (1, 8, 9, 9, 4, 3, 2, 1, 1),    # stride 2
    (1, 8, 9, 9, 4, 3, 1, 0, 1),    # padding 0
    (1, 8, 9, 9, 4, 3, 1, 2, 2),    # dilation 2
    (1, 8, 12, 12, 4, 5, 1, 2, 1),  # 5x5
]]


@pytest.mark.parametrize("kernel,geom", INELIGIBLE)
def test_cuda_direct_env_rejects_ineligible(monkeypatch, kernel, geom):
    x, w, ws, bias, st, pad, dil = _inputs(geom, 27 if kernel == "mma1x1" else 37)
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", kernel)
    with pytest.raises(ValueError, match=kernel):
        ops.int8_conv2d(x.cuda(), 0.03, 0, w.cuda(), ws.cuda(), bias.cuda(), st, pad, dil)
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "auto")
    cpu, gpu = _both(x, 0.03, 0, w, ws, bias, st, pad, dil)
    _assert_match(cpu, gpu, "float")


@pytest.mark.parametrize("kernel,k,pad,seed", [("mma1x1", 1, 0, 28), ("mma3x3", 3, 1, 38)])
def test_cuda_direct_bench_shape(monkeypatch, kernel, k, pad, seed):
    # the benchmark's shapes (N 8, 64 channels, 128 x 128, 1x1 and 3x3): direct == prep + GEMM bit for
    # bit, and the first image against the CPU reference
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (8, 64, 128, 128), generator=g, dtype=torch.int8).cuda()
    w = torch.randint(-127, 128, (64, 64, k, k), generator=g, dtype=torch.int8).cuda()
    ws = (torch.rand(64, generator=g) * 0.002 + 0.001).cuda()
    b = torch.randn(64, generator=g).cuda()
    outs = {}
    for name in (kernel, "mma"):
        monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", name)
        outs[name] = ops.int8_conv2d(x, 0.02, -3, w, ws, b, 1, pad, 1, "relu", "int8", 0.5, -128)
    assert torch.equal(outs[kernel], outs["mma"])
    want = ref.int8_conv2d_ref(x[:1].cpu(), 0.02, -3, w.cpu(), ws.cpu(), b.cpu(), [1, 1], [pad, pad], [1, 1], "relu",
                               "int8", 0.5, -128)
    assert (outs[kernel][:1].cpu().int() - want.int()).abs().max().item() <= 1


def test_cuda_1x1_graph_compile():
    # the default path for a 1x1 conv under CUDA-graph replay (dynamic shared memory, current stream)
    x, w, ws, bias, st, pad, dil = (t.cuda() if isinstance(t, torch.Tensor) else t for t in _inputs_1x1(GEOMS_1X1[2], 29))
    fn = lambda x: ops.int8_conv2d(x, 0.03, 2, w, ws, bias, st, pad, dil, "gelu", "int8", 0.2, 0)  # noqa: E731
    torch._dynamo.reset()
    comp = torch.compile(fn, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):
        got = comp(x)
    assert torch.equal(got, fn(x))


# ---------------------------------------------------------------------------- direct 3x3 path
# (N, Ci, H, W, Co): Ci below / at / above one 32-wide k chunk (1, 1, 2, 4 chunks: the 2-stage ring
# wraps), Co below / at / above the 64-channel tile, H / W odd, below and above the 4 x 32 tile,
# W % 16 == 0 (8-byte cp.async and 16-byte stores) or not (byte path), batch 1 and 3.
GEOMS_3X3 = [
    (1, 3, 5, 7, 1),
    (3, 17, 9, 11, 10),
    (2, 64, 16, 16, 64),
    (3, 100, 16, 24, 80),
    (1, 64, 13, 48, 10),
    (3, 17, 6, 33, 129),
    (2, 64, 40, 24, 64),
]


def _inputs_3x3(geom, seed):
    N, Ci, H, W, Co = geom
    return _inputs((N, Ci, H, W, Co, 3, 1, 1, 1), seed)


@pytest.mark.parametrize("geom", GEOMS_3X3)
@pytest.mark.parametrize("output", ["float", "int8"])
@pytest.mark.parametrize("act", ["none", "relu", "gelu"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_cuda_3x3_matches_cpu(monkeypatch, geom, output, act, with_bias):
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "mma3x3")
    x, w, ws, bias, st, pad, dil = _inputs_3x3(geom, 31)
    cpu, gpu = _both(x, 0.03, -37, w, ws, bias if with_bias else None, st, pad, dil, act, output, 0.2, 3)
    _assert_match(cpu, gpu, output)


@pytest.mark.parametrize("geom", GEOMS_3X3)
@pytest.mark.parametrize("x_zp", [19, -128, 127])
def test_cuda_3x3_accumulators_bit_exact(monkeypatch, geom, x_zp):
    # the padded taps must hold the zero point: with x_scale = w_scale = 1 the output is the accumulator
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "mma3x3")
    x, w, _, _, st, pad, dil = _inputs_3x3(geom, 32)
    want = ref.int8_conv2d_accumulator_ref(x, x_zp, w, st, pad, dil)
    assert want.abs().max() < 2**24
    got = ops.int8_conv2d(x.cuda(), 1.0, x_zp, w.cuda(), torch.ones(w.shape[0], device="cuda"), None, st, pad, dil)
    assert torch.equal(got.cpu().double(), want.double())


@pytest.mark.parametrize("geom", GEOMS_3X3)
@pytest.mark.parametrize("output,act", [("float", "gelu"), ("int8", "relu"), ("int8", "none")])
def test_cuda_3x3_equals_mma_and_auto(monkeypatch, geom, output, act):
    # same integer accumulators and the same epilogue code: direct, prep + GEMM and the default agree bitwise
    x, w, ws, bias, st, pad, dil = (t.cuda() if isinstance(t, torch.Tensor) else t for t in _inputs_3x3(geom, 33))
    outs = {}
    for k in ("mma3x3", "mma", "auto"):
        monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", k)
        outs[k] = ops.int8_conv2d(x, 0.03, 11, w, ws, bias, st, pad, dil, act, output, 0.2, -4)
    assert torch.equal(outs["mma3x3"], outs["mma"])
    assert torch.equal(outs["mma3x3"], outs["auto"])


@pytest.mark.parametrize("x_zp,out_zp", [(-128, 127), (127, -128), (0, 0)])
def test_cuda_3x3_extreme_zero_points(monkeypatch, x_zp, out_zp):
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "mma3x3")
    for geom in (GEOMS_3X3[1], GEOMS_3X3[3]):
        x, w, ws, bias, st, pad, dil = _inputs_3x3(geom, 34)
        for output in ("float", "int8"):
            cpu, gpu = _both(x, 0.05, x_zp, w, ws, bias, st, pad, dil, "relu", output, 0.3, out_zp)
            _assert_match(cpu, gpu, output)


def test_cuda_3x3_misaligned_and_noncontiguous(monkeypatch):
    # W % 16 == 0 but x not 16-byte aligned (the byte path), and a channels_last input
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "mma3x3")
    x, w, ws, bias, st, pad, dil = _inputs_3x3(GEOMS_3X3[3], 35)
    xu = misaligned_copy(x.cuda())
    for output in ("int8", "float"):
        cpu = ops.int8_conv2d(x, 0.03, 5, w, ws, bias, st, pad, dil, "gelu", output, 0.2, -3)
        args = (0.03, 5, w.cuda(), ws.cuda(), bias.cuda(), st, pad, dil, "gelu", output, 0.2, -3)
        _assert_match(cpu, ops.int8_conv2d(xu, *args).cpu(), output)
        xc = x.cuda().contiguous(memory_format=torch.channels_last)
        _assert_match(cpu, ops.int8_conv2d(xc, *args).cpu(), output)


def test_cuda_3x3_graph_compile(monkeypatch):
    # the direct 3x3 path under CUDA-graph replay (dynamic shared memory opt-in, current stream); the
    # first call runs under capture on a fresh process's device too
    monkeypatch.setenv("PHASOR_QPDE_CUDA_KERNEL", "mma3x3")
    x, w, ws, bias, st, pad, dil = (t.cuda() if isinstance(t, torch.Tensor) else t for t in _inputs_3x3(GEOMS_3X3[4], 39))
    fn = lambda x: ops.int8_conv2d(x, 0.03, 2, w, ws, bias, st, pad, dil, "gelu", "int8", 0.2, 0)  # noqa: E731
    torch._dynamo.reset()
    comp = torch.compile(fn, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):
        got = comp(x)
    assert torch.equal(got, fn(x))


# ---------------------------------------------------------------------------- fake quant, large
def test_cuda_fake_quant_large_reductions_match_cpu():
    # > 256 partial blocks per tensor and long per-channel rows: the fixed-order partial sums
    g = torch.Generator().manual_seed(20)
    x = torch.randn(4, 48, 96, 96, generator=g, dtype=torch.float32) * 2
    cot = torch.randn(x.shape, generator=g)
    scale, zp = torch.tensor([4.0 / 255]), torch.tensor([120.0])
    sc = x.abs().amax(dim=(0, 2, 3)) / 7
    res = {}
    for dev in ("cpu", "cuda"):
        xd, sd, zd, scd = (t.to(dev).requires_grad_() for t in (x, scale, zp, sc))
        y = torch.ops.phasor.fake_quant_per_tensor(xd, sd, zd, 0, 255, 1e-3)
        yc = torch.ops.phasor.fake_quant_per_channel(xd, scd, 1, -8, 7, 1e-3)
        gy = torch.autograd.grad(y, (xd, sd, zd), cot.to(dev))
        gc = torch.autograd.grad(yc, (xd, scd), cot.to(dev))
        res[dev] = [t.detach().cpu() for t in (y, yc, *gy, *gc)]
    for a, b in zip(res["cpu"], res["cuda"]):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    # deterministic: the same launch gives the same bits
    xd, sd, zd = (t.cuda().requires_grad_() for t in (x, scale, zp))
    g1 = torch.autograd.grad(torch.ops.phasor.fake_quant_per_tensor(xd, sd, zd, 0, 255, 1e-3), (sd, zd), cot.cuda())
    g2 = torch.autograd.grad(torch.ops.phasor.fake_quant_per_tensor(xd, sd, zd, 0, 255, 1e-3), (sd, zd), cot.cuda())
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
