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
