"""Benchmark harness: correctness first, then median time and peak memory of every impl of a case.

CPU: torch.utils.benchmark (blocked_autorange) in rounds that interleave the impls, peak memory from the profiler's allocation events.
CUDA: CUDA events around a warmed-up loop, peak memory from the caching allocator's statistics.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from .registry import all_cases


def _cpu_peak_mb(fn) -> float:
    """Peak bytes allocated while fn runs (sum of per-event allocations and frees, in time order)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    for ev in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += ev.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak / 2**20


def _cuda_peak_mb(fn) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_cpu_interleaved(fns: dict, min_run_time: float, rounds: int = 5) -> dict:
    """Median ms per call of each fn, measured in `rounds` interleaved rounds (A B C, A B C, ...).

    A shared 2-core machine has slow phases lasting seconds; timing one impl after the other puts
    whole impls in different phases and skews the ratios the targets are judged on. Each round gives
    every impl min_run_time / rounds of blocked_autorange (at least one call); an impl whose one call
    outlasts min_run_time (the slowest eager baselines) is timed in the first round only.
    """
    from torch.utils import benchmark
    for fn in fns.values():
        fn()  # warm-up (compilation, caches)
    threads = torch.get_num_threads()
    timers = {k: benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads) for k, fn in fns.items()}
    samples = {k: [] for k in fns}
    per_round = min_run_time / rounds
    for r in range(rounds):
        for k, timer in timers.items():
            if r > 0 and statistics.median(samples[k]) > min_run_time:
                continue
            samples[k].extend(timer.blocked_autorange(min_run_time=per_round).times)
    return {k: statistics.median(v) * 1e3 for k, v in samples.items()}


_L2_FLUSH = {}


def _flush_l2(device) -> None:
    """Overwrite a buffer larger than any GPU's L2 (H200: 60 MB), so each timed call starts from a
    cold cache, as it would inside a model; otherwise small cases are timed out of L2."""
    buf = _L2_FLUSH.get(device)
    if buf is None:
        buf = _L2_FLUSH[device] = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    buf.zero_()


def time_cuda(fn, reps: int = 50, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    device = torch.cuda.current_device()
    times = []
    for _ in range(reps):
        _flush_l2(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]


def run(op: str | None = None, device: str = "cpu", min_run_time: float = 1.0, case: str | None = None,
        out=sys.stdout, impls: tuple | None = None, json_path: str | None = None,
        skip_impls: tuple = ()) -> list:
    """Run every matching case: correctness check, then each impl's median time and peak memory.

    A case or impl that raises is recorded (impl "error" or the impl's own name, correct False, the
    exception text under "error") and the run goes on, so one broken kernel cannot hide the rest.
    `impls` keeps only those impls, `skip_impls` drops those (speedups need the baseline among the
    impls kept); `json_path` rewrites the
    JSON after every case, so a run stopped by a time limit still leaves its finished cases.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    records = []
    specs = [s for s in all_cases() if (op is None or s.op == op) and (case is None or s.name == case)
             and device in s.devices]
    if not specs:
        raise SystemExit(f"no benchmark case matches op={op!r} case={case!r} on {device}")
    from ..utils.training import machine_description
    machine = machine_description()
    print(f"# phasor bench on {device}: {machine.get('gpu') if device == 'cuda' else machine.get('cpu_model', machine['processor'])}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=out)
    header = f"{'op':<16} {'case':<26} {'impl':<10} {'median ms':>10} {'peak MB':>9} {'speedup':>8}  correct"
    print(header, file=out)
    print("-" * len(header), file=out)
    for spec in specs:
        t0 = time.time()
        base_record = {"op": spec.op, "case": spec.name, "device": device}
        try:
            c = spec.factory(device)
            correct = bool(c.check())
        except Exception as e:  # noqa: BLE001 - report and go on to the next case
            err = _error_text(e)
            print(f"{spec.op:<16} {spec.name:<26} {'error':<10} {err}", file=out)
            records.append({**base_record, "impl": "error", "median_ms": None, "peak_mem_mb": None,
                            "correct": False, "error": err})
            _save(records, json_path)
            continue
        rows, errors = {}, {}
        chosen = {impl: fn for impl, fn in c.impls.items()
                  if (impls is None or impl in impls) and impl not in skip_impls}
        cpu_ms = {}
        if device != "cuda":
            # impls that raise are timed (and reported) on their own; the rest in interleaved rounds
            for impl, fn in list(chosen.items()):
                try:
                    fn()
                except Exception as e:  # noqa: BLE001
                    errors[impl] = _error_text(e)
                    del chosen[impl]
            try:
                cpu_ms = time_cpu_interleaved(chosen, min_run_time)
            except Exception as e:  # noqa: BLE001 - an impl that fails only on a later call
                errors.update(dict.fromkeys(chosen, _error_text(e)))
                chosen = {}
        for impl, fn in chosen.items():
            try:
                ms = time_cuda(fn) if device == "cuda" else cpu_ms[impl]
                mem = _cuda_peak_mb(fn) if device == "cuda" else _cpu_peak_mb(fn)
                rows[impl] = (ms, mem)
            except Exception as e:  # noqa: BLE001
                errors[impl] = _error_text(e)
        base = rows.get(c.baseline, (None,))[0]
        for impl, (ms, mem) in rows.items():
            speed = f"{base / ms:7.2f}x" if base else "     -"
            print(f"{spec.op:<16} {spec.name:<26} {impl:<10} {ms:10.3f} {mem:9.1f} {speed:>8}  {correct}", file=out)
            records.append({**base_record, "impl": impl, "median_ms": round(ms, 4), "peak_mem_mb": round(mem, 2),
                            "correct": correct, f"speedup_vs_{c.baseline}": round(base / ms, 3) if base else None})
        for impl, err in errors.items():
            print(f"{spec.op:<16} {spec.name:<26} {impl:<10} error: {err}", file=out)
            records.append({**base_record, "impl": impl, "median_ms": None, "peak_mem_mb": None, "correct": False,
                            "error": err})
        print(f"{'':<16} ({time.time() - t0:.0f}s{'; ' + c.note if c.note else ''})", file=out)
        out.flush()
        _save(records, json_path)
    return records


def _save(records: list, json_path: str | None) -> None:
    if json_path:
        write_json(records, json_path)


def write_json(records: list, path: str) -> None:
    from ..utils.training import machine_description
    import phasor
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    for r in records:
        r["machine"] = machine.get("gpu") if r["device"] == "cuda" else machine.get("cpu_model", machine["processor"])
    tmp = p.with_name(p.name + ".tmp")  # atomic: a reader (or a killed run) never sees half a file
    tmp.write_text(json.dumps({"records": records, "machine": machine, "build_info": phasor.build_info}, indent=1))
    tmp.replace(p)
