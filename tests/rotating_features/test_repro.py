"""The repro job on a tiny configuration: metrics JSON, figure, checkpoint and resume."""
import json

import pytest

from phasor.rotating_features import repro


def tiny_config(tmp_path, steps):
    return repro.Config(n=4, hidden_dim=4, linear_dim=8, batch_size=8, steps=steps, warmup_steps=2,
                        train_images=32, val_images=16, test_images=16, eval_every=2,
                        sklearn_check_images=4, out_dir=str(tmp_path / "run"))


def test_repro_writes_metrics_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("PHASOR_DATA", str(tmp_path / "data"))
    logs = []
    result = repro.train(tiny_config(tmp_path, 4), log=logs.append)
    out = tmp_path / "run"
    saved = json.loads((out / "metrics.json").read_text())
    assert {"system", "config", "metrics", "machine", "seconds"} <= set(saved)
    assert saved["system"] == "rotating-features"
    assert 0.0 <= saved["metrics"]["test_MSE"] <= 1.0 and -1.0 <= saved["metrics"]["test_ARI-BG"] <= 1.0
    assert saved["history"]["step"] == [1, 2, 3, 4] and saved["history"]["val_step"] == [2, 4]
    assert (out / "checkpoint.pt").exists()
    if pytest.importorskip("matplotlib"):
        assert (out / "rotating_features.png").stat().st_size > 10_000
    if result["sklearn_crosscheck"] is not None:
        assert result["sklearn_crosscheck"]["images"] == 4

    # more steps with the same training config: continues from step 4, not from scratch
    logs.clear()
    result = repro.train(tiny_config(tmp_path, 6), log=logs.append)
    assert not any("resumed" in m for m in logs)  # steps changed: a different run, started afresh
    cfg = tiny_config(tmp_path, 6)
    cfg.test_images = 8  # evaluation-only change: the checkpoint stays valid
    logs.clear()
    result = repro.train(cfg, log=logs.append)
    assert any("resumed" in m and "step 6" in m for m in logs)
    assert result["history"]["step"] == [1, 2, 3, 4, 5, 6]
