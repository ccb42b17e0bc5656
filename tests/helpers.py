"""Shared checks for every phasor op, so each op's test file stays short.

Each helper takes callables and tensors; none knows about a particular op. Only torch and pytest
are needed (the GPU machine has nothing else).
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable, Sequence

import pytest
import torch

import phasor

HAS_CUDA = torch.cuda.is_available() and bool(phasor.build_info["with_cuda"])
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
CUDA_SKIP_REASON = "needs a GPU and a CUDA build of phasor"
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON)  # conftest adds the `cuda` mark

# (rtol, atol) for elementwise / short-reduction ops, per compute dtype.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (2e-2, 5e-2),
}

# (rtol, atol) for outputs that sum 1e3-1e4 terms (recurrences: time x batch x ring), against a
# float64 truth: a few eps * sqrt(terms), the error a same-precision PyTorch run also makes.
LONG_REDUCTION_TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def cpu_isa_params():
    """The CPU kernel builds this machine can run ('base' always, then 'avx2' and 'avx512' where supported)."""
    before = phasor._C.cpu_isa()
    runnable = [isa for isa in phasor.build_info["cpu_isas"].split(",") if phasor._C.set_cpu_isa(isa)]
    phasor._C.set_cpu_isa(before)
    return runnable


@pytest.fixture(params=cpu_isa_params())
def cpu_isa(request):
    """Run a test under each CPU kernel build, restoring the previous choice afterwards. A test's CUDA
    instances run once (under the last build): the ISA does not change them, and the GPU's time is short."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("device") == "cuda" and request.param != cpu_isa_params()[-1]:
        pytest.skip("a CUDA instance runs under one CPU kernel build only")
    before = phasor._C.cpu_isa()
    assert phasor._C.set_cpu_isa(request.param)
    yield request.param
    phasor._C.set_cpu_isa(before)


def device_params():
    """pytest params over devices; CUDA ones skip cleanly where there is no GPU build."""
    return [pytest.param("cpu"), pytest.param("cuda", marks=requires_cuda)]


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """Same values as t, but every dim strided (a view into a buffer twice as large in the last dim)."""
    if t.dim() == 0 or t.numel() == 0:
        return t
    buf = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    view = buf[..., ::2]
    view.copy_(t)
    assert t.numel() == 1 or not view.is_contiguous()
    return view.requires_grad_(t.requires_grad)


def clone_inputs(args: Sequence, requires_grad: bool = False, frozen: Sequence[int] = ()) -> list:
    """Detached copies of the tensor args (grad enabled for floating ones on request, except the
    positions in `frozen`, e.g. running statistics)."""
    out = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            c = a.detach().clone()
            if requires_grad and c.is_floating_point() and i not in frozen:
                c.requires_grad_(True)
            out.append(c)
        else:
            out.append(a)
    return out


def assert_close(actual, expected, dtype=None, msg: str = ""):
    """assert_close with the project's dtype tolerances, over tensors or tuples of tensors."""
    if isinstance(expected, (tuple, list)):
        assert len(actual) == len(expected), msg
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, dtype, f"{msg} [output {i}]")
        return
    if expected is None:
        assert actual is None, msg
        return
    rtol, atol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}")


def _upcast(args: Sequence) -> list:
    return [a.detach().to(torch.float64) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args]


def assert_error_within(actual, same_precision, truth, msg: str = ""):
    """FlashAttention's rule for low precision: the kernel's max error against a float64 truth is at
    most twice that of a plain-PyTorch run at the same precision, plus the dtype's rounding noise
    (four ulps of the largest true value: tiny tensors make the same-precision error a lottery)."""
    for i, (a, p, t) in enumerate(zip(actual, same_precision, truth)):
        if t is None or t.numel() == 0:
            continue
        noise = 4 * torch.finfo(p.dtype).eps * t.abs().max()
        err_a = (a.double() - t).abs().max()
        err_p = (p.double() - t).abs().max()
        assert torch.isfinite(err_a) or not torch.isfinite(t).all(), f"{msg} [{i}]: non-finite output"
        assert err_a <= 2 * err_p + noise, (
            f"{msg} [{i}]: max error {err_a:.3e} vs same-precision reference {err_p:.3e} (noise {noise:.1e})")


def _outputs_and_grads(fn, args, cotangents_seed, frozen, grad):
    out = fn(*args)
    out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    if not grad:
        return out, ()
    gen = torch.Generator(device="cpu").manual_seed(cotangents_seed)
    cot = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in out]
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    if not leaves or all(o.numel() == 0 for o in out):
        return out, ()
    grads = torch.autograd.grad(out, leaves, cot, allow_unused=True)
    return out, tuple(torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves))


def compare_with_reference(fused: Callable, reference: Callable, args: Sequence, dtype=None,
                           grad: bool = True, seed: int = 0, frozen: Sequence[int] = (), rule: str = "flash"):
    """Run fused and reference on cloned inputs; compare outputs and, with grad, the gradients of
    every floating tensor input (but those in `frozen`) under the same random output cotangents.

    float64: assert_close at 1e-10. Lower precisions, against the reference evaluated in float64 on
    the same (upcast) inputs: rule "flash" applies `assert_error_within`; rule "truth" applies
    LONG_REDUCTION_TOLERANCES against that truth, for ops whose outputs are reductions over
    thousands of terms (a recurrence's weight gradient sums over time, batch and ring), where the
    same-precision reference's own error varies tenfold from seed to seed and the 2x rule would
    compare against a lottery."""
    fa, ra = clone_inputs(args, grad, frozen), clone_inputs(args, grad, frozen)
    out_f, g_f = _outputs_and_grads(fused, fa, seed, frozen, grad)
    dtype = dtype or next(a.dtype for a in args if isinstance(a, torch.Tensor))
    if rule == "truth" and dtype != torch.float64:
        out_t, g_t = _outputs_and_grads(reference, clone_inputs(_upcast(args), grad, frozen), seed, frozen, grad)
        for name, got, want in (("forward", out_f, out_t), ("gradient", g_f, g_t)):
            for i, (a, t) in enumerate(zip(got, want)):
                rtol, atol = LONG_REDUCTION_TOLERANCES[dtype]
                torch.testing.assert_close(a.double(), t, rtol=rtol, atol=atol,
                                           msg=lambda m, i=i, name=name: f"{name} [{i}]\n{m}")
        return out_f
    out_r, g_r = _outputs_and_grads(reference, ra, seed, frozen, grad)
    if dtype == torch.float64:
        assert_close(out_f, out_r, dtype, "forward mismatch")
        assert_close(g_f, g_r, dtype, "gradient mismatch")
        return out_f
    out_t, g_t = _outputs_and_grads(reference, clone_inputs(_upcast(args), grad, frozen), seed, frozen, grad)
    assert_error_within(out_f, out_r, out_t, "forward")
    assert_error_within(g_f, g_r, g_t, "gradient")
    return out_f


def check_gradcheck(fn: Callable, args: Sequence, **kw):
    """torch.autograd.gradcheck in float64 over the floating tensor args."""
    args = clone_inputs(args, requires_grad=True)
    for a in args:
        if isinstance(a, torch.Tensor):
            assert a.dtype == torch.float64, "gradcheck needs float64 inputs"
    assert torch.autograd.gradcheck(fn, tuple(args), eps=1e-6, atol=1e-6, rtol=1e-5, **kw)


def check_opcheck(op, args: Sequence, with_grad: bool = True, frozen: Sequence[int] = ()):
    """torch.library.opcheck with and without requires_grad (schema, fake, autograd registration,
    AOT dispatch with dynamic shapes)."""
    torch.library.opcheck(op, tuple(clone_inputs(args, False)))
    if with_grad:
        torch.library.opcheck(op, tuple(clone_inputs(args, True, frozen)))


def check_compile(module: torch.nn.Module, inputs: Sequence, dtype=None, dynamic: bool = False):
    """torch.compile(fullgraph=True) of a module using the op equals eager, forward and backward."""
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, dynamic=dynamic)
    ei, ci = clone_inputs(inputs, True), clone_inputs(inputs, True)
    out_e, out_c = module(*ei), compiled(*ci)
    assert_close(out_c, out_e, dtype, "compiled forward differs from eager")
    loss_e = sum(o.float().square().sum() for o in (out_e if isinstance(out_e, tuple) else (out_e,)))
    loss_c = sum(o.float().square().sum() for o in (out_c if isinstance(out_c, tuple) else (out_c,)))
    ge = torch.autograd.grad(loss_e, [p for p in module.parameters()] + [t for t in ei if isinstance(t, torch.Tensor) and t.requires_grad])
    gc = torch.autograd.grad(loss_c, [p for p in module.parameters()] + [t for t in ci if isinstance(t, torch.Tensor) and t.requires_grad])
    assert_close(gc, ge, dtype, "compiled backward differs from eager")


def assert_bad_input(fn: Callable, *args, names: str | Sequence[str], exc=(ValueError, TypeError, RuntimeError)):
    """fn(*args) raises a clean Python exception whose message names the offending argument."""
    names = [names] if isinstance(names, str) else list(names)
    with pytest.raises(exc) as info:
        fn(*args)
    text = str(info.value)
    assert any(re.search(rf"\b{re.escape(n)}\b", text) for n in names), (
        f"error message does not name {names}: {text!r}")


def misaligned_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t whose data starts one element past a 16-byte boundary (so kernels'
    vector loads and cp.async cannot assume alignment); the storage is one element longer."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = flat[1:].view(t.shape)
    view.copy_(t)
    assert view.data_ptr() % 16 != 0
    return view


class _NanFilledOps:
    """An op namespace whose calls run with PyTorch's deterministic mode on (warnings only), under
    which at::empty fills new memory with NaN: an output element (or scratch) that no emulated
    thread writes, or a read of one, then shows up in the results."""

    def __init__(self, ns):
        self._ns = ns

    def __getattr__(self, name):
        op = getattr(self._ns, name)

        def call(*args, **kwargs):
            prev = torch.are_deterministic_algorithms_enabled()
            prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
            torch.use_deterministic_algorithms(True, warn_only=True)
            try:
                return op(*args, **kwargs)
            finally:
                torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        return call


def emulated_cuda_ops(system: str):
    """The ops of `system` built from its CUDA sources and run on the CPU by tools/cuda_emu:
    ``emulated_cuda_ops("gta").gta_attention_fwd(...)`` takes CPU tensors and runs the CUDA kernels
    (thread by thread, warp collectives and tensor-core instructions emulated). Fresh shared memory
    and every at::empty the host code makes are NaN-filled. Skips the test where the CUDA toolkit's
    headers are missing; the first call builds (minutes), later ones reuse it."""
    root = os.path.join(os.path.dirname(__file__), "..", "tools", "cuda_emu")
    if root not in sys.path:
        sys.path.insert(0, root)
    import build as cuda_emu_build
    if not cuda_emu_build.available():
        pytest.skip("the CUDA toolkit's headers are needed to build the emulated kernels")
    return _NanFilledOps(getattr(torch.ops, cuda_emu_build.load(system)))
