"""The paper's optional networks (FFHQ-UV checkpoints), in plain torch with official key layouts.

| module | network | checkpoint (``ffhquv.checkpoints`` name) |
|---|---|---|
| :mod:`.stylegan2` | StyleGAN2-ADA UV texture generator (:func:`load_texgan`) | ``texgan`` |
| :mod:`.deep3d` | Deep3D ResNet-50 coefficient regressor (:func:`load_deep3d`) | ``deep3d`` |
| :mod:`.arcface` | ArcFace iresnet50 + 5-point alignment (:func:`load_arcface`) | ``arcface`` |
| :mod:`.vgg` | TorchScript VGG16 LPIPS loss (:func:`load_vgg16`) | ``vgg`` |

BiSeNet face parsing lives with the detector (:mod:`services.detector.bisenet`).
:func:`load_paper_networks` loads whatever is present; each missing or unusable file is logged
once and left as None (the default path is served instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ffhquv.checkpoints import load_optional


@dataclass
class PaperNetworks:
    """Loaded networks; None where the checkpoint is missing or unusable."""

    texgan: Any = None   # stylegan2.TexGAN
    deep3d: Any = None   # deep3d.Deep3D
    arcface: Any = None  # arcface.ArcFace
    vgg: Any = None      # vgg.VGGPerceptual

    @property
    def paper_texture(self) -> bool:
        """True when the GAN texture search can run (the texture GAN is the one requirement;
        the identity and perceptual terms are dropped when their networks are absent)."""
        return self.texgan is not None


def load_paper_networks(checkpoints_dir: str | Path | None, device: str = "cpu",
                        w_stats_samples: int | None = None) -> PaperNetworks:
    """Load every paper network found under ``checkpoints_dir`` (None: the configured one).

    Args:
        w_stats_samples: z samples for the texture GAN's W statistics when its side file is
            absent (None: FFHQ-UV's 100000).
    """
    from services.fitter.paper.arcface import load_arcface
    from services.fitter.paper.deep3d import load_deep3d
    from services.fitter.paper.stylegan2 import W_STATS_SAMPLES, load_texgan
    from services.fitter.paper.vgg import load_vgg16

    n = W_STATS_SAMPLES if w_stats_samples is None else w_stats_samples
    return PaperNetworks(
        texgan=load_optional("texgan", lambda p: load_texgan(p, device, n), checkpoints_dir),
        deep3d=load_optional("deep3d", lambda p: load_deep3d(p, device), checkpoints_dir),
        arcface=load_optional("arcface", lambda p: load_arcface(p, device), checkpoints_dir),
        vgg=load_optional("vgg", lambda p: load_vgg16(p, device), checkpoints_dir),
    )
