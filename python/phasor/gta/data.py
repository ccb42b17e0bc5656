"""Small multi-view 3-D scenes rendered by a torch ray caster (the NVS task of `phasor repro gta`).

Each scene: a uniform grey ground plane (z = 0, as CLEVR's floor; `checker` > 0 adds a 1x1 chequer
of that contrast) and 3-4 coloured spheres or axis-aligned boxes inside
[-1, 1]^2 x [0, 1.2], Lambert-shaded under one fixed light. Cameras sit at random azimuth,
elevation and distance, looking at the origin (OpenCV frame: x right, y down, z forward), pinhole
with a 45 degree field of view. Extrinsics are world->camera, canonicalised to the first input view
(the official convention).
"""
from __future__ import annotations

import math

import torch

from .reps import canonicalize, rigid_inverse

FOV_DEG = 45.0
_LIGHT = (0.4, -0.3, 0.87)
_BG = (0.55, 0.7, 0.9)


def focal(size: int) -> float:
    return size / (2 * math.tan(math.radians(FOV_DEG) / 2))


def look_at_extrinsics(pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """World->camera [..., 4, 4] of cameras at pos looking at target (world up +z)."""
    fwd = torch.nn.functional.normalize(target - pos, dim=-1)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=pos.dtype).expand_as(fwd)
    right = torch.nn.functional.normalize(torch.cross(fwd, up, dim=-1), dim=-1)
    down = torch.cross(fwd, right, dim=-1)
    c2w = torch.zeros(*pos.shape[:-1], 4, 4, dtype=pos.dtype)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = right, down, fwd, pos
    c2w[..., 3, 3] = 1
    return rigid_inverse(c2w)


def random_cameras(n: int, views: int, gen: torch.Generator) -> torch.Tensor:
    az = torch.rand(n, views, generator=gen) * 2 * math.pi
    el = math.radians(20) + torch.rand(n, views, generator=gen) * math.radians(40)
    r = 4.0 + torch.rand(n, views, generator=gen)
    pos = torch.stack([r * el.cos() * az.cos(), r * el.cos() * az.sin(), r * el.sin()], -1)
    target = (torch.rand(n, views, 3, generator=gen) - 0.5) * 0.3 + torch.tensor([0.0, 0.0, 0.4])
    return look_at_extrinsics(pos, target)


def pixel_grid(size: int) -> torch.Tensor:
    """[size*size, 2] (row, col) pixel centres, row-major."""
    r, c = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([r, c], -1).reshape(-1, 2).float() + 0.5


def camera_rays(E: torch.Tensor, size: int):
    """World-space ray origins [..., 3] and unit directions [..., P, 3] of every pixel."""
    c2w = rigid_inverse(E)
    pix = pixel_grid(size)
    f = focal(size)
    d_cam = torch.stack([(pix[:, 1] - size / 2) / f, (pix[:, 0] - size / 2) / f, torch.ones(len(pix))], -1)
    d = torch.nn.functional.normalize(d_cam @ c2w[..., :3, :3].transpose(-1, -2), dim=-1)
    return c2w[..., :3, 3], d


def random_objects(n: int, gen: torch.Generator, max_objects: int = 4):
    """centre [n,K,3], size [n,K,3] (sphere radius in x / box half-extents), kind [n,K] (0 sphere, 1 box),
    colour [n,K,3], alive [n,K]."""
    K = max_objects
    xy = (torch.rand(n, K, 2, generator=gen) * 2 - 1) * 1.0
    size = 0.25 + torch.rand(n, K, 3, generator=gen) * 0.3
    centre = torch.cat([xy, size[..., 2:]], -1)  # resting on the ground
    kind = (torch.rand(n, K, generator=gen) > 0.5).long()
    size = torch.where(kind[..., None] == 0, size[..., 2:].expand(-1, -1, 3), size)
    colour = 0.15 + 0.85 * torch.rand(n, K, 3, generator=gen)
    alive = torch.ones(n, K, dtype=torch.bool)
    alive[:, 3] = torch.rand(n, generator=gen) > 0.5
    return centre, size, kind, colour, alive


def _hit_sphere(o, d, c, rad):
    oc = o - c
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - rad * rad)
    t = -b - torch.sqrt(disc.clamp_min(0))
    n = torch.nn.functional.normalize(o + t[..., None] * d - c, dim=-1)
    return torch.where((disc > 0) & (t > 1e-4), t, torch.full_like(t, math.inf)), n


def _hit_box(o, d, c, half):
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0, t1 = (c - half - o) * inv, (c + half - o) * inv
    tmin, tmax = torch.minimum(t0, t1), torch.maximum(t0, t1)
    tn, axis = tmin.max(-1)
    tf = tmax.min(-1).values
    n = -torch.sign(d) * torch.nn.functional.one_hot(axis, 3).to(d.dtype)
    return torch.where((tn < tf) & (tn > 1e-4), tn, torch.full_like(tn, math.inf)), n


def render(E: torch.Tensor, objects, size: int = 32, checker: float = 0.0) -> torch.Tensor:
    """Images [n, V, 3, size, size] of the scenes `objects` from cameras E [n, V, 4, 4]."""
    centre, extent, kind, colour, alive = objects
    o, d = camera_rays(E, size)  # [n,V,3], [n,V,P,3]
    o = o[:, :, None, None, :]
    dd = d[:, :, :, None, :]
    c = centre[:, None, None]
    ts, ns = _hit_sphere(o, dd, c, extent[:, None, None, ..., 0])
    tb, nb = _hit_box(o, dd, c, extent[:, None, None])
    is_box = (kind == 1)[:, None, None]
    t = torch.where(is_box, tb, ts)
    t = torch.where(alive[:, None, None], t, torch.full_like(t, math.inf))
    normal = torch.where(is_box[..., None], nb, ns)
    t_obj, idx = t.min(-1)  # [n,V,P]
    n_obj = torch.gather(normal, 3, idx[..., None, None].expand(*idx.shape, 1, 3)).squeeze(3)
    col_obj = torch.gather(colour[:, None, None].expand(*idx.shape, -1, 3), 3,
                           idx[..., None, None].expand(*idx.shape, 1, 3)).squeeze(3)
    t_gnd = torch.where(d[..., 2] < -1e-6, -o[:, :, :, 0, 2] / d[..., 2].clamp(max=-1e-6),
                        torch.full_like(d[..., 2], math.inf))
    light = torch.nn.functional.normalize(torch.tensor(_LIGHT), dim=0)
    shade_obj = 0.3 + 0.7 * (n_obj * light).sum(-1).clamp_min(0)
    hit_g = o[:, :, :, 0] + t_gnd[..., None] * d
    square = ((hit_g[..., 0].floor() + hit_g[..., 1].floor()) % 2)[..., None]
    col_gnd = 0.5 + checker * (square - 0.5)
    img = torch.where((t_obj < t_gnd)[..., None], col_obj * shade_obj[..., None],
                      torch.where(torch.isfinite(t_gnd)[..., None], col_gnd.expand(*t_gnd.shape, 3),
                                  torch.tensor(_BG).expand(*t_gnd.shape, 3)))
    n, V = E.shape[:2]
    return img.clamp(0, 1).reshape(n, V, size, size, 3).permute(0, 1, 4, 2, 3).contiguous()


def make_dataset(n: int, seed: int, input_views: int = 2, target_views: int = 1, size: int = 32,
                 chunk: int = 256, checker: float = 0.0) -> dict:
    """images [n, Vi+Vt, 3, size, size], extrinsics [n, Vi+Vt, 4, 4] canonicalised to input view 0."""
    gen = torch.Generator().manual_seed(seed)
    imgs, Es = [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        E = random_cameras(m, input_views + target_views, gen)
        imgs.append(render(E, random_objects(m, gen), size, checker))
        Es.append(canonicalize(E, E[:, 0]))
    return {"images": torch.cat(imgs), "extrinsics": torch.cat(Es), "input_views": input_views, "size": size}
