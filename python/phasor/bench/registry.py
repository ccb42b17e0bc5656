"""Registry of benchmark cases. Each system declares its cases in `phasor/<system>/bench_cases.py`.

A case factory builds the inputs for a device and returns a :class:`Case`: named zero-argument
callables (the workloads: "fused", "eager", "compile", and any library alternative) plus a
correctness check that runs before anything is timed.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List

import torch


@dataclasses.dataclass
class Case:
    impls: Dict[str, Callable[[], object]]
    check: Callable[[], bool]          # fused vs reference, run before timing
    baseline: str = "eager"            # speedups are reported against this impl
    note: str = ""


@dataclasses.dataclass
class CaseSpec:
    op: str
    name: str
    factory: Callable[[str], Case]
    devices: tuple = ("cpu", "cuda")


_CASES: List[CaseSpec] = []


def register(op: str, name: str, devices=("cpu", "cuda")):
    """Decorator: register `factory(device) -> Case` under (op, name)."""
    def deco(factory):
        _CASES.append(CaseSpec(op, name, factory, tuple(devices)))
        return factory
    return deco


# Every system with benchmark cases (python/phasor/<system>/bench_cases.py).
SYSTEMS = ("rotating_features", "wave_rnn", "complex_rnn", "gta", "quantized_pde")


def all_cases() -> List[CaseSpec]:
    import importlib
    for system in SYSTEMS:  # importing a system's bench_cases registers its cases
        importlib.import_module(f"phasor.{system}.bench_cases")
    return list(_CASES)


def compiled(fn):
    """torch.compile of a reference function (the 'compile' impl of a case), specialised to the case's
    static shapes (a later case with other sizes would otherwise trigger a dynamic-shape recompile)."""
    return torch.compile(fn, dynamic=False)


def outputs_close(a, b, rtol=1e-4, atol=1e-4) -> bool:
    """Recursive allclose over tensors / tuples (float32 kernels vs float32 reference)."""
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(outputs_close(x, y, rtol, atol) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    return bool(torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol))


def scaled_close(a, b, tol=1e-4) -> bool:
    """max|a - b| <= tol * max|b| per tensor: for reductions over millions of terms (a recurrence's
    weight gradient), where float32 rounding is relative to the largest entry, not to each one."""
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(scaled_close(x, y, tol) for x, y in zip(a, b))
    a, b = a.float(), b.float()
    return bool((a - b).abs().max() <= tol * b.abs().max().clamp_min(1e-30))
