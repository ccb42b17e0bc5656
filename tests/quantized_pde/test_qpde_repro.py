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
    assert [r["config"] for r in rows] == ["float32", "float32_ft", "W8A8", "W6A6", "W4A4", "float32_res1/2"]
    assert all(r[e] > 0 for r in rows for e in repro.ERRORS)
    # the equal-training reference continues from the float32 model: a different model, same cost
    by = {r["config"]: r for r in rows}
    assert by["float32_ft"]["one_step_nmse"] != by["float32"]["one_step_nmse"]
    assert by["float32_ft"]["bops"] == by["float32"]["bops"]
    bops = {r["config"]: r["bops"] for r in rows}
    assert bops["W4A4"] < bops["W6A6"] < bops["W8A8"] < bops["float32"] and bops["float32_res1/2"] < bops["float32"]
    assert "int8_converted_one_step_nmse" in by["W8A8"]
    assert (tmp_path / "out" / "quantized_pde.png").stat().st_size > 0
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ck").glob("*.result.json")}
    again = repro.main(_args(tmp_path))  # resume: every run is finished, nothing is retrained
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ck").glob("*.result.json")} == stamp
    assert again["burgers1d"]["resnet"]["runs"] == metrics["burgers1d"]["resnet"]["runs"]


def test_results_cached_without_new_metrics_are_evaluated_again(tmp_path):
    repro.main(_args(tmp_path))
    path = tmp_path / "ck" / "burgers1d_resnet_W8A8.result.json"
    old = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in old.items() if k not in ("one_step_mse", "one_step_nmse_by_rms")}))
    again = repro.main(_args(tmp_path))  # the QAT checkpoint is finished: only the evaluation reruns
    row = next(r for r in again["burgers1d"]["resnet"]["runs"] if r["config"] == "W8A8")
    assert row["one_step_mse"] == old["one_step_mse"] and row["one_step_nmse_by_rms"] == old["one_step_nmse_by_rms"]


def test_nmse_by_rms_buckets():
    import torch
    true = torch.stack([torch.full((1, 4), v) for v in (0.05, 0.5, 0.6, 2.0)])
    pred = true * 1.1  # NMSE 0.01 for every sample
    got = repro.nmse_by_rms(pred, true)
    assert [got[k]["samples"] for k in repro.RMS_BUCKETS] == [1, 2, 1]
    assert all(abs(v["nmse"] - 0.01) < 1e-6 for v in got.values())
    pred[0] = 0.0  # only the small sample's bucket changes
    got = repro.nmse_by_rms(pred, true)
    assert abs(got["rms<0.1"]["nmse"] - 1.0) < 1e-6 and abs(got["rms>=1"]["nmse"] - 0.01) < 1e-6


def test_mse_and_nmse_weight_samples_differently():
    import torch
    true = torch.stack([torch.full((1, 8), 1.0), torch.full((1, 8), 0.01)])
    pred = true + 0.01  # the same absolute error on a large and a near-zero sample
    assert abs(repro.mse(pred, true) - 1e-4) < 1e-9
    assert abs(repro.nmse(pred, true) - 0.5 * (1e-4 + 1.0)) < 1e-4


def test_summary_ratios_against_both_float_references():
    def row(config, bits, scale):
        buckets = {"rms<0.1": dict(samples=0, nmse=None), "rms>=1": dict(samples=3, nmse=0.03 * scale)}
        return dict(config=config, weight_bits=bits, bops=bits * bits, rollout_nmse=0.1 * scale,
                    one_step_nmse=0.01 * scale, one_step_mse=0.02 * scale, rollout_mse=0.2 * scale,
                    one_step_nmse_by_rms=buckets)
    rows = [row("float32", 32, 1.2), row("float32_ft", 32, 1.0), row("W8A8", 8, 1.05)]
    s = repro.summarise(rows)
    assert abs(s["w8a8_over"]["float32"]["rollout_nmse"] - 1.05 / 1.2) < 1e-12
    assert abs(s["w8a8_over"]["float32_ft"]["one_step_mse"] - 1.05) < 1e-12
    assert s["w8a8_over"]["float32_ft"]["one_step_nmse_by_rms"]["rms<0.1"] is None
    assert abs(s["w8a8_over"]["float32_ft"]["one_step_nmse_by_rms"]["rms>=1"] - 1.05) < 1e-12
    assert s["w8a8_within_10pct_equal_training"] == {e: True for e in repro.ERRORS}
    rows[2] = row("W8A8", 8, 1.15)  # within 10% of the float32 parent, not of float32_ft
    s = repro.summarise(rows)
    assert s["w8a8_within_10pct_rollout"] and not any(s["w8a8_within_10pct_equal_training"].values())


def test_pareto_front():
    pts = [dict(bops=10, rollout_nmse=1.0), dict(bops=5, rollout_nmse=2.0), dict(bops=20, rollout_nmse=1.5),
           dict(bops=5, rollout_nmse=3.0)]
    assert repro.pareto_front(pts) == [0, 1]
