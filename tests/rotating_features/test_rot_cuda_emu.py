"""The rotating-layer epilogue's CUDA kernels, run from their own source on the CPU (tools/cuda_emu),
against the CPU op. Covers what the GPU tests cover where the emulation can: every kernel of the
BN and LN variants, forward and backward, lift and training switches, rotation dims past one
kRotChunk, several LN rows per block, 16-bit storage, and run-to-run bitwise repeatability."""
import pytest
import torch

from helpers import emulated_cuda_ops

pytestmark = [pytest.mark.cuda_emu, pytest.mark.slow]


@pytest.fixture(scope="module")
def emu():
    return emulated_cuda_ops("rotating_features")


def _rand(g, *shape, positive=False, dtype=torch.float64):
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    return (t.abs() if positive else t).to(dtype)


def _bn_case(shape, lift, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, n, c, *sp = shape
    return dict(psi=_rand(g, b, 1 if lift else n, c, *sp), chi=None if lift else _rand(g, b, c, *sp, positive=True),
                rot_bias=_rand(g, n, c), weight=1 + 0.5 * _rand(g, c), bias=0.5 * _rand(g, c),
                running_mean=_rand(g, c), running_var=0.5 + _rand(g, c, positive=True),
                grad=_rand(g, b, n, c, *sp), grad_mag=_rand(g, b, c, *sp))


def _storage(t, dtype):
    return None if t is None else t.to(dtype)


def _bn_outputs(ns, d, training, dtype, param_dtype):
    psi, chi = _storage(d["psi"], dtype), _storage(d["chi"], dtype)
    p = [d[k].to(param_dtype) for k in ("rot_bias", "weight", "bias", "running_mean", "running_var")]
    fwd = ns.rot_bn_fwd(psi, chi, p[0], p[1], p[2], p[3], p[4], training, 1e-5)
    bwd = ns.rot_bn_bwd(d["grad"].to(dtype), d["grad_mag"].to(dtype), psi, chi, p[0], p[1], p[2], fwd[2], fwd[3],
                        training, 1e-5)
    return [t for t in (*fwd, *bwd) if t is not None and t.numel() > 0]


def _assert_matches(emu_out, cpu_out, rtol, atol):
    assert len(emu_out) == len(cpu_out)
    for i, (e, c) in enumerate(zip(emu_out, cpu_out)):
        assert e.shape == c.shape and e.dtype == c.dtype, f"output {i}"
        assert not torch.isnan(e).any(), f"output {i} has NaN (a read of memory no thread wrote?)"
        torch.testing.assert_close(e, c, rtol=rtol, atol=atol, msg=lambda m: f"output {i}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("lift", [False, True])
@pytest.mark.parametrize("shape", [(3, 4, 5, 7, 9), (2, 9, 3, 5, 4), (2, 17, 2, 3, 3)])
def test_bn_kernels_match_the_cpu_op(emu, shape, lift, training, dtype):
    """n = 9 and 17 leave partial rotation chunks in the backward (kRotChunk = 8)."""
    d = _bn_case(shape, lift)
    tol = dict(rtol=1e-11, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    _assert_matches(_bn_outputs(emu, d, training, dtype, dtype), _bn_outputs(torch.ops.phasor, d, training, dtype, dtype),
                    **tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lift", [False, True])
def test_bn_kernels_with_16_bit_storage(emu, lift, dtype):
    """16-bit psi/chi/grads with float32 parameters and math: against the float32 CPU op on the same
    (rounded) inputs, within a few units of the storage type's rounding."""
    d = _bn_case((3, 4, 6, 5, 7), lift, seed=1)
    for k in ("psi", "chi", "grad", "grad_mag"):
        d[k] = _storage(d[k], dtype)
    emu_out = _bn_outputs(emu, d, True, dtype, torch.float32)
    cpu_out = _bn_outputs(torch.ops.phasor, d, True, torch.float32, torch.float32)
    eps = torch.finfo(dtype).eps
    for i, (e, c) in enumerate(zip(emu_out, cpu_out)):
        assert not torch.isnan(e).any(), f"output {i}"
        torch.testing.assert_close(e.float(), c.float(), rtol=4 * eps, atol=4 * eps * max(1.0, c.abs().max().item()),
                                   msg=lambda m: f"output {i}: {m}")


def _ln_case(b, n, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [_rand(g, b, n, c), _rand(g, b, c, positive=True), _rand(g, n, c), 1 + _rand(g, c, positive=True),
            _rand(g, c)], _rand(g, b, n, c), _rand(g, b, c)


def _ln_outputs(ns, args, grad, grad_mag, dtype):
    a = [t.to(dtype) for t in args]
    fwd = ns.rot_ln_fwd(*a, 1e-5)
    bwd = ns.rot_ln_bwd(grad.to(dtype), grad_mag.to(dtype), *a, fwd[2], fwd[3])
    return [*fwd, *bwd]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,n,c", [(5, 3, 7), (3, 8, 300), (2100, 3, 7)])
def test_ln_kernels_match_the_cpu_op(emu, b, n, c, dtype):
    """B = 2100 gives each backward block several rows (ceil(B / 1024)), the last block fewer."""
    args, grad, grad_mag = _ln_case(b, n, c)
    tol = dict(rtol=1e-11, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    _assert_matches(_ln_outputs(emu, args, grad, grad_mag, dtype), _ln_outputs(torch.ops.phasor, args, grad, grad_mag, dtype),
                    **tol)


def test_kernels_repeat_bitwise(emu):
    """Fixed reduction order, no atomics: two runs give identical bits."""
    d = _bn_case((4, 10, 6, 9, 11), False, seed=2)
    first, second = (_bn_outputs(emu, d, True, torch.float32, torch.float32) for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
