"""Runs every benchmark case's correctness check with the CUDA kernels (emulated) in place of the
CPU kernels, at the benchmark's own sizes: the launch configurations, grid sizes, shared-memory
budgets and kernel choices that the small tests do not reach.

    python tools/cuda_emu/bench_checks.py [--systems gta,wave_rnn] [--cases REGEX] [--json bench/results/cuda_emu/bench_checks.json]

Each system runs in a process of its own (build.load(..., override_cpu=True) cannot be undone):
the case factories build their CPU inputs, torch.ops.phasor.* then runs the emulated CUDA kernels,
and each case's check() compares them with its reference as the benchmark would. Timing is not
measured (the emulator says nothing about GPU speed).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from phasor.bench.registry import SYSTEMS  # every system with benchmark cases

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def run_system(system: str, cases: str, out: Path) -> None:
    """In this process: swap in the emulated kernels, then check every case of `system` whose name
    matches `cases`, rewriting `out` after each (a run cut short keeps what it finished)."""
    import torch
    sys.path.insert(0, str(HERE))
    import build
    from phasor.bench import registry
    importlib.import_module(f"phasor.{system}.bench_cases")  # registers this system's cases only
    build.load(system, override_cpu=True)
    torch.manual_seed(0)
    results = []
    for spec in list(registry._CASES):
        if not re.search(cases, spec.name):
            continue
        t0 = time.time()
        try:
            ok = bool(spec.factory("cpu").check())
            error = ""
        except Exception as e:  # noqa: BLE001  (any failure is a result to report)
            ok, error = False, f"{type(e).__name__}: {e}"[:500]
        results.append(dict(system=system, op=spec.op, case=spec.name, correct=ok, error=error,
                            seconds=round(time.time() - t0, 1)))
        print(f"{spec.op:24s} {spec.name:40s} {'ok' if ok else 'FAILED'} {results[-1]['seconds']:7.1f} s {error}",
              flush=True)
        out.write_text(json.dumps(results))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "cuda_emu" / "bench_checks.json"))
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per system")
    ap.add_argument("--cases", default="", help="regular expression on case names (default: all)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_system(args.child, args.cases, Path(args.json))
        return 0
    records = []
    for system in args.systems.split(","):
        tmp = Path(args.json).with_suffix(f".{system}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        print(f"== {system}", flush=True)
        tmp.write_text("[]")
        try:
            run = subprocess.run([sys.executable, __file__, "--child", system, "--json", str(tmp), "--cases", args.cases],
                                 cwd=ROOT, timeout=args.timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            error = "" if run.returncode == 0 else f"process exited with {run.returncode} after the cases above"
        except subprocess.TimeoutExpired:
            error = f"over {args.timeout} s: the remaining cases did not run"
        records += json.loads(tmp.read_text())
        if error:
            records.append(dict(system=system, op="*", case="*", correct=False, error=error))
        tmp.unlink(missing_ok=True)
    import platform
    Path(args.json).write_text(json.dumps(dict(
        what="bench cases' check() with the emulated CUDA kernels in place of the CPU ones (tools/cuda_emu)",
        machine=platform.processor() or platform.machine(), records=records), indent=1))
    bad = [r for r in records if not r["correct"]]
    print(f"{len(records) - len(bad)} of {len(records)} cases correct; written to {args.json}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
