"""`phasor repro complex-rnn` in a tiny configuration: outputs, checkpoints and resume."""
import json

import torch

from phasor.complex_rnn import repro


def test_repro_writes_results_and_resumes(tmp_path, monkeypatch):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    args = ["--images", "3", "--seeds", "2", "--chunk", "2", "--out-dir", str(out), "--ckpt-dir", str(ckpt)]
    first = repro.main(args)
    m = json.loads((out / "metrics.json").read_text())
    assert m["system"] == "complex-rnn" and set(m) >= {"config", "metrics", "machine", "seconds"}
    for name in ("2shapes", "3shapes"):
        assert m["metrics"][name]["runs"] == 6
        assert 0.5 <= m["metrics"][name]["pixel_accuracy_mean"] <= 1.0
    assert (out / "complex_rnn.png").stat().st_size > 10_000
    ck = torch.load(ckpt / "2shapes.pt", weights_only=False)
    assert sorted(ck["chunks"]) == [0, 2]

    # resume: finished chunks are not recomputed
    calls = []
    real = repro.evaluate_chunk
    monkeypatch.setattr(repro, "evaluate_chunk", lambda *a: calls.append(a) or real(*a))
    again = repro.main(args)
    assert calls == [] and again["metrics"]["2shapes"] == first["metrics"]["2shapes"]
    # other settings: the checkpoint is ignored
    repro.main(["--images", "2", "--seeds", "1", "--chunk", "2", "--out-dir", str(out), "--ckpt-dir", str(ckpt)])
    assert len(calls) == 2  # one chunk per dataset, recomputed
