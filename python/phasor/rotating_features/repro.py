"""`phasor repro rotating-features`: train the 4Shapes autoencoder on CPU and evaluate object discovery.

Official protocol (config.yaml, 4Shapes.yaml): Adam lr 1e-3, linear warm-up over 500 steps, gradient
norm clipped to 0.1, MSE loss, n = 8, hidden 32, linear 64; evaluation with a magnitude mask at 0.1,
k-means with k = objects + 1 and n_init = 10, ARI-BG and MBO. The CPU budget replaces the paper's 100k
steps at batch 64 with `steps` at `batch_size` (see README for the measured result).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from ..utils.training import Progress, atomic_save, atomic_write_text, linear_warmup, machine_description
from . import data as shapes
from .evaluation import evaluate
from .model import RotatingAutoEncoder


@dataclasses.dataclass
class Config:
    dataset: str = "4Shapes"
    n: int = 8
    hidden_dim: int = 32
    linear_dim: int = 64
    batch_size: int = 32
    steps: int = 8000
    lr: float = 4e-3
    warmup_steps: int = 500
    decay_from: float = 0.75  # lr decays linearly to 0 over the last quarter (1.0: constant, as official)
    clip_grad_norm: float = 0.1
    train_images: int = 20000
    test_images: int = 1000
    val_images: int = 256
    eval_every: int = 250
    seed: int = 1
    sklearn_check_images: int = 200  # also score these test images with scikit-learn, official style
    threads: int = 0  # 0: torch's default
    out_dir: str = "runs/rotating_features"


# Fields that do not change what is trained: a checkpoint stays valid when only these differ.
EVAL_ONLY_FIELDS = {"test_images", "sklearn_check_images", "threads", "out_dir"}


def _training_config(cfg_dict: dict) -> dict:
    return {k: v for k, v in cfg_dict.items() if k not in EVAL_ONLY_FIELDS}


def _batches(num_images: int, batch_size: int, seed: int, start_step: int):
    """Infinite shuffled full batches (drop_last, as the official loaders), resumable by step."""
    per_epoch = num_images // batch_size
    step = start_step
    while True:
        epoch, pos = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(num_images, generator=g)
        for i in range(pos, per_epoch):
            yield step, perm[i * batch_size:(i + 1) * batch_size]
            step += 1


@torch.no_grad()
def rotating_outputs(model, images, batch_size=128):
    model.eval()
    recons, outs = [], []
    for i in range(0, len(images), batch_size):
        r, z = model(images[i:i + batch_size])
        recons.append(r)
        outs.append(z)
    return torch.cat(recons), torch.cat(outs)


def evaluate_model(model, split_data, num_objects, seed):
    recon, rot = rotating_outputs(model, split_data["images"])
    result = evaluate(rot, split_data["labels"].long(), num_objects, seed=seed)
    mse = torch.mean((recon - split_data["images"]) ** 2).item()
    return {"ARI-BG": result["ARI-BG"], "MBO_i": result["MBO_i"], "MSE": mse}, recon, rot, result["pred_labels"]


def sklearn_crosscheck(rot, labels, num_objects: int, seed: int, num_images: int):
    """ARI-BG of the first images scored the official way (scikit-learn KMeans per image, n_init=10,
    adjusted_rand_score on foreground pixels), next to phasor's batched torch k-means on the same images.
    Returns None when scikit-learn is not installed."""
    try:
        from sklearn.cluster import KMeans
        from sklearn.metrics import adjusted_rand_score
    except ImportError:
        return None
    from .evaluation import object_features
    rot, labels = rot[:num_images], labels[:num_images].long()
    feats = object_features(rot).numpy()
    scores = []
    for i in range(len(rot)):
        gt = labels[i].reshape(-1).numpy()
        keep = gt >= 0  # mask_overlap: overlap pixels take no part in k-means
        pred = KMeans(n_clusters=num_objects + 1, n_init=10, random_state=seed).fit_predict(feats[i][keep])
        fg = gt[keep] > 0
        scores.append(adjusted_rand_score(gt[keep][fg], pred[fg]))
    torch_ari = evaluate(rot, labels, num_objects, seed=seed)["ARI-BG"]
    return {"images": len(rot), "sklearn_ARI-BG": float(sum(scores) / len(scores)), "phasor_ARI-BG": torch_ari}


def train(cfg: Config, resume: bool = True, log=print) -> dict:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    num_obj = shapes.num_objects(cfg.dataset)
    train_set = shapes.load_shapes(cfg.dataset, "train", cfg.train_images)
    val_set = shapes.load_shapes(cfg.dataset, "val", cfg.val_images)
    test_set = shapes.load_shapes(cfg.dataset, "test", cfg.test_images)
    c, s = train_set["images"].shape[1], train_set["images"].shape[2]
    model = RotatingAutoEncoder(c, s, cfg.n, cfg.hidden_dim, cfg.linear_dim)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    decay_start = int(cfg.decay_from * cfg.steps)

    def lr_factor(st):
        tail = 1.0 if st < decay_start else max(0.0, (cfg.steps - st) / max(cfg.steps - decay_start, 1))
        return linear_warmup(st, cfg.warmup_steps) * tail
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    ckpt_path = out / "checkpoint.pt"
    history = {"step": [], "loss": [], "val_step": [], "val_ARI-BG": [], "val_MSE": []}
    start, seconds_before = 0, 0.0
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        if _training_config(ck["config"]) == _training_config(dataclasses.asdict(cfg)):
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            start, history, seconds_before = ck["step"], ck["history"], ck["seconds"]
            torch.set_rng_state(ck["rng"])
            log(f"resumed from {ckpt_path} at step {start}")
        else:
            log(f"ignoring {ckpt_path}: it was written with a different config")

    def checkpoint(step):
        atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                     "step": step, "history": history, "config": dataclasses.asdict(cfg),
                     "seconds": seconds_before + time.time() - t_start, "rng": torch.get_rng_state()}, ckpt_path)

    images = train_set["images"]
    bar = Progress(cfg.steps, start, desc="rotating-features")
    model.train()
    for step, idx in _batches(len(images), cfg.batch_size, cfg.seed, start):
        if step >= cfg.steps:
            break
        recon, _ = model(images[idx])
        loss = torch.nn.functional.mse_loss(recon, images[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
        opt.step()
        sched.step()
        history["step"].append(step + 1)
        history["loss"].append(loss.item())
        bar.update(loss=loss.item())
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            metrics, *_ = evaluate_model(model, val_set, num_obj, cfg.seed)
            model.train()
            history["val_step"].append(step + 1)
            history["val_ARI-BG"].append(metrics["ARI-BG"])
            history["val_MSE"].append(metrics["MSE"])
            log(f"step {step + 1}: loss {loss.item():.5f}  val ARI-BG {metrics['ARI-BG']:.4f}  val MSE {metrics['MSE']:.5f}")
            checkpoint(step + 1)
    bar.close()
    train_seconds = seconds_before + time.time() - t_start

    test_metrics, recon, rot, pred = evaluate_model(model, test_set, num_obj, cfg.seed)
    result = {
        "system": "rotating-features",
        "config": dataclasses.asdict(cfg),
        "metrics": {f"test_{k}": v for k, v in test_metrics.items()} | {
            "final_train_loss": history["loss"][-1] if history["loss"] else math.nan,
            "test_images": len(test_set["images"]),
        },
        "sklearn_crosscheck": sklearn_crosscheck(rot, test_set["labels"], num_obj, cfg.seed, cfg.sklearn_check_images),
        "history": history,
        "machine": machine_description(),
        "seconds": time.time() - t_start + seconds_before,
        "train_seconds": train_seconds,
    }
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2))
    try:
        from .figures import save_figure
        save_figure(out / "rotating_features.png", test_set, recon, rot, pred, history)
    except ImportError as exc:  # matplotlib is optional at runtime
        log(f"figure skipped ({exc})")
    log(json.dumps(result["metrics"], indent=2))
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="phasor repro rotating-features", description=__doc__)
    for f in dataclasses.fields(Config):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if a checkpoint exists")
    args = p.parse_args(argv)
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    return train(cfg, resume=not args.no_resume)


if __name__ == "__main__":
    main()
