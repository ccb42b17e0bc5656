"""The benchmark harness: correctness is checked first, every impl is timed, records have the keys."""
import io
import json
import time

import torch

from phasor.bench import harness, registry


def test_harness_runs_a_case_and_writes_records(tmp_path, monkeypatch):
    x = torch.randn(256)

    def factory(device):
        return registry.Case({"fused": lambda: x * 2, "eager": lambda: x + x}, check=lambda: True)

    monkeypatch.setattr(registry, "_CASES", [registry.CaseSpec("toy_op", "tiny", factory, ("cpu",))])
    monkeypatch.setattr(harness, "all_cases", lambda: list(registry._CASES))
    out = io.StringIO()
    records = harness.run("toy_op", "cpu", min_run_time=0.01, out=out)
    assert [r["impl"] for r in records] == ["fused", "eager"]
    for r in records:
        assert {"op", "case", "device", "impl", "median_ms", "peak_mem_mb", "correct"} <= set(r)
        assert r["median_ms"] > 0 and r["correct"] is True
    assert "toy_op" in out.getvalue() and "speedup" in out.getvalue()
    path = tmp_path / "b.json"
    harness.write_json(records, str(path))
    saved = json.loads(path.read_text())
    assert len(saved["records"]) == 2 and "machine" in saved and "build_info" in saved


def test_a_failed_correctness_check_is_reported(monkeypatch):
    def factory(device):
        return registry.Case({"fused": lambda: None, "eager": lambda: None}, check=lambda: False)

    monkeypatch.setattr(registry, "_CASES", [registry.CaseSpec("toy_op", "wrong", factory, ("cpu",))])
    monkeypatch.setattr(harness, "all_cases", lambda: list(registry._CASES))
    records = harness.run("toy_op", "cpu", min_run_time=0.01, out=io.StringIO())
    assert all(r["correct"] is False for r in records)


def test_peak_memory_counts_live_allocations():
    def alloc():
        a = torch.empty(1_000_000)   # 4 MB
        b = torch.empty(2_000_000)   # 8 MB, both alive
        del a
        return b
    assert 11.0 < harness._cpu_peak_mb(alloc) < 13.0


def test_rotating_features_cases_are_registered():
    specs = registry.all_cases()
    assert {"rot_bn_epilogue", "rot_ln_epilogue", "rotating_layer"} <= {s.op for s in specs}
    assert all("cpu" in s.devices for s in specs)


def _install(monkeypatch, *specs):
    monkeypatch.setattr(registry, "_CASES", list(specs))
    monkeypatch.setattr(harness, "all_cases", lambda: list(registry._CASES))


def test_a_failing_case_or_impl_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    x = torch.randn(64)

    def broken_factory(device):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def broken_impl_factory(device):
        def boom():
            raise ValueError("compile failed")
        return registry.Case({"fused": lambda: x * 2, "compile": boom, "eager": lambda: x + x}, check=lambda: True)

    _install(monkeypatch, registry.CaseSpec("toy_op", "broken", broken_factory, ("cpu",)),
             registry.CaseSpec("toy_op", "half_broken", broken_impl_factory, ("cpu",)))
    path = tmp_path / "partial.json"
    out = io.StringIO()
    records = harness.run("toy_op", "cpu", min_run_time=0.01, out=out, json_path=str(path))
    by_key = {(r["case"], r["impl"]): r for r in records}
    assert by_key[("broken", "error")]["correct"] is False
    assert "illegal memory access" in by_key[("broken", "error")]["error"]
    assert by_key[("half_broken", "compile")]["error"].startswith("ValueError: compile failed")
    assert by_key[("half_broken", "compile")]["median_ms"] is None
    assert by_key[("half_broken", "fused")]["median_ms"] > 0 and by_key[("half_broken", "fused")]["correct"]
    assert "illegal memory access" in out.getvalue()
    # The JSON was written as the run went: it holds every record, and no temporary file is left.
    assert len(json.loads(path.read_text())["records"]) == len(records)
    assert list(tmp_path.iterdir()) == [path]


def test_impls_filter_keeps_only_the_named_impls(monkeypatch):
    x = torch.randn(64)
    calls = []

    def factory(device):
        def compiled():
            calls.append("compile")
            return x
        return registry.Case({"fused": lambda: x * 2, "eager": lambda: x + x, "compile": compiled},
                             check=lambda: True)

    _install(monkeypatch, registry.CaseSpec("toy_op", "tiny", factory, ("cpu",)))
    records = harness.run("toy_op", "cpu", min_run_time=0.01, out=io.StringIO(), impls=("fused", "eager"))
    assert [r["impl"] for r in records] == ["fused", "eager"]
    assert records[0]["speedup_vs_eager"] > 0 and calls == []
    records = harness.run("toy_op", "cpu", min_run_time=0.01, out=io.StringIO(), skip_impls=("compile",))
    assert [r["impl"] for r in records] == ["fused", "eager"] and calls == []


def test_cpu_timing_interleaves_the_impls():
    """Rounds alternate the impls (a b, a b, ...) so a slow phase of the machine hits them alike."""
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    ms = harness.time_cpu_interleaved(fns, min_run_time=0.03, rounds=3)
    blocks = [k for i, k in enumerate(calls) if i == 0 or calls[i - 1] != k]
    assert blocks == ["a", "b"] * 4  # warm-up, then 3 rounds
    assert set(ms) == {"a", "b"} and all(v > 0 for v in ms.values())


def test_cpu_timing_lets_a_slow_impl_sit_out_later_rounds():
    calls = []

    def slow():
        calls.append("slow")
        time.sleep(0.05)
    fns = {"slow": slow, "fast": lambda: calls.append("fast")}
    ms = harness.time_cpu_interleaved(fns, min_run_time=0.04, rounds=4)
    assert calls.count("slow") <= 3  # warm-up, the first round, and no more
    assert calls.count("fast") > 4 * calls.count("slow")
    assert ms["slow"] >= 50 > ms["fast"]
