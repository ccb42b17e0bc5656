"""How phasor's CUDA kernels touch memory, measured by running them under cuda_emu: global-memory
coalescing (32-byte sectors per request against the fewest that hold the bytes) and shared-memory
bank conflicts (wavefronts per request against one per phase), per kernel and per source line.

    python tools/cuda_emu/profile.py [--systems gta,quantized_pde] [--cases REGEX] [--groups 3]
                                     [--out bench/results/cuda_emu/profile]

Each benchmark case that has a CUDA configuration is built as it would be on the GPU (its factory
is called with device "cuda" while tensors are kept on the CPU), and its fused impls run once with
the emulated kernels in place of the CPU ones, in the profiling build (runtime/cuda_emu_profile.h).
Only a few thread-block clusters of every launch run (--groups, spread from the first to the last);
the rest are skipped, so the outputs are garbage and the cases are not checked: bench_checks.py and
the emulator tests check results. What this gives is the access pattern of each line at the
benchmark's own sizes; it says nothing about time, caches, occupancy or latency hiding.
"""
from __future__ import annotations

import argparse
import collections
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
OPS = ("load", "store", "atomic")
SPACES = ("global", "shared", "peer-shared")


def _cuda_on_cpu_mode():
    """A TorchFunctionMode that turns every device="cuda" a case factory asks for into the CPU."""
    import torch
    from torch.overrides import TorchFunctionMode

    def cpu(a):
        if isinstance(a, str) and a.startswith("cuda"):
            return "cpu"
        if isinstance(a, torch.device) and a.type == "cuda":
            return torch.device("cpu")
        return a

    class CudaOnCpu(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = {k: cpu(v) for k, v in (kwargs or {}).items()}
            return func(*[cpu(a) for a in args], **kwargs)
    return CudaOnCpu()


def run_system(system: str, cases: str, out: Path) -> None:
    """In this process (the profiling build registered as phasor's CPU kernels): run the fused impls
    of every CUDA case of `system`, with a marker line before each in the profile file."""
    import torch
    sys.path.insert(0, str(HERE))
    import build
    from phasor.bench import registry
    importlib.import_module(f"phasor.{system}.bench_cases")
    build.load(system, override_cpu=True)  # before any tensor exists: the profile tracks allocations
    torch.manual_seed(0)
    for spec in list(registry._CASES):
        if "cuda" not in spec.devices or not re.search(cases, spec.name):
            continue
        t0 = time.time()
        try:
            with _cuda_on_cpu_mode():
                case = spec.factory("cuda")
            impls = [k for k in case.impls if k.startswith("fused")]
            for impl in impls:
                with out.open("a") as f:
                    f.write(json.dumps({"case": f"{spec.op}/{spec.name}", "impl": impl}) + "\n")
                case.impls[impl]()
            print(f"{spec.op:24s} {spec.name:40s} {', '.join(impls)}  {time.time() - t0:6.1f} s", flush=True)
        except Exception as e:  # noqa: BLE001  (report it and go on with the other cases)
            with out.open("a") as f:
                f.write(json.dumps({"case": f"{spec.op}/{spec.name}", "error": f"{type(e).__name__}: {e}"[:400]}) + "\n")
            print(f"{spec.op:24s} {spec.name:40s} FAILED: {type(e).__name__}: {e}", flush=True)


def resolve(library: str, offsets: set[int]) -> dict[int, tuple[str, str, str]]:
    """offset -> (function, "file:line" of the access, "file:line" in the outermost function the
    access's helper was inlined into, or "") through addr2line on the profiled library."""
    offsets = sorted(offsets)
    if not offsets:
        return {}
    # -a starts each address's block with the address; -i lists the inline chain, innermost first
    run = subprocess.run(["addr2line", "-e", library, "-a", "-f", "-C", "-i", *[hex(o) for o in offsets]],
                         capture_output=True, text=True, check=True)
    blocks, cur = [], None
    for line in run.stdout.splitlines():
        if re.fullmatch(r"0x[0-9a-f]+", line):
            cur = []
            blocks.append(cur)
        else:
            cur.append(line.split(" (discriminator")[0])
    out = {}
    for o, block in zip(offsets, blocks):
        chain = list(zip(block[0::2], block[1::2]))  # (function, file:line) pairs
        out[o] = (chain[-1][0], chain[0][1], chain[-1][1] if len(chain) > 1 else "")
    return out


def _short(where: str) -> str:
    """file:line with the file's base name (phasor's CUDA file names are unique)."""
    return Path(where).name


def summarize(profile: Path) -> list[dict]:
    """One record per (case, impl, kernel): totals scaled to the whole grid, and per-site rows."""
    events, launches = [], []
    current = None
    for line in profile.read_text().splitlines():
        rec = json.loads(line)
        if "case" in rec:
            current = rec
            events.append(rec)
        elif current is not None and "error" not in current:
            launches.append((current, rec))
    by_lib: dict[str, set[int]] = collections.defaultdict(set)
    for _, rec in launches:
        lib = rec["launch"]["library"]
        by_lib[lib].add(rec["launch"]["kernel"])
        for s in rec["sites"]:
            by_lib[lib].update((s["pc"] - 1, s["via"] - 1))
    names = {lib: resolve(lib, offs) for lib, offs in by_lib.items()}
    kernels: dict[tuple, dict] = {}
    for case, rec in launches:
        L = rec["launch"]
        lib = names[L["library"]]
        kernel = kernel_name(lib.get(L["kernel"], ("?", "?", ""))[0])
        key = (case["case"], case["impl"], kernel)
        k = kernels.setdefault(key, dict(case=case["case"], impl=case["impl"], kernel=kernel, launches=0,
                                         grid=L["grid"], block=L["block"], smem=L["smem"], cluster=L["cluster"],
                                         l2_sectors=0.0, sites={}))
        k["launches"] += 1
        scale = L["groups"] / max(1, L["recorded_groups"])
        k["l2_sectors"] += L["distinct_sectors"] * scale
        for s in rec["sites"]:
            _, where, inlined_into = lib.get(s["pc"] - 1, ("?", "?", ""))
            # context: where an inlined helper sits in its kernel, else the call site of the function
            via = inlined_into or lib.get(s["via"] - 1, ("?", "?", ""))[1]
            site = _short(where)
            via_s = _short(via)
            if via_s == site or via_s.startswith("cuda_emu") or not re.search(r"\.cuh?:\d+$", via_s):
                via_s = ""
            sk = (site, via_s, OPS[s["op"]], SPACES[s["space"]], s["size"])
            row = k["sites"].setdefault(sk, dict(line=site, via=via_s, op=OPS[s["op"]], space=SPACES[s["space"]],
                                                 size=s["size"], requests=0.0, lanes=0.0, bytes=0.0, units=0.0,
                                                 ideal=0.0, divergent=False))
            row["divergent"] |= bool(s.get("divergent"))
            for f in ("requests", "lanes", "bytes", "units", "ideal"):
                row[f] += s[f] * scale
    out = []
    for k in kernels.values():
        rows = sorted(k.pop("sites").values(), key=lambda r: -(r["units"] - r["ideal"]))
        tot = collections.defaultdict(float)
        for r in rows:
            sp = "global" if r["space"] == "global" else "shared"
            tot[sp + "_units"] += r["units"]
            tot[sp + "_ideal"] += r["ideal"]
            tot[sp + "_bytes"] += r["bytes"]
            tot[sp + "_requests"] += r["requests"]
        k.update({key: round(v) for key, v in tot.items()})
        k["l2_sectors"] = round(k["l2_sectors"])
        k["sites"] = [{**r, **{f: round(r[f]) for f in ("requests", "lanes", "bytes", "units", "ideal")}} for r in rows]
        out.append(k)
    errors = [e for e in events if "error" in e]
    return out + [dict(case=e["case"], error=e["error"]) for e in errors]


def kernel_name(demangled: str) -> str:
    """`ns::kernel<args>` from addr2line's demangled signature (no return type, namespaces or parameters)."""
    name = demangled.replace("(anonymous namespace)::", "")
    name = re.sub(r"^void ", "", name)
    depth = 0
    for i, ch in enumerate(name):  # cut at the parameter list: the first "(" outside template arguments
        depth += (ch == "<") - (ch == ">")
        if ch == "(" and depth == 0:
            name = name[:i]
            break
    return re.sub(r"^(?:\w+::)+(?=\w+(<|$))", "", name)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def report(records: list[dict], top: int = 8) -> str:
    """Markdown: a table of (case, impl, kernel), then per kernel the sites furthest above ideal."""
    lines = ["| case | impl | kernel | launches | global sectors / ideal | L1 MB | L2 MB (lower bound) | "
             "shared wavefronts / ideal | shared requests |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {r['case']} | {r['impl']} | `{r['kernel']}` | {r['launches']} | "
                     f"{_ratio(r.get('global_units', 0), r.get('global_ideal', 0))} | "
                     f"{r.get('global_units', 0) * 32 / 1e6:.1f} | {r['l2_sectors'] * 32 / 1e6:.1f} | "
                     f"{_ratio(r.get('shared_units', 0), r.get('shared_ideal', 0))} | "
                     f"{r.get('shared_requests', 0):.0f} |")
    lines.append("")
    by_kernel: dict[str, dict] = {}
    for r in records:
        if "error" in r:
            continue
        for s in r["sites"]:
            if s["units"] <= s["ideal"] * 1.001:
                continue
            key = (s["line"], s["via"], s["op"], s["space"], s["size"])
            agg = by_kernel.setdefault(r["kernel"], {}).setdefault(key, dict(s, requests=0, units=0, ideal=0))
            for f in ("requests", "units", "ideal"):
                agg[f] += s[f]
            agg["divergent"] |= s["divergent"]
    if not by_kernel:
        lines.append("Every recorded access is at its ideal: no uncoalesced global request, no shared bank conflict.")
    if any(s["divergent"] for sites in by_kernel.values() for s in sites.values()):
        lines += ["", "*Divergent* sites are executed an unequal number of times by the lanes of a warp (a branch "
                  "inside a loop); requests are formed by each lane's n-th execution, so there they can pair "
                  "different iterations and their numbers are not reliable.", ""]
    for kernel, sites in sorted(by_kernel.items()):
        worst = sorted(sites.values(), key=lambda s: -(s["units"] - s["ideal"]))[:top]
        lines += [f"**`{kernel}`**: sites above ideal, summed over its cases", "",
                  "| line | op | space | bytes/lane | requests | units / ideal | excess units |",
                  "|---|---|---|---|---|---|---|"]
        for s in worst:
            where = s["line"] + (f" (in {s['via']})" if s["via"] else "")
            flag = " (divergent)" if s["divergent"] else ""
            lines.append(f"| {where} | {s['op']} | {s['space']} | {s['size']} | {s['requests']} | "
                         f"{_ratio(s['units'], s['ideal'])}{flag} | {s['units'] - s['ideal']} |")
        lines.append("")
    return "\n".join(lines)


def _write_system(out: Path, system: str, records: list[dict], args) -> None:
    prev = out / f"{system}.json"
    cases, groups = args.cases, args.groups
    if args.summarize_only and prev.exists():  # keep what the run that made the raw log was asked
        old = json.loads(prev.read_text())
        cases, groups = old["cases"], old["groups"]
    prev.write_text(json.dumps(dict(system=system, cases=cases, groups=groups, records=records), indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--cases", default="", help="regular expression on case names (default: all)")
    ap.add_argument("--groups", type=int, default=3, help="thread-block clusters recorded per launch")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cuda_emu" / "profile"))
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per system")
    ap.add_argument("--summarize-only", action="store_true",
                    help="rebuild the reports from the last run's raw logs (build/cuda_emu/profile_raw/)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--profile-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_system(args.child, args.cases, Path(args.profile_file))
        return 0
    unknown = [x for x in args.systems.split(",") if x not in SYSTEMS]
    if unknown:
        ap.error(f"--systems: unknown {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    if args.groups < 1:
        ap.error(f"--groups must be at least 1, got {args.groups}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = False
    for system in args.systems.split(","):
        raw = ROOT / "build" / "cuda_emu" / "profile_raw" / f"{system}.jsonl"  # addresses: this build's only
        raw.parent.mkdir(parents=True, exist_ok=True)
        if args.summarize_only:
            if raw.exists():
                _write_system(out, system, summarize(raw), args)
            continue
        raw.unlink(missing_ok=True)
        raw.touch()
        print(f"== {system}", flush=True)
        env = {**{k: v for k, v in os.environ.items() if k not in ("PHASOR_CUDA_EMU_ASAN", "LD_PRELOAD")},
               "PYTHONWARNINGS": "ignore", "PHASOR_CUDA_EMU_PROFILE": str(raw.resolve()),
               "PHASOR_CUDA_EMU_PROFILE_SKIP": "1", "PHASOR_CUDA_EMU_PROFILE_GROUPS": str(args.groups)}
        try:
            subprocess.run([sys.executable, __file__, "--child", system, "--cases", args.cases,
                            "--profile-file", str(raw.resolve())], cwd=ROOT, env=env, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{system}: over {args.timeout} s; summarising what finished", flush=True)
        records = summarize(raw)  # (the raw file stays until the next run: --summarize-only rereads it)
        failed |= any("error" in r for r in records)
        _write_system(out, system, records, args)
    # The report covers every system profiled into this folder so far (one run per system is fine).
    sections = []
    for path in sorted(out.glob("*.json")):
        run = json.loads(path.read_text())
        sections.append(f"## {run['system']} (clusters recorded per launch: {run['groups']}"
                        + (f"; cases matching `{run['cases']}`" if run["cases"] else "") + ")\n\n"
                        + report(run["records"]))
    text = "\n".join(sections)
    (out / "profile.md").write_text(text + "\n")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
