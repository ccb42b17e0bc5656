"""Dataset cache: each generated split is written once to an HDF5 file (h5py) with its generator
parameters as attributes, and read back on later runs. Without h5py the same content goes to a
``.pt`` file (torch.save of {"u": tensor, "params": dict}) — the documented fallback.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from . import diffusion_sorption, pde_data, shallow_water

GENERATORS = {
    "burgers1d": lambda n_traj, seed, **kw: pde_data.generate_burgers(n_traj, seed=seed, **kw)[:2],
    "ks1d": lambda n_traj, seed, **kw: pde_data.generate_ks(n_traj, seed=seed, **kw)[:2],
    "ns2d": lambda n_traj, seed, **kw: pde_data.generate_ns2d(n_traj, seed=seed, **kw)[:2],
    "diffusion_sorption1d": lambda n_traj, seed, **kw: diffusion_sorption.generate_diffusion_sorption(
        n_traj, seed=seed, **kw),
    "shallow_water2d": lambda n_traj, seed, **kw: shallow_water.generate_shallow_water(n_traj, seed=seed, **kw),
}

try:
    import h5py  # noqa: F401
    HAVE_H5PY = True
except ImportError:  # pragma: no cover - the fallback is exercised where h5py is missing
    HAVE_H5PY = False


def _key(name, n_traj, seed, params) -> str:
    blob = json.dumps(dict(name=name, n_traj=n_traj, seed=seed, **params), sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def save(path: str, u: torch.Tensor, params: dict):
    tmp = path + ".tmp"
    if path.endswith(".h5"):
        import h5py
        with h5py.File(tmp, "w") as f:
            f.create_dataset("u", data=u.numpy(), compression="gzip", compression_opts=1)
            for k, v in params.items():
                f.attrs[k] = v
    else:
        torch.save({"u": u, "params": params}, tmp)
    os.replace(tmp, path)


def load(path: str):
    if path.endswith(".h5"):
        import h5py
        with h5py.File(path, "r") as f:
            u = torch.from_numpy(f["u"][...])
            params = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        return u, params
    d = torch.load(path)
    return d["u"], d["params"]


def get(name: str, n_traj: int, seed: int, cache_dir: str, **params):
    """Trajectories [n_traj, frames, channels, *grid] of dataset `name`, generated once and cached."""
    os.makedirs(cache_dir, exist_ok=True)
    ext = ".h5" if HAVE_H5PY else ".pt"
    path = os.path.join(cache_dir, f"{name}_{n_traj}_{seed}_{_key(name, n_traj, seed, params)}{ext}")
    if os.path.exists(path):
        return load(path)
    u, meta = GENERATORS[name](n_traj, seed, **params)
    save(path, u, meta)
    return u, meta
