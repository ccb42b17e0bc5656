"""The quantized-PDE repro end to end at a tiny size: metrics JSON, figure, resume."""
import json

from phasor.quantized_pde import repro


def _args(tmp_path):
    return ["--quick", "--datasets", "burgers1d", "--archs", "resnet", "--float-steps", "2", "--qat-steps", "2",
            "--out-dir", str(tmp_path / "out"), "--ckpt-dir", str(tmp_path / "ck"), "--cache-dir", str(tmp_path / "data")]


def test_repro_writes_metrics_and_resumes(tmp_path):
    metrics = repro.main(_args(tmp_path))
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["system"] == "quantized_pde" and record["config"]["reduced"] and not record["partial"]
    rows = record["metrics"]["burgers1d"]["resnet"]["runs"]
    assert [r["config"] for r in rows] == ["float32", "W8A8", "W6A6", "W4A4", "float32_res1/2"]
    bops = {r["config"]: r["bops"] for r in rows}
    assert bops["W4A4"] < bops["W6A6"] < bops["W8A8"] < bops["float32"] and bops["float32_res1/2"] < bops["float32"]
    assert "int8_converted_one_step_nmse" in rows[1]
    assert (tmp_path / "out" / "quantized_pde.png").stat().st_size > 0
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ck").glob("*.result.json")}
    again = repro.main(_args(tmp_path))  # resume: every run is finished, nothing is retrained
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ck").glob("*.result.json")} == stamp
    assert again["burgers1d"]["resnet"]["runs"] == metrics["burgers1d"]["resnet"]["runs"]


def test_pareto_front():
    pts = [dict(bops=10, rollout_nmse=1.0), dict(bops=5, rollout_nmse=2.0), dict(bops=20, rollout_nmse=1.5),
           dict(bops=5, rollout_nmse=3.0)]
    assert repro.pareto_front(pts) == [0, 1]
