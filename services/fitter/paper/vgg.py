"""VGG16 perceptual loss from ``vgg_model/vgg16.pt`` (the StyleGAN2-ADA metrics network).

The file is a TorchScript module (NVlabs ``stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt``)
loaded with ``torch.jit.load``. FFHQ-UV (``RGB_Fitting/model/losses.py: vgg_loss``) calls it as::

    feats = vgg16(img_0_255, resize_images=False, return_lpips=True)   # [B, 3, H, W] -> [B, D]
    dist = (feats_a - feats_b).square().sum()

after an area resize to 256 x 256 of images larger than 256 and a x255 scale of [0, 1] images.
With ``return_lpips=True`` the module returns the LPIPS features of VGG16 (relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3 maps, each unit-normalised over channels, scaled by the square root
of its learned LPIPS weights and of 1 / (h w), flattened and concatenated) so that the squared
Euclidean distance of two rows is their LPIPS distance.

:class:`LpipsVGG16` is a scriptable module with that calling convention (tests script it with
random weights to make a ``vgg16.pt`` in the official layout; its weights are not NVIDIA's).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffhquv.checkpoints import CheckpointError

VGG_MAX_SIZE = 256
# VGG16 'D' configuration; LPIPS taps after the last ReLU of each of the 5 stages.
VGG16_CFG: list[list[int]] = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512],
                              [512, 512, 512]]


class _Stage(nn.Module):
    """Convolutions + ReLU of one VGG stage and the LPIPS channel weights of its output."""

    def __init__(self, cin: int, widths: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for c in widths:
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU()]
            cin = c
        self.convs = nn.Sequential(*layers)
        self.lin = nn.Parameter(torch.rand(cin))

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x)


class LpipsVGG16(nn.Module):
    """VGG16 with the ``vgg16.pt`` calling convention: ``forward(img, resize_images=True,
    return_lpips=False)``, ``img`` ``[B, 3, H, W]`` RGB in [0, 255].

    ``return_lpips=True``: ``[B, D]`` LPIPS features; else the ``[B, 512]`` global average of
    the last stage (the official module returns fc7 features there: not used by FFHQ-UV).

    Args:
        width: channel divisor (1 = VGG16; tests use 8 for a small, fast network).
    """

    def __init__(self, width: int = 1):
        super().__init__()
        cins = [3] + [stage[-1] // width for stage in VGG16_CFG[:-1]]
        self.stages = nn.ModuleList([_Stage(cin, [c // width for c in stage])
                                     for cin, stage in zip(cins, VGG16_CFG, strict=True)])
        # LPIPS input scaling of images in [-1, 1].
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, img: Tensor, resize_images: bool = True,
                return_lpips: bool = False) -> Tensor:
        x = img.to(torch.float32)
        if resize_images:
            x = F.interpolate(x, size=(224, 224), mode="area")
        x = (x / 127.5 - 1 - self.shift) / self.scale
        out: list[Tensor] = []
        first = True
        for stage in self.stages:
            if not first:
                x = F.max_pool2d(x, 2)
            first = False
            x = stage(x)
            f = x / (x.square().sum(dim=1, keepdim=True) + 1e-20).sqrt()
            hw = float(f.shape[2] * f.shape[3])
            f = f * (stage.lin.clamp_min(0).sqrt() / (hw ** 0.5)).view(1, -1, 1, 1)
            out.append(f.flatten(1))
        if not return_lpips:
            return x.mean(dim=(2, 3))
        return torch.cat(out, dim=1)


class VGGPerceptual(nn.Module):
    """The loaded ``vgg16.pt`` with FFHQ-UV's preprocessing."""

    def __init__(self, module: torch.jit.ScriptModule):
        super().__init__()
        self.vgg = module.eval()
        for p in self.vgg.parameters():
            p.requires_grad_(False)

    def features(self, image: Tensor) -> Tensor:
        """``[B, 3, H, W]`` RGB in [0, 1] -> ``[B, D]`` LPIPS features (area-resized to
        256 x 256 when larger, as FFHQ-UV does)."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        if image.shape[2] > VGG_MAX_SIZE:
            image = F.interpolate(image, size=(VGG_MAX_SIZE, VGG_MAX_SIZE), mode="area")
        return self.vgg(image * 255.0, resize_images=False, return_lpips=True)

    def loss(self, a: Tensor, b: Tensor) -> Tensor:
        """FFHQ-UV's ``vgg_loss``: squared distance of the LPIPS features, summed over the
        batch. ``a``, ``b``: ``[B, 3, H, W]`` in [0, 1] -> scalar."""
        return (self.features(a) - self.features(b)).square().sum()

    forward = loss


def load_vgg16(path: str | Path, device: str | torch.device = "cpu") -> VGGPerceptual:
    """``torch.jit.load`` ``vgg16.pt`` and check its calling convention on a small probe.

    Raises:
        CheckpointError: not a TorchScript file, or it does not accept
            ``(img, resize_images=False, return_lpips=True)`` returning ``[B, D]``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.name}: no such file: {path}")
    try:
        module = torch.jit.load(str(path), map_location=torch.device(device))
    except Exception as e:  # noqa: BLE001 -- any failure means an unusable file
        raise CheckpointError(f"{path.name}: not a TorchScript module ({path}): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                              ) from e
    vgg = VGGPerceptual(module)
    try:
        with torch.no_grad():
            probe = vgg.features(torch.full((1, 3, 64, 64), 0.5, device=device))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path.name}: the module does not accept (img, resize_images="
                              f"False, return_lpips=True): {type(e).__name__}: {e}") from e
    if probe.ndim != 2 or probe.shape[0] != 1:
        raise CheckpointError(f"{path.name}: expected [B, D] LPIPS features, got "
                              f"{tuple(probe.shape)}")
    return vgg
