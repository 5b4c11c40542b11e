"""Deep3D coefficient regressor of FFHQ-UV (stage 1 of the paper's fitting).

Layout of ``deep3d_model/epoch_latest.pth`` (FFHQ-UV ``RGB_Fitting/network/recon_deep3d.py``,
``ReconNetWrapper(net_recon='resnet50', use_last_fc=False)`` with HiFi3D++ dimensions): a dict
whose ``'net_recon'`` entry is the state dict of

* ``backbone.*``: a torchvision ResNet-50 without ``fc`` (``backbone.conv1.weight``,
  ``backbone.layer4.2.bn3.running_var``, ...), giving ``[B, 2048, 1, 1]``;
* ``final_layers.<i>``: seven 1x1 convolutions on that feature, concatenated in this order:

  | i | keys | out | meaning |
  |---|---|---|---|
  | 0 | ``final_layers.0.{weight,bias}`` | 532 | identity |
  | 1 | ``final_layers.1.0.{weight,bias}`` | 45 | expression (conv + ReLU: ``Sequential``) |
  | 2 | ``final_layers.2.{weight,bias}`` | 439 | texture (3DMM) |
  | 3 | ``final_layers.3.{weight,bias}`` | 3 | Euler angles (x, y, z), radians |
  | 4 | ``final_layers.4.{weight,bias}`` | 27 | SH lighting (3 x 9, RGB-major) |
  | 5 | ``final_layers.5.{weight,bias}`` | 2 | translation x, y |
  | 6 | ``final_layers.6.{weight,bias}`` | 1 | translation z |

  = 1049 coefficients: id 532 | exp 45 | tex 439 | angle 3 | gamma 27 | trans 3.

The expression head ends in a ReLU in the FFHQ-UV fork (``limit_exp_range``), so the state dict
key is ``final_layers.1.0.weight`` (not ``final_layers.1.weight`` as in upstream Deep3D).
The gamma output is raw: the initial ambient 0.8 is added by the lighting
(:mod:`ffhquv.render.sh`), as in FFHQ-UV's face model. Coordinates are Deep3D's (y up in
image space for landmarks); mapping them onto our camera is the fitter's job.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ffhquv.checkpoints import CheckpointError, load_state_dict_strict, strip_prefix, torch_load
from services.fitter.paper.resnet import resnet50

COEFF_SPLIT: dict[str, int] = {"id": 532, "exp": 45, "tex": 439, "angle": 3, "gamma": 27,
                               "trans": 3}
HEAD_DIMS = (532, 45, 439, 3, 27, 2, 1)
INPUT_SIZE = 224


class ReconNet(nn.Module):
    """ResNet-50 + seven 1x1 heads -> 1049 coefficients (keys as in the module doc)."""

    def __init__(self, head_dims: tuple[int, ...] = HEAD_DIMS):
        super().__init__()
        self.backbone = resnet50(num_classes=None)
        c = self.backbone.out_channels
        heads: list[nn.Module] = []
        for i, d in enumerate(head_dims):
            conv = nn.Conv2d(c, d, 1, bias=True)
            heads.append(nn.Sequential(conv, nn.ReLU()) if i == 1 else conv)
        self.final_layers = nn.ModuleList(heads)
        self.head_dims = head_dims

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, 224, 224]`` RGB in [0, 1] -> ``[B, 1049]``."""
        f = self.backbone(x)
        return torch.cat([layer(f) for layer in self.final_layers], dim=1).flatten(1)


def split_coeffs(coeffs: Tensor) -> dict[str, Tensor]:
    """``[B, 1049]`` -> ``{'id' [B,532], 'exp' [B,45], 'tex' [B,439], 'angle' [B,3],
    'gamma' [B,27], 'trans' [B,3]}``."""
    total = sum(COEFF_SPLIT.values())
    if coeffs.ndim != 2 or coeffs.shape[1] != total:
        raise ValueError(f"coefficients must be [B, {total}], got {tuple(coeffs.shape)}")
    return dict(zip(COEFF_SPLIT, torch.split(coeffs, list(COEFF_SPLIT.values()), dim=1),
                    strict=True))


class Deep3D(nn.Module):
    """The loaded regressor (eval mode, frozen)."""

    def __init__(self, net: ReconNet):
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Coefficients of aligned crops.

        Args:
            image: ``[B, 3, 224, 224]`` float RGB in [0, 1], the 224 fitting crop (row 0 at the
                top), i.e. ``crop.permute(2, 0, 1) / 255``.
        Returns:
            :func:`split_coeffs` of the output plus ``'coeffs'``: ``[B, 1049]``.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        out = self.net(image.to(self.device, torch.float32))
        d = split_coeffs(out)
        d["coeffs"] = out
        return d

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device


def load_deep3d(path: str | Path, device: str | torch.device = "cpu") -> Deep3D:
    """Load ``epoch_latest.pth`` (``{'net_recon': state_dict, ...}``; a bare state dict of
    the same keys, or one with a ``module.`` prefix, is accepted too).

    Raises:
        CheckpointError: unreadable, no ``net_recon``, or keys / shapes that differ (named).
    """
    path = Path(path)
    obj = torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name}: expected a dict with 'net_recon', got "
                              f"{type(obj).__name__}")
    if "net_recon" in obj:
        state = obj["net_recon"]
    elif any(isinstance(k, str) and k.startswith(("backbone.", "module.backbone.")) for k in obj):
        state = obj
    else:
        raise CheckpointError(f"{path.name}: no 'net_recon' entry; top-level keys: "
                              f"{', '.join(map(str, list(obj)[:8]))}")
    if isinstance(state, dict) and state and all(k.startswith("module.") for k in state):
        state = strip_prefix(state, "module.")
    net = ReconNet()
    load_state_dict_strict(net, state, f"{path.name}['net_recon']")
    return Deep3D(net.to(device))
