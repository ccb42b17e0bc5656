"""Training-loop plumbing shared by every `phasor repro` job: progress, atomic checkpoints, resume."""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def linear_warmup(step: int, warmup_steps: int) -> float:
    """Learning-rate factor of the official schedule 1: linear warm-up, then constant."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


class Progress:
    """A small progress bar (tqdm when installed, plain lines otherwise) with a postfix of metrics."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", every: int = 50):
        self.total, self.n, self.desc, self.every, self.t0 = total, initial, desc, every, time.time()
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr)
        except ImportError:
            self.bar = None
        self.start = initial

    def update(self, **metrics):
        self.n += 1
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        if self.bar is not None:
            self.bar.update(1)
            if metrics:
                self.bar.set_postfix_str(text, refresh=False)
        elif self.n % self.every == 0 or self.n == self.total:
            rate = (self.n - self.start) / max(time.time() - self.t0, 1e-9)
            eta = (self.total - self.n) / max(rate, 1e-9)
            print(f"{self.desc} {self.n}/{self.total} ({rate:.2f} it/s, eta {eta:.0f}s) {text}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def machine_description() -> dict:
    """What a result was measured on (goes into every metrics JSON and benchmark record)."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class ResumableRun:
    """Checkpoint and resume of one training run.

    Holds the model, optimiser, scheduler, data generator and torch RNG state, the step, a history
    dict and the accumulated wall time, written atomically to `path`. A checkpoint resumes only when
    it was written with the same `config`. When it carries a final result, the model is restored
    and `result` is set, so the caller skips training.
    """

    def __init__(self, path, config: dict, model, opt, sched, gen: torch.Generator, history: dict,
                 label: str, resume: bool = True, log=print):
        self.path, self.config, self.label, self.log = Path(path), config, label, log
        self.model, self.opt, self.sched, self.gen = model, opt, sched, gen
        self.start, self.history, self.result, self._seconds_before = 0, history, None, 0.0
        if resume and self.path.exists():
            ck = torch.load(self.path, weights_only=False)
            if ck["config"] == config:
                model.load_state_dict(ck["model"])
                if ck.get("result") is not None:
                    self.result = ck["result"]
                    log(f"{label}: already finished ({self.path}), skipped")
                else:
                    opt.load_state_dict(ck["opt"])
                    sched.load_state_dict(ck["sched"])
                    gen.set_state(ck["gen"])
                    if "rng" in ck:
                        torch.set_rng_state(ck["rng"])
                    self.start, self.history, self._seconds_before = ck["step"], ck["history"], ck["seconds"]
                    log(f"{label}: resumed from {self.path} at step {self.start}")
            else:
                log(f"{label}: ignoring {self.path}, written with different settings")
        self._t0 = time.time()

    def seconds(self) -> float:
        """Training wall time so far, over every resumed piece of the run."""
        return self._seconds_before + time.time() - self._t0

    def save(self, step: int, result: dict | None = None) -> None:
        atomic_save({"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                     "sched": self.sched.state_dict(), "gen": self.gen.get_state(), "rng": torch.get_rng_state(),
                     "step": step, "history": self.history, "config": self.config, "seconds": self.seconds(),
                     "result": result}, self.path)
