"""The FFHQ-UV texture GAN: a StyleGAN2-ADA generator in plain torch, with its loader.

Architecture and parameter names follow NVlabs/stylegan2-ada-pytorch ``training/networks.py``
(``Generator``) as configured by FFHQ-UV ``RGB_Fitting/network/texgan.py``: z 512, no label,
w 512, 1024 x 1024 x 3, 8 mapping layers (lr multiplier 0.01, ``w_avg`` tracked with beta
0.995), channel base 32768, channel max 512, fp16 in the 4 highest resolutions (128..1024;
fp32 on CPU), conv clamp 256, 'skip' architecture, resample filter [1, 3, 3, 1], noise inputs.
The state dict has exactly the official keys and shapes, e.g.::

    mapping.fc0.weight [512, 512]  mapping.fc0.bias [512]  ...  mapping.w_avg [512]
    synthesis.b4.const [512, 4, 4]  synthesis.b4.resample_filter [4, 4]
    synthesis.b4.conv1.{weight [512,512,3,3], bias, noise_strength [], noise_const [4,4],
                        resample_filter, affine.weight [512,512], affine.bias}
    synthesis.b8.conv0.*  synthesis.b8.conv1.*  synthesis.b8.torgb.{weight [3,512,1,1], bias,
                                                                   affine.weight, affine.bias}
    ...  synthesis.b1024.torgb.weight [3, 32, 1, 1]

The custom CUDA ops of the original (upfirdn2d, bias_act) are replaced by their reference
formulas in torch: the same numbers up to float rounding, differentiable, on any device.

Checkpoint (``texgan_model/texgan_ffhq_uv.pth``): FFHQ-UV loads it with
``Generator.load_state_dict(torch.load(path))``, i.e. a flat state dict of the generator.
:func:`load_texgan` accepts that layout and, for convenience, the same dict nested under
``G_ema`` / ``G`` / ``generator`` / ``state_dict`` / ``model`` or with a ``module.`` /
``G_ema.`` key prefix. Pickled network snapshots (``.pkl`` with Python classes) are refused.

W statistics: a side file ``<stem>.pt`` next to the checkpoint (``texgan_ffhq_uv.pt``) with
``w_avg`` and ``w_std`` of shape ``[1, 1, 512]``: mean / std of the first W of mapped z drawn by
``numpy.random.RandomState(123).randn(100000, 512)``; computed and saved (atomically) when
absent, in the cache dir when the checkpoint folder is read-only.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffhquv.checkpoints import CheckpointError, load_state_dict_strict, strip_prefix, torch_load

log = logging.getLogger(__name__)

LRELU_GAIN = math.sqrt(2.0)
W_STATS_SAMPLES = 100_000
W_STATS_SEED = 123


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of the generator (defaults: FFHQ-UV's texture GAN)."""

    z_dim: int = 512
    w_dim: int = 512
    img_resolution: int = 1024
    img_channels: int = 3
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.995
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 4
    conv_clamp: float | None = 256.0
    resample_filter: tuple[int, ...] = (1, 3, 3, 1)
    use_noise: bool = True

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)


# ----------------------------------------------------------------------------- ops

def setup_filter(taps) -> Tensor:
    """Separable FIR taps -> normalised 2D filter ``[k, k]`` (sum 1), float32."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: Tensor, f: Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> Tensor:
    """Upsample (zero insertion), pad, FIR-filter (true convolution) and downsample.

    Args:
        x: ``[B, C, H, W]``.
        f: ``[kh, kw]`` float32 filter.
        pad: ``(x0, x1, y0, y1)`` padding of the upsampled image; negative values crop.
        gain: overall scale of the signal (the filter is scaled by ``gain``).
    Returns:
        ``[B, C, (H*up + y0 + y1 - kh + 1) // down, ...]`` (rounded up).
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    px0, px1, py0, py1 = pad
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0):x.shape[2] - max(-py1, 0), max(-px0, 0):x.shape[3] - max(-px1, 0)]
    k = (f * gain).to(x.dtype).flip([0, 1])  # convolution, not correlation
    k = k[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, k, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: Tensor, f: Tensor, up: int = 2) -> Tensor:
    """``[B, C, H, W] -> [B, C, H*up, W*up]`` FIR upsampling (gain up^2 keeps DC)."""
    kw = f.shape[-1]
    p0, p1 = (kw + up - 1) // 2, (kw - up) // 2
    return upfirdn2d(x, f, up=up, pad=(p0, p1, p0, p1), gain=up * up)


def conv2d_resample(x: Tensor, w: Tensor, f: Tensor | None, up: int = 1, padding: int = 0,
                    groups: int = 1, flip_weight: bool = True) -> Tensor:
    """2D convolution with optional FIR upsampling by ``up`` (1 or more), padding once.

    Args:
        x: ``[B, Cin, H, W]``; w: ``[Cout, Cin/groups, kh, kw]``; f: resampling filter.
        flip_weight: True = correlation (``F.conv2d``), False = true convolution.
    Returns:
        ``[B, Cout, H*up, W*up]`` for 'same' padding.
    """
    cout, cin_g, kh, kw = w.shape
    if up == 1:
        if not flip_weight:
            w = w.flip([2, 3])
        return F.conv2d(x, w, padding=padding, groups=groups)
    fw = f.shape[-1]
    px0 = padding + (fw + up - 1) // 2 - (kw - 1)
    px1 = padding + (fw - up) // 2 - (kw - up)
    py0 = padding + (fw + up - 1) // 2 - (kh - 1)
    py1 = padding + (fw - up) // 2 - (kh - up)
    # Transposed strided convolution, then the FIR filter (what the original's fast path does).
    if groups == 1:
        wt = w.transpose(0, 1)
    else:
        wt = w.reshape(groups, cout // groups, cin_g, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * cin_g, cout // groups, kh, kw)
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    if flip_weight:  # conv_transpose2d already flips; undo for correlation semantics
        wt = wt.flip([2, 3])
    x = F.conv_transpose2d(x, wt, stride=up, padding=(pyt, pxt), groups=groups)
    return upfirdn2d(x, f, pad=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=up * up)


def bias_act(x: Tensor, b: Tensor | None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> Tensor:
    """``clamp(act(x + b) * gain)`` with the bias broadcast over dim 1; lrelu slope 0.2 and
    default gain sqrt(2) as in the original."""
    if b is not None:
        x = x + b.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
        g = LRELU_GAIN if gain is None else gain
    elif act == "linear":
        g = 1.0 if gain is None else gain
    else:
        raise ValueError(f"unsupported activation {act!r}")
    if g != 1:
        x = x * g
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, up: int = 1, padding: int = 0,
                     resample_filter: Tensor | None = None, demodulate: bool = True,
                     fused_modconv: bool = True) -> Tensor:
    """StyleGAN2 modulated convolution (the caller adds the per-pixel noise).

    Args:
        x: ``[B, Cin, H, W]``; weight: ``[Cout, Cin, k, k]``; styles: ``[B, Cin]``.
        up: upsampling factor; as in StyleGAN2's synthesis layers the weight is applied as a
            correlation at ``up == 1`` and as a true convolution when upsampling.
    Returns:
        ``[B, Cout, H*up, W*up]`` for 'same' padding.
    """
    flip_weight = up == 1
    b = x.shape[0]
    cout, cin, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:  # pre-normalise against fp16 overflow
        weight = weight * (1 / np.sqrt(cin * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(b, 1, -1, 1, 1)  # [B, Cout, Cin, k, k]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [B, Cout]
    if demodulate and fused_modconv:
        w = w * dcoefs.reshape(b, -1, 1, 1, 1)
    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(b, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, padding=padding,
                            flip_weight=flip_weight)
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(b, -1, 1, 1)
        return x
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, cin, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), resample_filter, up=up, padding=padding, groups=b,
                        flip_weight=flip_weight)
    return x.reshape(b, -1, *x.shape[2:])


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ----------------------------------------------------------------------------- layers

class FullyConnectedLayer(nn.Module):
    """Equalised-lr linear layer: keys ``weight [out, in]``, ``bias [out]``."""

    def __init__(self, in_features: int, out_features: int, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class MappingNetwork(nn.Module):
    """z ``[B, z_dim]`` -> w ``[B, num_ws, w_dim]`` (keys ``fc0..fc{n-1}``, ``w_avg``)."""

    def __init__(self, cfg: GeneratorConfig, num_ws: int):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws = cfg.z_dim, cfg.w_dim, num_ws
        self.num_layers = cfg.mapping_layers
        self.w_avg_beta = cfg.w_avg_beta
        feats = [cfg.z_dim] + [cfg.w_dim] * cfg.mapping_layers
        for i in range(cfg.mapping_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(
                feats[i], feats[i + 1], activation="lrelu",
                lr_multiplier=cfg.mapping_lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z: Tensor, truncation_psi: float = 1.0) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, {self.z_dim}], got {tuple(z.shape)}")
        x = normalize_2nd_moment(z.to(torch.float32))
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+ optional 2x up) + noise + bias + lrelu."""

    def __init__(self, cin: int, cout: int, w_dim: int, resolution: int, up: int,
                 cfg: GeneratorConfig):
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, cfg.use_noise
        self.conv_clamp = cfg.conv_clamp
        self.register_buffer("resample_filter", setup_filter(cfg.resample_filter))
        self.padding = 1
        self.affine = FullyConnectedLayer(w_dim, cin, bias_init=1)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        if cfg.use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "const",
                fused_modconv: bool = True) -> Tensor:
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution,
                                device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, fused_modconv=fused_modconv)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return bias_act(x, self.bias, act="lrelu", clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation + bias (clamped)."""

    def __init__(self, cin: int, cout: int, w_dim: int, conv_clamp: float | None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, cin, bias_init=1)
        self.weight = nn.Parameter(torch.randn(cout, cin, 1, 1))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.weight_gain = 1 / np.sqrt(cin)

    def forward(self, x: Tensor, w: Tensor, fused_modconv: bool = True) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False,
                             fused_modconv=fused_modconv)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' generator: (const | conv0 up) + conv1 + torgb."""

    def __init__(self, cin: int, cout: int, resolution: int, use_fp16: bool,
                 cfg: GeneratorConfig):
        super().__init__()
        self.in_channels, self.resolution, self.use_fp16 = cin, resolution, use_fp16
        self.img_channels = cfg.img_channels
        self.register_buffer("resample_filter", setup_filter(cfg.resample_filter))
        self.num_conv = 0
        if cin == 0:
            self.const = nn.Parameter(torch.randn(cout, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(cin, cout, cfg.w_dim, resolution, 2, cfg)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(cout, cout, cfg.w_dim, resolution, 1, cfg)
        self.num_conv += 1
        self.torgb = ToRGBLayer(cout, cfg.img_channels, cfg.w_dim, cfg.conv_clamp)
        self.num_torgb = 1

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor, force_fp32: bool,
                noise_mode: str) -> tuple[Tensor, Tensor]:
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        # As in the original: fused only in eval mode and when fp32 or batch 1.
        fused = (not self.training) and (dtype == torch.float32 or ws.shape[0] == 1)
        wi = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, next(wi), noise_mode=noise_mode, fused_modconv=fused)
        else:
            x = x.to(dtype)
            x = self.conv0(x, next(wi), noise_mode=noise_mode, fused_modconv=fused)
            x = self.conv1(x, next(wi), noise_mode=noise_mode, fused_modconv=fused)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(wi), fused_modconv=fused).to(torch.float32)
        img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws ``[B, num_ws, w_dim]`` -> image ``[B, C, R, R]`` in about [-1, 1]."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        r = cfg.img_resolution
        if r < 4 or r & (r - 1):
            raise ValueError(f"img_resolution must be a power of 2 >= 4, got {r}")
        self.w_dim, self.img_resolution = cfg.w_dim, r
        log2 = int(np.log2(r))
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        fp16_resolution = max(2 ** (log2 + 1 - cfg.num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            cin = cfg.channels(res // 2) if res > 4 else 0
            block = SynthesisBlock(cin, cfg.channels(res), res, res >= fp16_resolution, cfg)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last block's torgb

    def forward(self, ws: Tensor, noise_mode: str = "const", force_fp32: bool = True) -> Tensor:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [B, {self.num_ws}, {self.w_dim}], got "
                             f"{tuple(ws.shape)}")
        ws = ws.to(torch.float32)
        x = img = None
        idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, idx, block.num_conv + block.num_torgb),
                           force_fp32=force_fp32, noise_mode=noise_mode)
            idx += block.num_conv
        return img


class Generator(nn.Module):
    """The StyleGAN2-ADA ``Generator`` (no label input): keys ``mapping.*``, ``synthesis.*``."""

    def __init__(self, cfg: GeneratorConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or GeneratorConfig()
        self.z_dim, self.w_dim = cfg.z_dim, cfg.w_dim
        self.img_resolution, self.img_channels = cfg.img_resolution, cfg.img_channels
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg, self.num_ws)

    def forward(self, z: Tensor, truncation_psi: float = 1.0, noise_mode: str = "const",
                force_fp32: bool = True) -> Tensor:
        return self.synthesis(self.mapping(z, truncation_psi), noise_mode=noise_mode,
                              force_fp32=force_fp32)


# ----------------------------------------------------------------------------- texture GAN

class TexGAN(nn.Module):
    """The loaded texture generator with FFHQ-UV's latent conventions.

    Attributes:
        G: the generator (frozen: ``requires_grad_(False)``, eval mode).
        w_avg, w_std: ``[1, 1, w_dim]`` statistics of mapped z (the W "sphere" of FFHQ-UV:
            ``w = z * w_std + w_avg``).
        num_ws: 18 for 1024 x 1024.
    """

    def __init__(self, G: Generator, w_avg: Tensor, w_std: Tensor):
        super().__init__()
        self.G = G.eval().requires_grad_(False)
        self.register_buffer("w_avg", w_avg.reshape(1, 1, -1).float())
        self.register_buffer("w_std", w_std.reshape(1, 1, -1).float())
        self.num_ws = G.num_ws
        self.resolution = G.img_resolution
        self._noise_keep = {n: b.detach().clone() for n, b in G.synthesis.named_buffers()
                            if n.endswith("noise_const")}

    @property
    def device(self) -> torch.device:
        return self.w_avg.device

    def synthesis(self, w: Tensor, force_fp32: bool | None = None) -> Tensor:
        """Texture from W or W+ latents, differentiable w.r.t. ``w``.

        Args:
            w: ``[B, w_dim]`` or ``[B, 1, w_dim]`` (W: repeated to every layer) or
                ``[B, num_ws, w_dim]`` (W+).
            force_fp32: None = fp16 in the top resolutions on CUDA (as trained), fp32 on CPU.
        Returns:
            ``[B, 3, R, R]`` float32 UV texture, ``(x + 1) / 2`` of the generator output
            (about [0, 1], not clamped); row 0 is the top of the PNG (v = 1).
        """
        if w.ndim == 2:
            w = w.unsqueeze(1)
        if w.ndim != 3 or w.shape[-1] != self.G.w_dim or w.shape[1] not in (1, self.num_ws):
            raise ValueError(f"w must be [B, {self.G.w_dim}], [B, 1, {self.G.w_dim}] or "
                             f"[B, {self.num_ws}, {self.G.w_dim}], got {tuple(w.shape)}")
        if w.shape[1] == 1:
            w = w.repeat(1, self.num_ws, 1)
        if force_fp32 is None:
            force_fp32 = w.device.type != "cuda"
        img = self.G.synthesis(w, noise_mode="const", force_fp32=force_fp32)
        return (img + 1) * 0.5

    def map_z_to_w(self, z: Tensor) -> Tensor:
        """``[B, L, w_dim]`` normalised latents -> W (``z * w_std + w_avg``)."""
        return z * self.w_std + self.w_avg

    def inverse_w_to_z(self, w: Tensor) -> Tensor:
        return (w - self.w_avg) / self.w_std

    def init_z_latents(self, batch: int = 1) -> Tensor:
        """FFHQ-UV's initial latent: ``RandomState(123).randn(1, num_ws, z_dim)``, repeated
        ``batch`` times; ``[batch, num_ws, z_dim]`` float32 on the model's device."""
        z = np.random.RandomState(W_STATS_SEED).randn(1, self.num_ws, self.G.z_dim)
        return torch.tensor(z, dtype=torch.float32, device=self.device).repeat(batch, 1, 1)

    def reset_noise(self) -> None:
        """Restore the noise buffers as loaded."""
        bufs = dict(self.G.synthesis.named_buffers())
        with torch.no_grad():
            for n, v in self._noise_keep.items():
                bufs[n].copy_(v)


def _unwrap_generator_state(obj, what: str) -> dict:
    """The generator's state dict out of the plausible checkpoint layouts (see module doc)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what}: expected a generator state dict, got "
                              f"{type(obj).__name__}")
    if "synthesis.b4.const" not in obj and not any(k.endswith("synthesis.b4.const")
                                                   for k in obj if isinstance(k, str)):
        for key in ("G_ema", "g_ema", "G", "generator", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return _unwrap_generator_state(obj[key], f"{what}['{key}']")
        raise CheckpointError(f"{what}: no StyleGAN2 generator found (no key "
                              f"'synthesis.b4.const' and none of G_ema / G / generator / "
                              f"state_dict / model); top-level keys: "
                              f"{', '.join(map(str, list(obj)[:8]))}")
    state = dict(obj)
    for prefix in ("module.", "G_ema.", "g_ema.", "G."):
        if all(k.startswith(prefix) for k in state):
            state = strip_prefix(state, prefix)
    return state


def _infer_config(state: dict, what: str) -> GeneratorConfig:
    """Read resolution / channels / z, w dims off the tensor shapes (FFHQ-UV: the defaults)."""
    try:
        res = [int(k.split(".")[1][1:]) for k in state
               if k.startswith("synthesis.b") and k.endswith(".torgb.weight")]
        img_res = max(res)
        const = state["synthesis.b4.const"]
        z_dim = state["mapping.fc0.weight"].shape[1]
        w_dim = state["mapping.fc0.weight"].shape[0]
        n_map = len({k.split(".")[1] for k in state if k.startswith("mapping.fc")})
        img_channels = state[f"synthesis.b{img_res}.torgb.weight"].shape[0]
        c4 = const.shape[0]
        c_last = state[f"synthesis.b{img_res}.torgb.weight"].shape[1]
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"{what}: not a StyleGAN2 generator state dict ({e})") from e
    channel_base = c_last * img_res
    channel_max = c4 if c4 * 4 < channel_base else max(c4, channel_base // 4)
    return GeneratorConfig(z_dim=z_dim, w_dim=w_dim, img_resolution=img_res,
                           img_channels=img_channels, mapping_layers=n_map,
                           channel_base=channel_base, channel_max=channel_max,
                           use_noise="synthesis.b4.conv1.noise_const" in state)


def compute_w_stats(G: Generator, samples: int = W_STATS_SAMPLES, seed: int = W_STATS_SEED,
                    chunk: int = 10_000) -> tuple[Tensor, Tensor]:
    """Mean and std (population) of the first W of ``samples`` mapped z.

    z = ``numpy.random.RandomState(seed).randn(samples, z_dim)`` drawn chunk by chunk (the
    same numbers as one call). Returns two ``[1, 1, w_dim]`` float32 tensors on CPU.
    """
    rs = np.random.RandomState(seed)
    dev = next(G.parameters()).device
    s1 = torch.zeros(G.w_dim, dtype=torch.float64)
    s2 = torch.zeros(G.w_dim, dtype=torch.float64)
    done = 0
    with torch.no_grad():
        while done < samples:
            n = min(chunk, samples - done)
            z = torch.from_numpy(rs.randn(n, G.z_dim)).to(dev)
            w = G.mapping.forward(z)[:, 0].double().cpu()
            s1 += w.sum(0)
            s2 += w.square().sum(0)
            done += n
    mean = s1 / samples
    var = (s2 / samples - mean.square()).clamp_min(0)
    return mean.float().reshape(1, 1, -1), var.sqrt().float().reshape(1, 1, -1)


def w_stats_path(checkpoint: str | Path) -> Path:
    """``texgan_ffhq_uv.pth`` -> ``texgan_ffhq_uv.pt`` next to it (FFHQ-UV's convention)."""
    p = Path(checkpoint)
    return p.with_suffix(".pt")


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_w_stats(path: Path, w_dim: int) -> tuple[Tensor, Tensor] | None:
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        avg, std = d["w_avg"].float().reshape(1, 1, -1), d["w_std"].float().reshape(1, 1, -1)
    except Exception as e:  # noqa: BLE001 -- a broken side file is recomputed
        log.warning("ignoring unreadable W statistics %s (%s: %s); recomputing",
                    path, type(e).__name__, e)
        return None
    if avg.shape[-1] != w_dim or std.shape[-1] != w_dim:
        log.warning("ignoring W statistics %s: dimension %d, the generator has %d",
                    path, avg.shape[-1], w_dim)
        return None
    return avg, std


def load_w_stats(G: Generator, checkpoint: str | Path,
                 samples: int = W_STATS_SAMPLES) -> tuple[Tensor, Tensor]:
    """``w_avg, w_std`` from ``<stem>.pt`` next to ``checkpoint``, computed and saved when
    absent (in ``<cache>/texgan/`` when the checkpoint folder is not writable)."""
    side = w_stats_path(checkpoint)
    st = Path(checkpoint).stat()
    from ffhquv.config import cache_dir

    cached = cache_dir() / "texgan" / f"{side.stem}-{st.st_size}-{int(st.st_mtime)}.pt"
    for p in (side, cached):
        if p.is_file():
            got = _read_w_stats(p, G.w_dim)
            if got is not None:
                return got
    log.info("computing W statistics of %s from %d mapped z (seed %d)",
             Path(checkpoint).name, samples, W_STATS_SEED)
    avg, std = compute_w_stats(G, samples)
    obj = {"w_avg": avg, "w_std": std}
    try:
        _atomic_save(obj, side)
    except OSError as e:
        log.warning("cannot write %s (%s); caching W statistics at %s", side, e, cached)
        try:
            _atomic_save(obj, cached)
        except OSError as e2:
            log.warning("cannot cache W statistics either (%s); keeping them in memory", e2)
    return avg, std


def load_texgan(path: str | Path, device: str | torch.device = "cpu",
                w_stats_samples: int = W_STATS_SAMPLES) -> TexGAN:
    """Load ``texgan_ffhq_uv.pth`` (see the module doc for the accepted layouts).

    Args:
        path: the checkpoint file.
        device: where the network lives.
        w_stats_samples: z samples for the W statistics when the side file is absent
            (FFHQ-UV: 100000).
    Raises:
        CheckpointError: unreadable file, no generator inside, or keys / shapes that are not
            those of the official generator (the message names them).
    """
    path = Path(path)
    what = path.name
    state = _unwrap_generator_state(torch_load(path), what)
    cfg = _infer_config(state, what)
    G = Generator(cfg)
    load_state_dict_strict(G, state, what)
    G = G.to(device)
    avg, std = load_w_stats(G, path, w_stats_samples)
    return TexGAN(G, avg, std).to(device)
