"""The wave-RNN repro job on a tiny configuration: metrics JSON, figure, checkpoints and resume."""
import dataclasses
import json

import pytest
import torch

from phasor.wave_rnn import repro

ALL_TASKS = "adding,copy,digits,pdigits"


def tiny(tmp_path, **over):
    values = dict(repro.QUICK, out_dir=str(tmp_path / "run"), tasks="adding,copy") | over
    return repro.Config(**values)


def test_repro_writes_metrics_figure_and_skips_finished_runs(tmp_path):
    pytest.importorskip("sklearn")
    logs = []
    result = repro.run(tiny(tmp_path, tasks=ALL_TASKS), log=logs.append)
    out = tmp_path / "run"
    saved = json.loads((out / "metrics.json").read_text())
    assert {"system", "config", "metrics", "machine", "seconds", "history"} <= set(saved)
    assert saved["system"] == "wave-rnn" and saved["config"]["tasks"] == ALL_TASKS
    m = saved["metrics"]
    for task, metric in [("adding", "test_MSE"), ("copy", "test_loss"), ("digits", "test_accuracy"),
                         ("pdigits", "test_accuracy")]:
        for kind in ("wrnn", "irnn"):
            r = m[task][kind]
            assert r["steps"] == 6 and r["seconds"] > 0 and r["parameters"] > 0
            assert metric in r and r["final_train_loss"] == saved["history"][task][kind]["loss"][-1]
            assert (out / f"{task}_{kind}.pt").exists()
    assert 0 <= m["copy"]["wrnn"]["test_recall_accuracy"] <= 1
    assert "steps_to_solve" in m["adding"]["wrnn"] and "copy_loss_ratio_irnn_over_wrnn" in m["summary"]
    assert sorted(m["pdigits"]["wrnn"]["permutation"]) == list(range(64))
    assert m["digits"]["wrnn"]["permutation"] == list(range(64))
    assert saved["history"]["adding"]["wrnn"]["step"] == [1, 2, 3, 4, 5, 6]
    assert saved["history"]["adding"]["wrnn"]["eval_step"] == [3, 6]
    if pytest.importorskip("matplotlib"):
        assert (out / "wave_rnn.png").stat().st_size > 10_000

    # everything finished: a second run trains nothing and reports the same numbers
    logs.clear()
    again = repro.run(tiny(tmp_path, tasks=ALL_TASKS), log=logs.append)
    assert sum("already finished" in msg for msg in logs) == 8
    assert again["metrics"]["copy"] == result["metrics"]["copy"]

    # a changed copy setting retrains copy only
    logs.clear()
    repro.run(tiny(tmp_path, copy_lr=2e-3), log=logs.append)
    assert any(msg.startswith("adding/wrnn: already finished") for msg in logs)
    assert any(msg.startswith("copy/wrnn: ignoring") for msg in logs)


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    """Stopping after step 5 and resuming from the step-4 checkpoint gives the uninterrupted run."""
    cfg = tiny(tmp_path, tasks="adding", adding_steps=8, checkpoint_every=4)
    straight = repro.run(dataclasses.replace(cfg, out_dir=str(tmp_path / "straight")), log=lambda m: None)

    calls = {"n": 0}
    original = repro.AddingTask.loss

    def failing_loss(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise Interrupt
        return original(self, model, batch)

    monkeypatch.setattr(repro.AddingTask, "loss", failing_loss)
    with pytest.raises(Interrupt):
        repro.run(cfg, log=lambda m: None)
    monkeypatch.setattr(repro.AddingTask, "loss", original)
    ck = torch.load(tmp_path / "run" / "adding_wrnn.pt", weights_only=False)
    assert ck["step"] == 4 and ck["result"] is None

    logs = []
    resumed = repro.run(cfg, log=logs.append)
    assert any("resumed" in msg and "step 4" in msg for msg in logs)
    h, h0 = resumed["history"]["adding"]["wrnn"], straight["history"]["adding"]["wrnn"]
    assert h["step"] == list(range(1, 9))
    assert h["loss"] == h0["loss"]  # same batches, optimiser state and weights after resuming
    assert resumed["metrics"]["adding"]["wrnn"]["test_MSE"] == straight["metrics"]["adding"]["wrnn"]["test_MSE"]

    logs.clear()
    repro.run(cfg, resume=False, log=logs.append)
    assert not any("resumed" in msg or "already finished" in msg for msg in logs)


def test_cli_quick_and_overrides(tmp_path):
    result = repro.main(["--quick", "--tasks", "copy", "--fused", "false", "--copy-steps", "3",
                         "--out-dir", str(tmp_path / "cli")])
    assert result["config"]["copy_steps"] == 3 and result["config"]["copy_n"] == repro.QUICK["copy_n"]
    assert result["config"]["fused"] is False
    assert (tmp_path / "cli" / "metrics.json").exists()
    with pytest.raises(ValueError, match="unknown task"):
        repro.run(tiny(tmp_path, tasks="adding,sorting"))


def test_phasor_cli_knows_the_repro():
    from phasor import cli

    assert cli.REPROS["wave-rnn"] == "phasor.wave_rnn.repro"
