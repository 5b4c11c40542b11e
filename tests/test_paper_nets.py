"""Deep3D regressor, ArcFace iresnet50 and the TorchScript VGG16: official layouts, loaders,
forward and backward on weights the tests make."""

from __future__ import annotations

import math

import pytest
import torch

from ffhquv.checkpoints import CheckpointError, find
from services.fitter.paper import arcface as af
from services.fitter.paper import deep3d as d3
from services.fitter.paper import vgg as vg
from services.fitter.paper.resnet import resnet50

torch.set_num_threads(min(2, torch.get_num_threads()))
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


def _randomise_bn(net: torch.nn.Module) -> None:
    """Non-trivial running statistics, as a trained checkpoint has, and convolutions scaled
    so that activations stay finite through 50 layers of random weights."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0, 0.5 / math.sqrt(fan_in), generator=g)
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)


def _save(root, rel, obj):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, p)
    return p


# ----------------------------------------------------------------------------- Deep3D

def test_deep3d_layout_load_forward_backward(tmp_path):
    net = d3.ReconNet()
    _randomise_bn(net)
    sd = net.state_dict()
    assert sum(p.numel() for p in net.backbone.parameters()) == 23_508_032  # ResNet-50 trunk
    assert sum(p.numel() for p in net.parameters()) == 25_657_433
    tv = {f"backbone.{k}" for k in resnet50().state_dict()}
    assert {k for k in sd if k.startswith("backbone.")} == tv
    expected = {"backbone.conv1.weight": (64, 3, 7, 7),
                "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
                "backbone.layer4.2.bn3.running_var": (2048,),
                "final_layers.0.weight": (532, 2048, 1, 1),
                "final_layers.1.0.weight": (45, 2048, 1, 1), "final_layers.1.0.bias": (45,),
                "final_layers.2.weight": (439, 2048, 1, 1),
                "final_layers.3.bias": (3,), "final_layers.4.bias": (27,),
                "final_layers.5.bias": (2,), "final_layers.6.weight": (1, 2048, 1, 1)}
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith("backbone.fc") for k in sd)

    root = tmp_path / "checkpoints"
    _save(root, "deep3d_model/epoch_latest.pth", {"net_recon": sd, "epoch": 20})
    model = d3.load_deep3d(find("deep3d", root), "cpu")
    for k, v in sd.items():
        assert torch.equal(model.net.state_dict()[k], v), k

    with torch.no_grad():
        ref = net.eval()(torch.full((1, 3, 128, 128), 0.5))  # 224 in use; smaller: CPU time
        out = model(torch.full((1, 3, 128, 128), 0.5))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "id": (1, 532), "exp": (1, 45), "tex": (1, 439), "angle": (1, 3), "gamma": (1, 27),
        "trans": (1, 3), "coeffs": (1, 1049)}
    torch.testing.assert_close(out["coeffs"], ref)
    assert (out["exp"] >= 0).all()  # the FFHQ-UV expression head ends in a ReLU
    torch.testing.assert_close(out["trans"], ref[:, -3:])
    torch.testing.assert_close(out["gamma"], ref[:, 1019:1046])

    x = torch.rand(1, 3, 96, 96, requires_grad=True)  # smaller input: CPU time
    model(x)["id"].square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_deep3d_bad_state_dicts(tmp_path):
    sd = d3.ReconNet().state_dict()
    missing = {k: v for k, v in sd.items() if k != "final_layers.1.0.weight"}
    missing["final_layers.1.weight"] = sd["final_layers.1.0.weight"]  # upstream Deep3D name
    p = _save(tmp_path, "epoch_latest.pth", {"net_recon": missing})
    with pytest.raises(CheckpointError, match=r"missing keys: final_layers.1.0.weight.*"
                                              r"unexpected keys: final_layers.1.weight"):
        d3.load_deep3d(p)
    p = _save(tmp_path, "other.pth", {"model": sd})
    with pytest.raises(CheckpointError, match="no 'net_recon' entry"):
        d3.load_deep3d(p)


# ----------------------------------------------------------------------------- ArcFace

def test_arcface_layout_load_forward_backward(tmp_path):
    net = af.iresnet50()
    _randomise_bn(net)
    sd = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 43_590_848
    expected = {"conv1.weight": (64, 3, 3, 3), "bn1.running_mean": (64,), "prelu.weight": (64,),
                "layer1.0.bn1.weight": (64,), "layer1.0.conv1.weight": (64, 64, 3, 3),
                "layer1.0.prelu.weight": (64,), "layer1.0.bn3.bias": (64,),
                "layer1.0.downsample.0.weight": (64, 64, 1, 1),
                "layer2.0.downsample.1.running_var": (128,),
                "layer3.13.conv2.weight": (256, 256, 3, 3),
                "layer4.2.bn3.weight": (512,), "bn2.weight": (512,),
                "fc.weight": (512, 25088), "fc.bias": (512,), "features.weight": (512,),
                "features.running_var": (512,)}
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "layer3.14.conv1.weight" not in sd and "layer4.3.conv1.weight" not in sd

    root = tmp_path / "checkpoints"
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    _save(root, "arcface_model/ms1mv3_arcface_r50_fp16_backbone.pth", half)
    model = af.load_arcface(find("arcface", root), "cpu")
    assert model.net.fc.weight.dtype == torch.float32

    g = torch.Generator().manual_seed(3)
    img = torch.rand(1, 3, 224, 224, generator=g)
    lm5 = torch.tensor([[[85.0, 100.0], [140.0, 98.0], [112.0, 130.0], [90.0, 160.0],
                         [137.0, 158.0]]])
    face = af.align_112(img, lm5)
    assert face.shape == (1, 3, 112, 112)
    with torch.no_grad():
        emb = model(img, lm5)
    assert emb.shape == (1, 512)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(1))
    assert float(af.identity_loss(emb, emb)) == pytest.approx(0.0, abs=1e-6)

    render = img.clone().requires_grad_(True)
    loss = af.identity_loss(model(render.flip(-1), lm5), emb)
    assert 0 < loss.item() <= 2
    loss.backward()
    assert render.grad is not None and render.grad.abs().sum() > 0

    bad = {k: v for k, v in sd.items() if k != "features.running_mean"}
    p = _save(tmp_path, "bad.pth", bad)
    with pytest.raises(CheckpointError, match="bad.pth: .*missing keys: features.running_mean"):
        af.load_arcface(p)


def test_align_112_maps_the_landmarks_onto_the_template():
    """Paint a dot at each of five landmarks of a rotated, scaled, shifted template; after the
    warp the dots sit on the ArcFace template points."""
    ang, s, t = math.radians(20), 1.7, torch.tensor([60.0, 40.0])
    rot = torch.tensor([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    lm5 = (af.ARCFACE_TEMPLATE @ rot.T) * s + t
    img = torch.zeros(1, 1, 256, 256)
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    for i, (x, y) in enumerate(lm5):
        img[0, 0] += (i + 1) * torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0 ** 2))
    m = af.similarity_transform(lm5[None], af.ARCFACE_TEMPLATE[None])[0]
    torch.testing.assert_close(m[:, :2], rot.T / s, atol=1e-4, rtol=1e-4)
    out = af.warp_affine(img, m[None], (112, 112))[0, 0]
    yy, xx = torch.meshgrid(torch.arange(112.0), torch.arange(112.0), indexing="ij")
    for i, (tx, ty) in enumerate(af.ARCFACE_TEMPLATE):
        near = ((xx - tx) ** 2 + (yy - ty) ** 2) < 5 ** 2
        wgt = out * near
        cx, cy = float((wgt * xx).sum() / wgt.sum()), float((wgt * yy).sum() / wgt.sum())
        assert abs(cx - tx) < 0.3 and abs(cy - ty) < 0.3, (i, cx, cy)
        assert float(out[int(round(float(ty))), int(round(float(tx)))]) > 0.5 * (i + 1)
    lm68 = torch.zeros(1, 68, 2)
    lm68[0, 36], lm68[0, 39], lm68[0, 30] = torch.tensor([0., 0]), torch.tensor([2., 0]), 5
    assert af.lm68_to_lm5(lm68)[0, 0].tolist() == [1.0, 0.0]


# ----------------------------------------------------------------------------- VGG16

def test_vgg16_torchscript_load_and_loss(tmp_path):
    full = vg.LpipsVGG16()
    convs = sum(p.numel() for s in full.stages for p in s.convs.parameters())
    assert convs == 14_714_688  # torchvision vgg16().features

    small = torch.jit.script(vg.LpipsVGG16(width=8).eval())
    root = tmp_path / "checkpoints"
    p = root / "vgg_model" / "vgg16.pt"
    p.parent.mkdir(parents=True)
    torch.jit.save(small, str(p))
    vgg = vg.load_vgg16(find("vgg", root), "cpu")

    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 224, 224, generator=g)
    b = (a + 0.1 * torch.randn(2, 3, 224, 224, generator=g)).clamp(0, 1)
    fa = vgg.features(a)
    # LPIPS features of relu1_2..relu5_3 for a 224 input at width 1/8
    assert fa.shape == (2, (8 * 224 ** 2 + 16 * 112 ** 2 + 32 * 56 ** 2 + 64 * 28 ** 2
                            + 64 * 14 ** 2))
    assert float(vgg.loss(a, a)) == 0.0
    ra = a.clone().requires_grad_(True)
    loss = vgg.loss(ra, b)
    assert loss.item() > 0
    loss.backward()
    assert ra.grad is not None and ra.grad.abs().sum() > 0
    # Larger images are area-resized to 256 first (FFHQ-UV's vgg_loss).
    big = torch.rand(1, 3, 512, 512, generator=g)
    torch.testing.assert_close(
        vgg.features(big),
        small(torch.nn.functional.interpolate(big, size=(256, 256), mode="area") * 255,
              resize_images=False, return_lpips=True))

    not_script = tmp_path / "sd.pt"
    torch.save(vg.LpipsVGG16(width=8).state_dict(), not_script)
    with pytest.raises(CheckpointError, match="sd.pt: not a TorchScript module"):
        vg.load_vgg16(not_script)

    class Wrong(torch.nn.Module):
        def forward(self, img: torch.Tensor) -> torch.Tensor:
            return img

    wrong = tmp_path / "wrong.pt"
    torch.jit.save(torch.jit.script(Wrong()), str(wrong))
    with pytest.raises(CheckpointError, match="does not accept"):
        vg.load_vgg16(wrong)


# ----------------------------------------------------------------------------- all together

def test_load_paper_networks_serves_what_is_there(tmp_path, caplog, monkeypatch):
    from ffhquv import checkpoints as ck
    from services.fitter.paper import load_paper_networks
    from services.fitter.paper.stylegan2 import Generator, GeneratorConfig

    monkeypatch.setattr(ck, "_logged", set())
    root = tmp_path / "checkpoints"
    cfg = GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, channel_base=256,
                          channel_max=32)
    _save(root, "texgan_model/texgan_ffhq_uv.pth", Generator(cfg).state_dict())
    (root / "vgg_model").mkdir(parents=True)
    torch.jit.save(torch.jit.script(vg.LpipsVGG16(width=16).eval()),
                   str(root / "vgg_model" / "vgg16.pt"))
    (root / "deep3d_model").mkdir()
    (root / "deep3d_model" / "epoch_latest.pth").write_bytes(b"truncated")
    caplog.set_level("WARNING", logger="ffhquv.checkpoints")

    nets = load_paper_networks(root, "cpu", w_stats_samples=200)
    assert nets.paper_texture and nets.texgan.synthesis(nets.texgan.w_avg).shape == (1, 3, 16, 16)
    assert nets.vgg is not None
    assert nets.deep3d is None and nets.arcface is None
    msgs = " | ".join(r.getMessage() for r in caplog.records)
    assert "epoch_latest.pth: cannot be read" in msgs
    assert f"ms1mv3_arcface_r50_fp16_backbone.pth not found at {root}" in msgs
