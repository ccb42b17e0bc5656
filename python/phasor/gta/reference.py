"""Plain-PyTorch references of GTA attention (test oracles and benchmark baselines).

Argument convention shared with the fused op (``phasor.gta.ops.gta_attention``):
  q [B,H,Nq,d], k and v [B,H,Nk,d]; dims = (d_triv, d_se3, d_so3, d_so2), channel order
  [triv | se3 | so3 | so2] inside each head; tokens view-major with Nq/Vq (Nk/Vk) tokens per view.
  q_se3 [B,Vq,4,4] = P (query views; Q gets P^T, the output gets P);
  k_se3 [B,Vk,4,4] = P^-1 (key views; K and V get P^-1); q_so3 = D [B,Vq,8,8], k_so3 = D^-1 [B,Vk,8,8];
  q_pos [B,Nq,2], k_pos [B,Nk,2] coordinates and freqs [F] (d_so2 = 4F): P's SO(2) part is
  R(-phi) per pair, phi_{2f+a} = pos[a] * freqs[f].
  key_mask [B,Nk] bool (True = attend) or None; a query with no key left gets output 0, lse -inf.
Returns (out [B,H,Nq,d], lse [B,H,Nq]) with lse the log-sum-exp of the scaled logits.
"""
from __future__ import annotations

import torch

from .reps import rot2, so2_angles

__all__ = ["transform", "gta_attention_ref", "gta_attention_pairwise", "dense_reps"]


def _split(x, dims):
    return torch.split(x, list(dims), dim=-1)


def _per_view(x, mats, blk):
    """y = M_view x per `blk`-channel chunk; x [B,H,N,c], mats [B,V,blk,blk] (view-major tokens)."""
    B, H, N, c = x.shape
    V = mats.shape[1]
    xs = x.reshape(B, H, V, N // V, c // blk, blk)
    return torch.einsum("bvij,bhvtcj->bhvtci", mats.to(x.dtype), xs).reshape(B, H, N, c)


def transform(x, dims, se3, so3, pos, freqs, transpose: bool, sign: float):
    """Apply the per-token blocks: se3/so3 matrices (transposed on request) and SO(2) R(sign*phi)."""
    triv, xs, xo, x2 = _split(x, dims)
    outs = [triv]
    tr = (lambda m: m.transpose(-1, -2)) if transpose else (lambda m: m)
    outs.append(_per_view(xs, tr(se3), 4) if dims[1] else xs)
    outs.append(_per_view(xo, tr(so3), 8) if dims[2] else xo)
    if dims[3]:
        R = rot2(sign * so2_angles(pos, freqs)).to(x.dtype)  # [B,N,2F,2,2]
        B, H, N, c = x2.shape
        y = torch.einsum("bnpij,bhnpj->bhnpi", R, x2.reshape(B, H, N, c // 2, 2))
        outs.append(y.reshape(B, H, N, c))
    else:
        outs.append(x2)
    return torch.cat(outs, -1)


def _softmax_attend(qt, kt, vt, key_mask, scale):
    s = (qt @ kt.transpose(-1, -2)) * scale
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.unsqueeze(-1).clamp_min(torch.finfo(s.dtype).min))
    p = torch.where(torch.isfinite(lse).unsqueeze(-1), p, torch.zeros_like(p))
    return p @ vt, lse


def gta_attention_ref(q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims, key_mask=None,
                      scale=None, v_transform=True):
    """Efficient form O = P * Attn(P^T Q, P^-1 K, P^-1 V), the official ``multihead_geometric_transform_attention``
    (einsum transforms, materialised softmax)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qt = transform(q, dims, q_se3, q_so3, q_pos, freqs, transpose=True, sign=1.0)
    kt = transform(k, dims, k_se3, k_so3, k_pos, freqs, transpose=False, sign=1.0)
    vt = transform(v, dims, k_se3, k_so3, k_pos, freqs, transpose=False, sign=1.0) if v_transform else v
    o, lse = _softmax_attend(qt, kt, vt, key_mask, scale)
    if v_transform:
        o = transform(o, dims, q_se3, q_so3, q_pos, freqs, transpose=False, sign=-1.0)
    return o, lse


def dense_reps(dims, se3, so3, pos, freqs, N, sign):
    """Per-token dense d x d block-diagonal matrices [B,N,d,d] (SO(2) part R(sign*phi))."""
    B, V = se3.shape[:2]
    d = sum(dims)
    out = se3.new_zeros(B, N, d, d)
    view = torch.arange(N, device=se3.device) // (N // V)
    o = dims[0]
    out[:, :, :o, :o] = torch.eye(o, dtype=se3.dtype, device=se3.device)
    for blk, mats, width in ((4, se3, dims[1]), (8, so3, dims[2])):
        for c in range(width // blk):
            out[:, :, o + c * blk:o + (c + 1) * blk, o + c * blk:o + (c + 1) * blk] = mats[:, view]
        o += width
    if dims[3]:
        R = rot2(sign * so2_angles(pos, freqs)).to(se3.dtype)
        for p in range(dims[3] // 2):
            out[:, :, o + 2 * p:o + 2 * p + 2, o + 2 * p:o + 2 * p + 2] = R[:, :, p]
    return out


def gta_attention_pairwise(q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims, key_mask=None,
                           scale=None, v_transform=True):
    """The paper's Eq. 5 with rho(g_i g_j^-1) = P_i P_j^-1 materialised per pair (O(N^2 d^2); small sizes).

    P_i = blockdiag(I, q_se3, q_so3, R(-phi_i)); P_j^-1 = blockdiag(I, k_se3, k_so3, R(phi_j))."""
    Nq, Nk = q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    Pq = dense_reps(dims, q_se3, q_so3, q_pos, freqs, Nq, -1.0).to(q.dtype)
    Pk_inv = dense_reps(dims, k_se3, k_so3, k_pos, freqs, Nk, 1.0).to(q.dtype)
    rel = Pq[:, :, None] @ Pk_inv[:, None, :]  # [B,Nq,Nk,d,d] = rho(g_i g_j^-1)
    s = torch.einsum("bhic,bijce,bhje->bhij", q, rel, k) * scale
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.unsqueeze(-1).clamp_min(torch.finfo(s.dtype).min))
    p = torch.where(torch.isfinite(lse).unsqueeze(-1), p, torch.zeros_like(p))
    if v_transform:
        o = torch.einsum("bhij,bijce,bhje->bhic", p, rel, v)
    else:
        o = p @ v
    return o, lse
