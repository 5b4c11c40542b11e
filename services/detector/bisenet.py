"""BiSeNet face parsing (``parsing_model/79999_iter.pth``) as used by FFHQ-UV's pre-processing.

Network: zllrunning/face-parsing.PyTorch ``model.py`` (copied into FFHQ-UV
``RGB_Fitting/third_party/face_parsing``), 19 CelebAMask-HQ classes. State-dict layout:

* ``cp.resnet.*``: ResNet-18 trunk with torchvision names (``conv1``, ``bn1``,
  ``layer1..4.<i>.{conv1,bn1,conv2,bn2}``, ``layer<k>.0.downsample.{0,1}``; no ``fc``);
* ``cp.arm16`` / ``cp.arm32``: attention refinement (``conv.conv``, ``conv.bn``,
  ``conv_atten``, ``bn_atten``); ``cp.conv_head32``, ``cp.conv_head16``, ``cp.conv_avg``
  (ConvBNReLU: ``conv``, ``bn``);
* ``ffm``: feature fusion (``convblk.conv``, ``convblk.bn``, ``conv1``, ``conv2``);
* ``conv_out``, ``conv_out16``, ``conv_out32``: ``conv.conv``, ``conv.bn``, ``conv_out``.

``resnet_model/resnet18-5c106cde.pth`` (torchvision's ImageNet ResNet-18) is only read by the
original ``Resnet18`` constructor to initialise the trunk before training; ``79999_iter.pth``
holds every weight, including ``cp.resnet.*``, so it is NOT needed at inference and is not read
here.

Inference as in FFHQ-UV ``get_seg_img``: RGB uint8 resized to 512 x 512 (bilinear), ImageNet
normalisation, the first (full-resolution) output, logits resized back to the input size
(bilinear), argmax.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffhquv.checkpoints import CheckpointError, load_state_dict_strict, strip_prefix, torch_load
from ffhquv.vocab import PARSE_SOURCE_BISENET, ParseLabel

N_CLASSES = 19
PARSE_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CELEBAMASK_CLASSES = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g",
                      "l_ear", "r_ear", "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck",
                      "neck_l", "cloth", "hair", "hat")

# CelebAMask-HQ class -> ParseLabel. Glasses, ears, earrings, neck, necklace, cloth, hair and
# hat are not face surface of the fitted mesh: background (FFHQ-UV's 'face' part mask
# likewise keeps only skin, brows, eyes, nose, mouth and lips).
_TO_PARSE = np.zeros(256, np.uint8)
_TO_PARSE[1] = ParseLabel.SKIN
_TO_PARSE[2] = _TO_PARSE[3] = ParseLabel.BROWS
_TO_PARSE[4] = _TO_PARSE[5] = ParseLabel.EYES
_TO_PARSE[10] = ParseLabel.NOSE
_TO_PARSE[11] = ParseLabel.MOUTH
_TO_PARSE[12] = _TO_PARSE[13] = ParseLabel.LIPS


def to_parse_labels(labels19: np.ndarray) -> np.ndarray:
    """CelebAMask-HQ labels (0..18) -> :class:`ParseLabel` values, same shape, uint8.

    skin -> SKIN, l/r brow -> BROWS, l/r eye -> EYES, nose -> NOSE, u/l lip -> LIPS,
    mouth (interior) -> MOUTH; everything else (glasses, ears, earring, neck, necklace, cloth,
    hair, hat, background) -> BACKGROUND. Values above 18 raise ValueError.
    """
    a = np.asarray(labels19)
    if a.size and (a.min() < 0 or a.max() >= N_CLASSES):
        raise ValueError(f"labels must be in 0..{N_CLASSES - 1}, got {a.min()}..{a.max()}")
    return _TO_PARSE[a.astype(np.intp)]


# ----------------------------------------------------------------------------- network

class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """face-parsing.PyTorch's residual block (torchvision key names)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        r = F.relu(self.bn1(self.conv1(x)))
        r = self.bn2(self.conv2(r))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(s + r)


class Resnet18(nn.Module):
    """ResNet-18 trunk returning the 1/8, 1/16 and 1/32 feature maps (128, 256, 512 ch)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinementModule(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        att = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean(dim=(2, 3), keepdim=True))))
        return feat * att


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        feat32_sum = self.arm32(feat32) + F.interpolate(avg, feat32.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:],
                                                   mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up


class FeatureFusionModule(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp: Tensor, fcp: Tensor) -> Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        att = feat.mean(dim=(2, 3), keepdim=True)
        att = torch.sigmoid(self.conv2(F.relu(self.conv1(att))))
        return feat * att + feat


class BiSeNetOutput(nn.Module):
    def __init__(self, cin: int, cmid: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cmid)
        self.conv_out = nn.Conv2d(cmid, n_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """``[B, 3, H, W]`` normalised RGB -> three ``[B, 19, H, W]`` logit maps (main, aux16,
    aux32); H, W multiples of 32."""

    def __init__(self, n_classes: int = N_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        size = x.shape[2:]
        feat8, cp8, cp16 = self.cp(x)
        out = self.conv_out(self.ffm(feat8, cp8))
        out16 = self.conv_out16(cp8)
        out32 = self.conv_out32(cp16)

        def up(t: Tensor) -> Tensor:
            return F.interpolate(t, size, mode="bilinear", align_corners=True)

        return up(out), up(out16), up(out32)


# ----------------------------------------------------------------------------- parser

class BiSeNetParser:
    """A loaded BiSeNet; also a :class:`services.detector.masks.FaceParser` (``name``,
    ``__call__(crop) -> ParseLabel map``). Thread-safe."""

    name = PARSE_SOURCE_BISENET

    def __init__(self, net: BiSeNet, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self._lock = threading.Lock()

    def logits(self, rgb: np.ndarray) -> np.ndarray:
        """``uint8 [H, W, 3]`` RGB -> ``float32 [H, W, 19]`` logits at the input size."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"parse() needs uint8 [H, W, 3] RGB, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        x = cv2.resize(rgb, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR)
        t = torch.from_numpy(x).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        t = (t - self._mean) / self._std
        with self._lock, torch.no_grad():
            out = self.net(t)[0][0].permute(1, 2, 0).float().cpu().numpy()
        return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)

    def parse(self, rgb: np.ndarray) -> np.ndarray:
        """``uint8 [H, W, 3]`` RGB -> ``uint8 [H, W]`` CelebAMask-HQ labels (0..18)."""
        return self.logits(rgb).argmax(axis=2).astype(np.uint8)

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        """``uint8 [H, W, 3]`` RGB crop -> ``uint8 [H, W]`` :class:`ParseLabel` values."""
        return to_parse_labels(self.parse(crop))


def load_bisenet(path: str | Path, device: str | torch.device = "cpu") -> BiSeNetParser:
    """Load ``79999_iter.pth`` (a flat BiSeNet state dict; ``module.`` prefix accepted).

    Raises:
        CheckpointError: unreadable file or keys / shapes that differ (named).
    """
    path = Path(path)
    obj = torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name}: expected a BiSeNet state dict, got "
                              f"{type(obj).__name__}")
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = strip_prefix(obj, "module.")
    net = BiSeNet(N_CLASSES)
    load_state_dict_strict(net, obj, path.name)
    return BiSeNetParser(net, device)
