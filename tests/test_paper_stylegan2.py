"""The texture GAN (StyleGAN2-ADA generator): key layout, ops, loader, W statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ffhquv.checkpoints import CheckpointError
from services.fitter.paper import stylegan2 as sg

torch.set_num_threads(min(2, torch.get_num_threads()))

SMALL = sg.GeneratorConfig(z_dim=64, w_dim=64, img_resolution=64, channel_base=1024,
                           channel_max=64)
CKPT = "texgan_model/texgan_ffhq_uv.pth"


@pytest.fixture(scope="module")
def small_state() -> dict:
    torch.manual_seed(0)
    G = sg.Generator(SMALL)
    with torch.no_grad():  # non-trivial values where the official init has zeros / ones
        for p in G.parameters():
            if p.ndim <= 1:
                p.add_(torch.randn_like(p) * 0.1)
    return G.state_dict()


def _write_checkpoint(root, obj):
    p = root / CKPT
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, p)
    return p


def test_full_size_generator_matches_the_official_layout():
    G = sg.Generator()  # FFHQ-UV's configuration, built but not run
    sd = G.state_dict()
    assert G.num_ws == 18
    assert sum(p.numel() for p in G.parameters()) == 30_370_060
    assert sum(p.numel() for p in G.mapping.parameters()) == 2_101_248
    expected = {
        "mapping.fc0.weight": (512, 512), "mapping.fc7.bias": (512,), "mapping.w_avg": (512,),
        "synthesis.b4.const": (512, 4, 4), "synthesis.b4.resample_filter": (4, 4),
        "synthesis.b4.conv1.weight": (512, 512, 3, 3),
        "synthesis.b4.conv1.affine.weight": (512, 512),
        "synthesis.b4.conv1.noise_const": (4, 4), "synthesis.b4.conv1.noise_strength": (),
        "synthesis.b4.torgb.weight": (3, 512, 1, 1),
        "synthesis.b64.conv0.weight": (512, 512, 3, 3),
        "synthesis.b128.conv0.weight": (256, 512, 3, 3),
        "synthesis.b1024.conv0.weight": (32, 64, 3, 3),
        "synthesis.b1024.conv0.affine.weight": (64, 512),
        "synthesis.b1024.conv1.noise_const": (1024, 1024),
        "synthesis.b1024.conv1.resample_filter": (4, 4),
        "synthesis.b1024.torgb.weight": (3, 32, 1, 1), "synthesis.b1024.torgb.bias": (3,),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "synthesis.b4.conv0.weight" not in sd and "mapping.embed.weight" not in sd
    assert len([k for k in sd if k.endswith("noise_const")]) == 17
    f = sd["synthesis.b8.resample_filter"]
    assert torch.allclose(f, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1]))
                          / 64)
    fp16 = [r for r in G.synthesis.block_resolutions if getattr(G.synthesis, f"b{r}").use_fp16]
    assert fp16 == [128, 256, 512, 1024]


def test_upsampling_conv_equals_zero_insertion_fir_conv():
    """The transposed-convolution path against the textbook definition: insert zeros, FIR
    filter (gain 4), then a true convolution (flipped kernel) with the combined padding."""
    torch.manual_seed(1)
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    w = torch.randn(7, 5, 3, 3, dtype=torch.float64)
    f = sg.setup_filter([1, 3, 3, 1]).double()
    got = sg.conv2d_resample(x, w, f.float(), up=2, padding=1, flip_weight=False)
    up = torch.zeros(2, 5, 12, 12, dtype=torch.float64)
    up[:, :, ::2, ::2] = x
    # padding for a 4-tap filter and up=2: (2, 1) + 3x3 conv padding 1 on the upsampled grid
    y = F.pad(up, [3, 2, 3, 2])
    k = (f * 4).flip([0, 1])[None, None].repeat(5, 1, 1, 1)
    y = F.conv2d(y, k, groups=5)
    ref = F.conv2d(y, w.flip([2, 3]))
    assert got.shape == ref.shape == (2, 7, 12, 12)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_upsample2d_keeps_a_constant_image():
    f = sg.setup_filter([1, 3, 3, 1])
    y = sg.upsample2d(torch.ones(1, 3, 8, 8), f)
    assert y.shape == (1, 3, 16, 16)
    torch.testing.assert_close(y[:, :, 2:-2, 2:-2], torch.ones(1, 3, 12, 12))


def test_fused_unfused_and_fp16_paths_agree(small_state):
    """Eval mode fuses modulation into a grouped convolution, training mode scales the
    activations instead; fp16 blocks (as trained on GPU) stay close to fp32."""
    G = sg.Generator(SMALL)
    G.load_state_dict(small_state)
    with torch.no_grad():
        w = G.mapping(torch.randn(2, 64, generator=torch.Generator().manual_seed(0)))
        fused = G.eval().synthesis(w)
        unfused = G.train().synthesis(w)
        half = G.eval().synthesis(w, force_fp32=False)  # blocks 8..64 in float16
    torch.testing.assert_close(unfused, fused, atol=1e-4, rtol=1e-4)
    assert half.dtype == torch.float32
    assert (half - fused).abs().max() < 0.05 * fused.std()


def test_load_small_texgan_and_synthesise(tmp_path, small_state):
    path = _write_checkpoint(tmp_path / "checkpoints", small_state)  # FFHQ-UV: flat state dict
    gan = sg.load_texgan(path, "cpu", w_stats_samples=3000)
    assert gan.num_ws == 10 and gan.resolution == 64
    for k, v in small_state.items():
        assert torch.equal(gan.G.state_dict()[k], v), k

    # W statistics: side file next to the checkpoint, same numbers as one big numpy draw.
    side = path.with_name("texgan_ffhq_uv.pt")
    assert side.is_file()
    stats = torch.load(side, weights_only=True)
    assert stats["w_avg"].shape == stats["w_std"].shape == (1, 1, 64)
    z = torch.from_numpy(np.random.RandomState(123).randn(3000, 64))
    with torch.no_grad():
        w = gan.G.mapping(z)[:, 0].double()
    torch.testing.assert_close(stats["w_avg"].double(), w.mean(0).view(1, 1, -1), atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(stats["w_std"].double(), w.std(0, unbiased=False).view(1, 1, -1),
                               atol=1e-5, rtol=1e-4)
    assert not list(side.parent.glob("*.tmp"))

    # W+ and W latents, differentiable, fixed noise, output (x + 1) / 2 of the synthesis.
    z0 = gan.init_z_latents(2)
    assert z0.shape == (2, 10, 64)
    torch.testing.assert_close(gan.inverse_w_to_z(gan.map_z_to_w(z0)), z0)
    w_plus = gan.map_z_to_w(z0).requires_grad_(True)
    tex = gan.synthesis(w_plus)
    assert tex.shape == (2, 3, 64, 64) and tex.dtype == torch.float32
    raw = gan.G.synthesis(w_plus.detach(), noise_mode="const")
    torch.testing.assert_close(tex.detach(), (raw + 1) / 2)
    torch.testing.assert_close(gan.synthesis(w_plus).detach(), tex.detach())  # const noise
    tex.mean().backward()
    assert w_plus.grad is not None and w_plus.grad.abs().sum() > 0
    assert all(p.grad is None for p in gan.G.parameters())  # frozen network

    w1 = gan.w_avg[:, 0].clone()
    t1 = gan.synthesis(w1)  # [B, 512]-style W latent
    torch.testing.assert_close(t1, gan.synthesis(w1[:, None].repeat(1, 10, 1)))
    with pytest.raises(ValueError, match="w must be"):
        gan.synthesis(torch.zeros(1, 5, 64))


def test_side_file_is_reused(tmp_path, small_state):
    path = _write_checkpoint(tmp_path, small_state)
    side = path.with_suffix(".pt")
    torch.save({"w_avg": torch.full((1, 1, 64), 0.25), "w_std": torch.full((1, 1, 64), 2.0)},
               side)
    gan = sg.load_texgan(path, "cpu", w_stats_samples=10)
    assert torch.all(gan.w_avg == 0.25) and torch.all(gan.w_std == 2.0)


@pytest.mark.parametrize("layout", ["G_ema", "state_dict", "module_prefix"])
def test_other_container_layouts(tmp_path, small_state, layout):
    if layout == "module_prefix":
        obj = {f"module.{k}": v for k, v in small_state.items()}
    else:
        obj = {layout: small_state, "epoch": 12}
    gan = sg.load_texgan(_write_checkpoint(tmp_path, obj), "cpu", w_stats_samples=100)
    assert torch.equal(gan.G.synthesis.b4.const, small_state["synthesis.b4.const"])


def test_bad_checkpoints_fail_with_the_key_named(tmp_path, small_state):
    missing = {k: v for k, v in small_state.items() if k != "synthesis.b8.conv0.affine.bias"}
    with pytest.raises(CheckpointError,
                       match=r"texgan_ffhq_uv.pth: .*missing keys: synthesis.b8.conv0.affine.bias"):
        sg.load_texgan(_write_checkpoint(tmp_path / "a", missing), "cpu", w_stats_samples=10)
    extra = dict(small_state, **{"synthesis.b8.conv0.extra": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: synthesis.b8.conv0.extra"):
        sg.load_texgan(_write_checkpoint(tmp_path / "b", extra), "cpu", w_stats_samples=10)
    with pytest.raises(CheckpointError, match="no StyleGAN2 generator found"):
        sg.load_texgan(_write_checkpoint(tmp_path / "c", {"foo": torch.zeros(1)}), "cpu")


@pytest.mark.gpu
def test_fp16_synthesis_on_cuda_matches_fp32(tmp_path):
    """Run on the GPU: fp16 in the top 4 resolutions (as trained) vs fp32."""
    torch.manual_seed(0)
    G = sg.Generator()
    path = _write_checkpoint(tmp_path, G.state_dict())
    gan = sg.load_texgan(path, "cuda", w_stats_samples=10000)
    w = gan.map_z_to_w(gan.init_z_latents(1))
    with torch.no_grad():
        a = gan.synthesis(w)  # fp16 blocks on CUDA
        b = gan.synthesis(w, force_fp32=True)
    assert a.shape == (1, 3, 1024, 1024) and torch.isfinite(a).all()
    assert (a - b).abs().mean() < 0.05 * b.std()
