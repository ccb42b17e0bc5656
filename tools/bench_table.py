"""Markdown tables from a `phasor bench --json` file, one per op, for the README.

    python tools/bench_table.py bench/results/cpu-latest.json [--op wave_rnn]

Each row is one case: the time of every implementation, then the fused op's speedup over each of
the others (the ratios within one run are what the README quotes: machines are noisy).
"""
from __future__ import annotations

import argparse
import json
from collections import OrderedDict


def _ms(x: float) -> str:
    return f"{x:.3g} ms" if x < 1000 else f"{x / 1000:.3g} s"


def tables(records: list, only_op: str | None = None) -> str:
    by_op: "OrderedDict[str, OrderedDict[str, dict]]" = OrderedDict()
    for r in records:
        if only_op and r["op"] != only_op:
            continue
        by_op.setdefault(r["op"], OrderedDict()).setdefault(r["case"], {})[r["impl"]] = r
    out = []
    for op, cases in by_op.items():
        impls = list(OrderedDict.fromkeys(i for case in cases.values() for i in case))
        others = [i for i in impls if i != "fused"]
        head = ["case"] + impls + [f"vs {i}" for i in others] + ["correct"]
        out.append(f"`{op}`\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for case, row in cases.items():
            cells = [case] + [_ms(row[i]["median_ms"]) if i in row else "—" for i in impls]
            fused = row.get("fused")
            for i in others:
                ok = fused and i in row and fused["median_ms"] > 0
                cells.append(f"{row[i]['median_ms'] / fused['median_ms']:.2f}x" if ok else "—")
            cells.append("yes" if all(r["correct"] for r in row.values()) else "**no**")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json_path")
    p.add_argument("--op", default=None)
    args = p.parse_args()
    with open(args.json_path) as f:
        data = json.load(f)
    m = data.get("machine", {})
    print(f"<!-- {m.get('cpu_model')}, {m.get('cpu_count')} cores, torch {m.get('torch')} -->\n")
    print(tables(data["records"], args.op))


if __name__ == "__main__":
    main()
