"""The `phasor` command: `phasor bench ...`, `phasor repro <system> ...`, `phasor info`."""
from __future__ import annotations

import argparse
import json
import sys

REPROS = {
    "rotating-features": "phasor.rotating_features.repro",
    "wave-rnn": "phasor.wave_rnn.repro",
    "complex-rnn": "phasor.complex_rnn.repro",
    "gta": "phasor.gta.repro",
    "quantized-pde": "phasor.quantized_pde.repro",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="phasor", description="phasor: fused ops, benchmarks and paper reproductions")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="correctness-checked benchmarks of the fused ops")
    b.add_argument("--op", default=None, help="only this op (e.g. rot_bn_epilogue)")
    b.add_argument("--case", default=None, help="only this case")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    b.add_argument("--json", default=None, metavar="PATH", help="write one record per (op, case, impl)")
    b.add_argument("--min-run-time", type=float, default=1.0, help="seconds per CPU measurement")
    b.add_argument("--impls", default=None, metavar="A,B",
                   help="only these impls (the case's names, comma-separated)")
    b.add_argument("--skip-impls", default="", metavar="A,B",
                   help="leave these impls out (e.g. compile: its Triton compile is slow on a time-limited GPU run)")
    # no help of its own: `phasor repro <system> --help` reaches the system's parser
    r = sub.add_parser("repro", help="reproduce a paper's result", add_help=False)
    r.add_argument("system", choices=sorted(REPROS))
    if argv[:2] in (["repro", "-h"], ["repro", "--help"]):
        print("usage: phasor repro {" + ",".join(sorted(REPROS)) + "} [options]\n\n"
              "Reproduces one paper's result: trains or runs the system, writes a metrics JSON and a PNG.\n"
              "`phasor repro <system> --help` lists that system's options.")
        return 0
    sub.add_parser("info", help="print phasor.build_info")
    args, rest = p.parse_known_args(argv)
    if args.cmd == "bench":
        if rest:
            p.error(f"unrecognized arguments: {' '.join(rest)}")
        from .bench import harness
        impls = tuple(args.impls.split(",")) if args.impls else None
        records = harness.run(args.op, args.device, args.min_run_time, args.case, impls=impls, json_path=args.json,
                              skip_impls=tuple(filter(None, args.skip_impls.split(","))))
        if args.json:
            print(f"wrote {len(records)} records to {args.json}")
        return 0 if all(r["correct"] for r in records) else 1
    if args.cmd == "repro":
        import importlib
        importlib.import_module(REPROS[args.system]).main(rest)
        return 0
    import phasor
    print(json.dumps(phasor.build_info, indent=2))
    return 0
