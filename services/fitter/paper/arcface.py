"""ArcFace identity features (iresnet50) for the identity loss of the paper's fitting.

Network: insightface ``arcface_torch`` ``iresnet50`` (``backbones/iresnet.py``), the layout of
``arcface_model/ms1mv3_arcface_r50_fp16_backbone.pth`` (a flat state dict):

* stem: ``conv1`` (3x3, 64, stride 1), ``bn1``, ``prelu``;
* ``layer1..4`` of ``IBasicBlock`` x [3, 4, 14, 3] (64, 128, 256, 512 channels, each layer
  starts with stride 2): ``bn1 -> conv1 -> bn2 -> prelu -> conv2 (stride) -> bn3`` + shortcut
  (``downsample.0`` 1x1 conv, ``downsample.1`` BN);
* ``bn2`` (512), flatten ``512 x 7 x 7``, ``fc`` (25088 -> 512), ``features`` (BatchNorm1d).

Input ``[B, 3, 112, 112]`` RGB scaled to [-1, 1] (FFHQ-UV: ``2 * x - 1`` of [0, 1] images),
output the 512-d embedding (L2-normalised by :meth:`ArcFace.embed`). The ``fp16`` of the file
name is the training precision; the weights are stored as float32 or float16 and load either way.

Alignment (FFHQ-UV / Deep3D ``estimate_norm``): a 5-point similarity transform (Umeyama, no
reflection) from the image's eye centres, nose tip and mouth corners onto the standard ArcFace
112 template, then a bilinear warp (kornia ``warp_affine`` with ``align_corners=True`` there;
``grid_sample`` here), zeros outside the image.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffhquv.checkpoints import CheckpointError, load_state_dict_strict, strip_prefix, torch_load

ARCFACE_SIZE = 112
# Standard ArcFace 5-point template in 112x112 pixels (x right, y down): left eye, right eye,
# nose tip, left mouth corner, right mouth corner ("left" = image left).
ARCFACE_TEMPLATE = torch.tensor([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=torch.float32)


class IBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """``[B, 3, 112, 112]`` in [-1, 1] -> ``[B, num_features]`` (not normalised)."""

    fc_scale = 7 * 7

    def __init__(self, layers: list[int], num_features: int = 512):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0], stride=2)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-5))
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x).flatten(1))
        return self.features(self.fc(x))


def iresnet50(num_features: int = 512) -> IResNet:
    return IResNet([3, 4, 14, 3], num_features)


def lm68_to_lm5(lm68: Tensor) -> Tensor:
    """``[B, 68, 2]`` iBUG landmarks -> ``[B, 5, 2]`` as in Deep3D's ``extract_5p``: eye
    centres as the mean of the two eye corners (36, 39) and (42, 45), nose tip 30, mouth
    corners 48 and 54."""
    return torch.stack([(lm68[:, 36] + lm68[:, 39]) / 2, (lm68[:, 42] + lm68[:, 45]) / 2,
                        lm68[:, 30], lm68[:, 48], lm68[:, 54]], dim=1)


def similarity_transform(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping
    ``src`` onto ``dst`` (Umeyama 1991, as ``skimage.transform.SimilarityTransform``).

    Args:
        src, dst: ``[B, N, 2]`` points.
    Returns:
        ``[B, 2, 3]`` affine matrices ``A`` with ``dst ~= A[:, :, :2] @ src + A[:, :, 2]``.
    """
    src64, dst64 = src.double(), dst.double()
    mu_s, mu_d = src64.mean(1, keepdim=True), dst64.mean(1, keepdim=True)
    sc, dc = src64 - mu_s, dst64 - mu_d
    cov = dc.transpose(1, 2) @ sc / src.shape[1]  # [B, 2, 2]
    u, s, vh = torch.linalg.svd(cov)
    d = torch.ones_like(s)
    d[:, 1] = torch.where(torch.linalg.det(cov) < 0, -1.0, 1.0).to(d)
    rot = u @ torch.diag_embed(d) @ vh
    var_s = sc.square().sum(dim=(1, 2)) / src.shape[1]
    scale = (s * d).sum(1) / var_s.clamp_min(1e-12)
    lin = scale[:, None, None] * rot
    t = mu_d.transpose(1, 2) - lin @ mu_s.transpose(1, 2)
    return torch.cat([lin, t], dim=2).to(src.dtype)


def warp_affine(image: Tensor, matrix: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear warp by ``matrix`` (source pixels -> output pixels), zeros outside.

    Args:
        image: ``[B, C, H, W]``.
        matrix: ``[B, 2, 3]`` forward affine in pixel coordinates (x right, y down, pixel
            centres at integers).
        size: output ``(height, width)``.
    Returns:
        ``[B, C, height, width]``, differentiable w.r.t. ``image`` and ``matrix``.
    """
    b, _, h, w = image.shape
    oh, ow = size
    full = torch.cat([matrix, matrix.new_tensor([0.0, 0.0, 1.0]).expand(b, 1, 3)], dim=1)
    inv = torch.linalg.inv(full)[:, :2]  # output pixel -> source pixel
    ys, xs = torch.meshgrid(torch.arange(oh, dtype=image.dtype, device=image.device),
                            torch.arange(ow, dtype=image.dtype, device=image.device),
                            indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, -1, 3)  # [1, P, 3]
    src = pts @ inv.to(image.dtype).transpose(1, 2)  # [B, P, 2]
    gx = src[..., 0] * (2.0 / max(w - 1, 1)) - 1
    gy = src[..., 1] * (2.0 / max(h - 1, 1)) - 1
    grid = torch.stack([gx, gy], -1).reshape(b, oh, ow, 2)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def align_112(image: Tensor, lm5: Tensor) -> Tensor:
    """Crop faces to ArcFace's 112 x 112 by the 5-point similarity onto the template.

    Args:
        image: ``[B, 3, H, W]`` float RGB (any range; FFHQ-UV passes [0, 1]).
        lm5: ``[B, 5, 2]`` image pixels (x right, y down): left eye centre, right eye centre,
            nose tip, left mouth corner, right mouth corner (see :func:`lm68_to_lm5`).
    Returns:
        ``[B, 3, 112, 112]``, differentiable w.r.t. ``image`` (and ``lm5``).
    """
    if image.ndim != 4 or lm5.shape[-2:] != (5, 2) or lm5.shape[0] != image.shape[0]:
        raise ValueError(f"need image [B, C, H, W] and lm5 [B, 5, 2], got "
                         f"{tuple(image.shape)} and {tuple(lm5.shape)}")
    tmpl = ARCFACE_TEMPLATE.to(lm5).expand(lm5.shape[0], 5, 2)
    m = similarity_transform(lm5, tmpl)
    return warp_affine(image, m, (ARCFACE_SIZE, ARCFACE_SIZE))


def identity_loss(emb_a: Tensor, emb_b: Tensor) -> Tensor:
    """Mean over the batch of ``1 - cos(emb_a, emb_b)``; ``[B, D]`` each -> scalar."""
    return (1 - F.cosine_similarity(emb_a, emb_b, dim=-1)).mean()


class ArcFace(nn.Module):
    """The loaded identity network (eval mode, frozen)."""

    def __init__(self, net: IResNet):
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def embed(self, face112: Tensor) -> Tensor:
        """``[B, 3, 112, 112]`` RGB in [0, 1] -> ``[B, 512]`` unit-norm embeddings."""
        if face112.shape[-2:] != (ARCFACE_SIZE, ARCFACE_SIZE):
            raise ValueError(f"ArcFace needs 112x112 faces, got {tuple(face112.shape)}")
        return F.normalize(self.net(face112 * 2 - 1), dim=-1)

    def forward(self, image: Tensor, lm5: Tensor) -> Tensor:
        """Align (:func:`align_112`) then :meth:`embed`: ``[B,3,H,W]`` [0,1], ``[B,5,2]``."""
        return self.embed(align_112(image, lm5))


def load_arcface(path: str | Path, device: str | torch.device = "cpu") -> ArcFace:
    """Load ``ms1mv3_arcface_r50_fp16_backbone.pth`` (flat iresnet50 state dict; a
    ``module.`` prefix or a ``state_dict`` wrapper is accepted).

    Raises:
        CheckpointError: unreadable file or keys / shapes that differ (named).
    """
    path = Path(path)
    obj = torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name}: expected an iresnet50 state dict, got "
                              f"{type(obj).__name__}")
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = strip_prefix(obj, "module.")
    net = iresnet50()
    load_state_dict_strict(net, obj, path.name)
    return ArcFace(net.to(device))
