"""GTA modules, the NVS model, the ray-cast data and the repro job (small sizes)."""
import json

import pytest
import torch

from gta_cases import random_extrinsics
from helpers import check_compile
from phasor.gta import data, model, reps
from phasor.gta.nn import GTAttention, GTABlock, Geometry


def _geo(B, V, N, gen):
    E = data.random_cameras(B, V, gen)
    return Geometry(reps.canonicalize(E, E[:, 0]), torch.rand(B, N, 2, generator=gen))


@pytest.mark.parametrize("dims,vt", [((0, 16, 8, 8), True), ((0, 16, 0, 16), False), ((32, 0, 0, 0), True)])
def test_layer_fused_equals_eager_reference(dims, vt):
    gen = torch.Generator().manual_seed(0)
    x, z = torch.randn(2, 12, 64, generator=gen), torch.randn(2, 9, 48, generator=gen)
    gq, gk = _geo(2, 3, 12, gen), _geo(2, 3, 9, gen)
    layer = GTAttention(64, 2, dims, vt, kv_dim=48)
    eager = GTAttention(64, 2, dims, vt, kv_dim=48, fused=False)
    eager.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x, gq, z, gk), eager(x, gq, z, gk), rtol=1e-5, atol=1e-5)
    if dims[1]:  # trans_coeff receives the same gradient through the fused backward
        g1 = torch.autograd.grad(layer(x, gq, z, gk).square().sum(), layer.trans_coeff)[0]
        g2 = torch.autograd.grad(eager(x, gq, z, gk).square().sum(), eager.trans_coeff)[0]
        assert g1.abs() > 0
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_self_attention_layer_invariant_to_world_frame():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 8, 32, generator=gen)
    E, T = random_extrinsics(1, 2, gen=gen), random_extrinsics(1, 1, gen=gen)  # rigid to float64 precision
    pos = torch.rand(1, 8, 2, generator=gen, dtype=torch.float64)
    layer = GTAttention(32, 1, (0, 16, 8, 8)).double()
    torch.testing.assert_close(layer(x.double(), Geometry(E, pos)),
                               layer(x.double(), Geometry(E @ reps.rigid_inverse(T), pos)), rtol=1e-9, atol=1e-9)


class _BlockWrap(torch.nn.Module):
    def __init__(self, geo):
        super().__init__()
        self.geo = geo
        self.block = GTABlock(32, 2, (0, 8, 0, 8))

    def forward(self, x):
        return self.block(x, self.geo)


def test_block_compiles_fullgraph():
    gen = torch.Generator().manual_seed(2)
    check_compile(_BlockWrap(_geo(2, 2, 6, gen)), [torch.randn(2, 6, 32, generator=gen)])


def test_nvs_model_compiles_fullgraph():
    gen = torch.Generator().manual_seed(3)
    ds = data.make_dataset(2, seed=0, size=16)
    m = model.NVSModel("gta", dim=32, heads=2, head_dim=16, enc_layers=1, dec_layers=1, size=16)
    pix = torch.randint(0, 16, (2, 8, 2), generator=gen).float()

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, imgs):
            return self.m(imgs, ds["extrinsics"][:, :2], ds["extrinsics"][:, 2:], pix)
    check_compile(Wrap(), [ds["images"][:, :2]])


def test_data_conventions():
    ds = data.make_dataset(3, seed=1, size=16)
    assert ds["images"].shape == (3, 3, 3, 16, 16) and ds["images"].min() >= 0 and ds["images"].max() <= 1
    E = ds["extrinsics"]
    torch.testing.assert_close(E[:, 0], torch.eye(4).expand(3, 4, 4), atol=1e-5, rtol=0)  # canonical view
    R = E[..., :3, :3]
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5, rtol=0)
    # a camera looking at the origin sees it in front of it, near the image centre
    E0 = data.random_cameras(4, 1, torch.Generator().manual_seed(0))[:, 0]
    p = (E0 @ torch.tensor([0.0, 0, 0.4, 1]))[:, :3]
    assert (p[:, 2] > 3).all() and (p[:, :2].abs() / p[:, 2:] < 0.2).all()
    assert ds["images"].std() > 0.05  # not a blank render


def test_model_variants_share_shapes():
    ds = data.make_dataset(2, seed=2, size=16)
    pix = torch.zeros(2, 5, 2)
    for kind in model.KINDS:
        m = model.NVSModel(kind, dim=32, heads=2, head_dim=16, enc_layers=1, dec_layers=1, size=16)
        out = m(ds["images"][:, :2], ds["extrinsics"][:, :2], ds["extrinsics"][:, 2:], pix)
        assert out.shape == (2, 5, 3) and (out > 0).all() and (out < 1).all()
    with pytest.raises(ValueError, match="kind"):
        model.NVSModel("nope")


def test_repro_quick_runs_and_resumes(tmp_path):
    from phasor.gta import repro
    args = ["--quick", "--out-dir", str(tmp_path / "out"), "--ckpt-dir", str(tmp_path / "ckpt")]
    first = repro.main(args)
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["system"] == "gta" and set(m["metrics"]["summary"]["test_psnr"]) == {"gta", "rope", "ape"}
    assert (tmp_path / "out" / "gta.png").exists() and (tmp_path / "ckpt" / "gta.pt").exists()
    second = repro.main(args)  # finished runs are skipped, same results
    assert second["metrics"]["summary"]["test_psnr"] == first["metrics"]["summary"]["test_psnr"]


def test_floor_is_uniform_unless_a_chequer_is_asked_for():
    E = data.look_at_extrinsics(torch.tensor([[[0.0, -4.0, 4.0]]]), torch.tensor([[[0.0, 0.0, 0.0]]]))
    none = (torch.zeros(1, 1, 3), torch.full((1, 1, 3), 0.01), torch.zeros(1, 1, dtype=torch.long),
            torch.ones(1, 1, 3), torch.zeros(1, 1, dtype=torch.bool))  # no live object: floor and sky only
    plain, chequer = data.render(E, none, 16), data.render(E, none, 16, checker=0.2)
    floor = plain[0, 0, :, 8:]  # lower half: the camera looks down at the floor
    assert floor.unique().numel() == 1 and abs(floor[0, 0, 0].item() - 0.5) < 1e-6
    values = chequer[0, 0, 0, 8:].unique()
    torch.testing.assert_close(values, torch.tensor([0.4, 0.6]))


def test_mean_image_baseline_psnr():
    from phasor.gta import repro
    imgs = torch.zeros(4, 2, 3, 2, 2)
    imgs[:2, 1], imgs[2:, 1] = 0.25, 0.75  # target view: two constant images, mean 0.5 -> MSE 1/16
    ds = {"images": imgs, "input_views": 1}
    assert abs(repro.mean_image_psnr(ds, ds) - 10 * torch.log10(torch.tensor(16.0)).item()) < 1e-4
