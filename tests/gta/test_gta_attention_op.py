"""Fused GTA attention op vs the pairwise Eq. 5 and the efficient reference; gradients, invariances,
opcheck, compile, bad inputs."""
import pytest
import torch

from gta_cases import geometry, make_inputs, random_extrinsics
from helpers import (assert_bad_input, check_gradcheck, cpu_isa, check_opcheck, compare_with_reference, device_params,
                     noncontiguous)  # noqa: F401 (cpu_isa is a fixture)
from phasor.gta import ops, reference, reps

SHAPES = [  # B, H, Nq, Nk, dims, Vq, Vk
    (2, 2, 6, 8, (4, 8, 8, 12), 2, 2),
    (1, 1, 1, 1, (0, 4, 0, 4), 1, 1),
    (2, 3, 5, 150, (0, 16, 0, 16), 1, 6),      # N != M, two key tiles (128 + a tail)
    (1, 2, 33, 9, (8, 0, 16, 8), 3, 3),        # query tile tail
    (2, 1, 4, 6, (32, 0, 0, 0), 2, 3),         # trivial only (plain attention)
]


def _op(vt, mask):
    return lambda *a: ops.gta_attention(*a[:10], a[10], mask, None, vt, return_lse=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("v_transform", [True, False])
def test_matches_pairwise_eq5_float64(cpu_isa, shape, v_transform):
    B, H, Nq, Nk, dims, Vq, Vk = shape
    args, dims, mask = make_inputs(B, H, Nq, Nk, dims, Vq, Vk, mask=Nk > 4)
    out, lse = ops.gta_attention(*args, dims, mask, None, v_transform, return_lse=True)
    o_ref, l_ref = reference.gta_attention_pairwise(*args, dims, mask, None, v_transform)
    torch.testing.assert_close(out, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, l_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d", [32, 64, 96, 128])
def test_matches_reference_head_dims(cpu_isa, dtype, d):
    dims = (0, d // 2, 8, d // 2 - 8)
    args, dims, mask = make_inputs(2, 2, 40, 140, dims, 4, 2, dtype=dtype, mask=True, seed=d)
    compare_with_reference(lambda *a: ops.gta_attention(*a, dims, mask)[None],
                           lambda *a: reference.gta_attention_ref(*a, dims, mask)[0][None], args,
                           frozen=(5, 6, 7, 8, 9))  # SO(3)/SO(2) geometry is constant (detached)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d", [64, 96])
def test_matches_reference_long_keys(cpu_isa, d, dtype):
    """512+ keys at head dim >= 64: the AVX-512 dispatch takes its 64-byte-vector build here (d = 96 also
    runs its 2-vector channel blocks); shorter or narrower calls take the 32-byte one."""
    dims = (0, d // 2, 8, d // 2 - 8)
    args, dims, mask = make_inputs(1, 2, 24, 520, dims, 2, 2, dtype=dtype, mask=True, seed=d)
    compare_with_reference(lambda *a: ops.gta_attention(*a, dims, mask)[None],
                           lambda *a: reference.gta_attention_ref(*a, dims, mask)[0][None], args,
                           frozen=(5, 6, 7, 8, 9))


def test_matches_reference_noncontiguous_and_scale(cpu_isa):
    args, dims, mask = make_inputs(2, 2, 10, 12, (4, 8, 8, 4), 2, 3, mask=True)
    nc = [noncontiguous(a) for a in args]
    out = ops.gta_attention(*nc, dims, mask, 0.3)
    torch.testing.assert_close(out, reference.gta_attention_ref(*args, dims, mask, 0.3)[0], rtol=1e-10, atol=1e-10)


def test_fully_masked_rows_give_zero_output_and_finite_grads():
    args, dims, _ = make_inputs(2, 2, 4, 6, (0, 8, 0, 8), 2, 2)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1] = False  # batch 1 sees no key
    leaves = [a.clone().requires_grad_() for a in args[:5]]
    out, lse = ops.gta_attention(*leaves, *args[5:], dims, mask, return_lse=True)
    assert (out[1] == 0).all() and torch.isneginf(lse[1]).all()
    grads = torch.autograd.grad(out.sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[1][1] == 0).all() and (grads[2][1] == 0).all()
    ref = reference.gta_attention_ref(*args, dims, mask)[0]
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("v_transform", [True, False])
def test_gradients_match_reference_including_se3_blocks(cpu_isa, v_transform):
    args, dims, mask = make_inputs(2, 2, 9, 140, (4, 8, 8, 12), 3, 2, mask=True)
    compare_with_reference(lambda *a: ops.gta_attention(*a, dims, mask, None, v_transform)[None],
                           lambda *a: reference.gta_attention_ref(*a, dims, mask, None, v_transform)[0][None],
                           args, frozen=(5, 6, 7, 8, 9))


def test_gradients_with_a_singular_query_block(cpu_isa):
    """o~ is recovered as P^-1 O when every query block is invertible; one singular P takes the other
    path (o~ recomputed as P V~), which must give the same gradients."""
    args, dims, mask = make_inputs(2, 2, 9, 40, (4, 8, 8, 12), 3, 2, mask=True)
    args[3][1, 2, 3] = 0  # batch 1, view 2: last row of P zero
    compare_with_reference(lambda *a: ops.gta_attention(*a, dims, mask)[None],
                           lambda *a: reference.gta_attention_ref(*a, dims, mask)[0][None],
                           args, frozen=(5, 6, 7, 8, 9))


def _from_poses(dims, mask, v_transform, Eq, Ek, geo_rest):
    """op as a function of (q, k, v, trans_coeff): the SE(3) blocks built from the poses."""
    def f(q, k, v, s):
        q_se3, _ = reps.se3_blocks(Eq, s)
        _, k_se3 = reps.se3_blocks(Ek, s)
        return ops.gta_attention(q, k, v, q_se3, k_se3, *geo_rest, dims, mask, None, v_transform)
    return f


@pytest.mark.parametrize("v_transform", [True, False])
def test_gradcheck_float64_including_trans_coeff(v_transform):
    args, dims, mask = make_inputs(1, 2, 4, 6, (4, 8, 8, 4), 2, 3, mask=True)
    gen = torch.Generator().manual_seed(5)
    Eq, Ek = random_extrinsics(1, 2, gen=gen), random_extrinsics(1, 3, gen=gen)
    f = _from_poses(dims, mask, v_transform, Eq, Ek, args[5:])
    check_gradcheck(f, [*args[:3], torch.tensor(0.8, dtype=torch.float64)])


def test_trans_coeff_gradient_matches_reference():
    args, dims, mask = make_inputs(2, 2, 6, 8, (0, 16, 0, 8), 2, 2)
    gen = torch.Generator().manual_seed(6)
    Eq, Ek = random_extrinsics(2, 2, gen=gen), random_extrinsics(2, 2, gen=gen)
    grads = []
    for attn in (ops.gta_attention, lambda *a: reference.gta_attention_ref(*a)[0]):
        s = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        q_se3, _ = reps.se3_blocks(Eq, s)
        _, k_se3 = reps.se3_blocks(Ek, s)
        out = attn(*args[:3], q_se3, k_se3, *args[5:], dims, mask)
        grads.append(torch.autograd.grad((out * torch.cos(out)).sum(), s)[0])
    assert grads[1].abs() > 1e-3
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("s", [0.01, 1.0, 10.0])
def test_invariant_under_common_rigid_transform(s):
    """E_v -> E_v g^-1 for every camera (query and key views) leaves the output unchanged."""
    gen = torch.Generator().manual_seed(7)
    dims = (4, 8, 8, 12)
    B, H, N, V = 2, 2, 8, 2
    d = sum(dims)
    q, k, v = (torch.randn(B, H, N, d, dtype=torch.float64, generator=gen) for _ in range(3))
    E = random_extrinsics(B, V, gen=gen)
    g = random_extrinsics(B, 1, gen=gen)
    st = torch.tensor(s, dtype=torch.float64)
    outs = []
    for Ev in (E, E @ reps.rigid_inverse(g)):
        geo = geometry(Ev, Ev, N, N, dims, st, torch.Generator().manual_seed(8))
        outs.append(ops.gta_attention(q, k, v, *geo, dims))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-9, atol=1e-9)


def test_invariant_under_common_2d_shift():
    args, dims, _ = make_inputs(2, 2, 6, 8, (0, 0, 0, 16), 1, 1)
    out = ops.gta_attention(*args, dims)
    shift = torch.tensor([0.37, -1.3], dtype=torch.float64)
    shifted = args[:7] + [args[7] + shift, args[8] + shift, args[9]]
    torch.testing.assert_close(ops.gta_attention(*shifted, dims), out, rtol=1e-10, atol=1e-10)


def test_rope_limit_matches_complex_rotary_plus_sdpa():
    """v_transform=False with only SO(2) channels is 2-D RoPE (interleaved pairs) followed by attention."""
    args, dims, _ = make_inputs(2, 2, 6, 8, (0, 0, 0, 16), 1, 1)
    q, k, v, *_, q_pos, k_pos, freqs = args

    def rope(x, pos):
        phi = reps.so2_angles(pos, freqs)[:, None]
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
        return torch.view_as_real(xc * torch.polar(torch.ones_like(phi), phi)).flatten(-2)
    want = torch.nn.functional.scaled_dot_product_attention(rope(q, q_pos), rope(k, k_pos), v)
    torch.testing.assert_close(ops.gta_attention(*args, dims, v_transform=False), want, rtol=1e-10, atol=1e-10)


def test_opcheck():
    args, dims, mask = make_inputs(1, 2, 4, 6, (4, 8, 8, 4), 2, 3, mask=True)
    check_opcheck(torch.ops.phasor.gta_attention_fwd, [*args, dims, mask, 0.2, True], frozen=(5, 6, 7, 8, 9))
    check_opcheck(torch.ops.phasor.gta_attention_fwd, [*args, dims, None, 0.2, False], frozen=(5, 6, 7, 8, 9))


def test_bad_inputs():
    args, dims, mask = make_inputs(1, 2, 4, 6, (4, 8, 8, 4), 2, 3)
    q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs = args
    f = ops.gta_attention
    assert_bad_input(f, *args, (4, 8, 8, 8), names="dims")                      # does not add up to d
    assert_bad_input(f, *args, (6, 6, 8, 4), names="dims")                      # se3 not a multiple of 4
    assert_bad_input(f, q, k, v, q_se3[..., :3], *args[4:], dims, names="q_se3")  # wrong pose shape
    assert_bad_input(f, q, k, v, q_se3, k_se3[:, :2], *args[5:], dims, names=("k_se3", "k_so3"))  # views differ
    assert_bad_input(f, q, k, v, q_se3, k_se3[:, :1].expand(1, 4, 4, 4), q_so3, k_so3[:, :1].expand(1, 4, 8, 8),
                     *args[7:], dims, names="Nk")  # 6 key tokens do not split into 4 views
    assert_bad_input(f, q, k, v, q_se3[:, :1].expand(1, 3, 4, 4), k_se3, q_so3[:, :1].expand(1, 3, 8, 8), *args[6:], dims,
                     names="Nq")                                                  # 4 tokens do not split into 3 views
    assert_bad_input(f, q, k[..., :-1], v, *args[3:], dims, names="k")
    assert_bad_input(f, *args, dims, torch.ones(1, 6), names="key_mask")
    assert_bad_input(f, q.float(), k.float(), v.float(), *args[3:], dims, names="q_se3")
    assert_bad_input(f, q.int(), k.int(), v.int(), *[a.float() for a in args[3:]], dims, names="q")
    assert_bad_input(f, *args[:9], torch.cat([freqs, freqs]), dims, names="freqs")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_device_matches_reference(device, dtype):
    pdt = torch.float32
    args, dims, mask = make_inputs(2, 3, 100, 130, (0, 32, 0, 32), 4, 2, dtype=torch.float64, mask=True)
    args = [a.to(device, dtype if i < 3 else pdt) for i, a in enumerate(args)]
    mask = mask.to(device)
    compare_with_reference(lambda *a: ops.gta_attention(*a, dims, mask)[None],
                           lambda *a: reference.gta_attention_ref(*a, dims, mask)[0][None], args, dtype=dtype,
                           frozen=(5, 6, 7, 8, 9))


def test_results_do_not_depend_on_thread_count():
    args, dims, mask = make_inputs(2, 3, 70, 150, (0, 16, 8, 8), 2, 3, dtype=torch.float32, mask=True)
    leaves = [a.clone().requires_grad_() for a in args[:5]]
    before = torch.get_num_threads()
    results = []
    try:
        # B * H = 6: 1 and 2 threads take the one-pass backward, 8 threads the two-pass one
        for n in (1, 2, 8):
            torch.set_num_threads(n)
            out = ops.gta_attention(*leaves, *args[5:], dims, mask)
            results.append((out, *torch.autograd.grad(out.square().sum(), leaves)))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)



_SCRATCH_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from gta_cases import make_inputs
from phasor.gta import ops
args, dims, mask = make_inputs(2, 3, 40, 72, (0, 16, 8, 8), 2, 3, dtype=torch.float32, mask=True)
for _ in range(2):  # the second call runs on the first one's scratch block when caching is on
    leaves = [a.clone().requires_grad_() for a in args[:5]]
    out = ops.gta_attention(*leaves, *args[5:], dims, mask)
    res = [out, *torch.autograd.grad(out.square().sum(), leaves)]
torch.save(res, {path!r})
"""


@pytest.mark.parametrize("scratch_mb", ["0", "64"])
def test_scratch_cache_setting_does_not_change_results(tmp_path, scratch_mb):
    """PHASOR_CPU_SCRATCH_MB=0 gives every call fresh scratch, 64 reuses the thread's block: both must
    give the bits of this process's run."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    path = tmp_path / "res.pt"
    script = _SCRATCH_SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
    subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PHASOR_CPU_SCRATCH_MB=scratch_mb), check=True)
    got = torch.load(path)
    args, dims, mask = make_inputs(2, 3, 40, 72, (0, 16, 8, 8), 2, 3, dtype=torch.float32, mask=True)
    leaves = [a.clone().requires_grad_() for a in args[:5]]
    out = ops.gta_attention(*leaves, *args[5:], dims, mask)
    for a, b in zip(got, [out, *torch.autograd.grad(out.square().sum(), leaves)]):
        assert torch.equal(a, b)
