"""Quality / speed presets of the three-stage fitting (``fast``, ``standard``, ``best``).

A preset fixes the number of optimisation steps, the learning rates, the raster size of the
photometric stage and the size of the texture optimised in stage 3. ``standard`` is sized to
run in well under a minute per photo on two CPU cores (see ``bench/fit.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ffhquv import vocab
from ffhquv.errors import InvalidInput


@dataclass(frozen=True)
class Preset:
    """Hyper-parameters of one fit.

    Attributes:
        name: preset name.
        stage1_steps: Adam steps of the landmark fit (pose, identity, expression).
        stage1_lr: Adam learning rate of stage 1 (coefficients are unit-variance).
        stage3_steps: Adam steps of the joint photometric optimisation (0 skips stage 3).
        stage3_lr: base learning rate of the shape / expression coefficients in stage 3.
        stage3_pose_lr: learning rate of the Euler angles (radians) and translation.
        stage3_gamma_lr: learning rate of the SH lighting coefficients.
        stage3_tex_lr: learning rate of the texel offsets (albedo units, 0..1).
        raster_size: side of the photometric raster of stage 3 (the camera is scaled to it).
        tex_opt_size: side of the texture optimised in stage 3 (finest pyramid level).
        tex_levels: sides of the Laplacian-pyramid levels of the texel offsets (each <= tex_opt).
        unwrap_depth_size: raster side of the depth render used for texel visibility.
        paper_stage2_steps / paper_stage3_steps: Adam steps of paper mode's latent search and
            joint fit (:mod:`services.fitter.paper_mode`; the reference: 100 / 200).
    """

    name: str
    stage1_steps: int
    stage1_lr: float
    stage3_steps: int
    stage3_lr: float
    stage3_pose_lr: float
    stage3_gamma_lr: float
    stage3_tex_lr: float
    raster_size: int
    tex_opt_size: int
    tex_levels: tuple[int, ...]
    unwrap_depth_size: int
    paper_stage2_steps: int = 100
    paper_stage3_steps: int = 200

    def as_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **kw) -> Preset:
        """A copy with some fields changed (tests and benchmarks use fewer steps)."""
        return replace(self, **kw)


PRESETS: dict[str, Preset] = {
    vocab.PRESET_FAST: Preset(
        name=vocab.PRESET_FAST,
        stage1_steps=150, stage1_lr=0.05, stage3_steps=30, stage3_lr=0.02,
        stage3_pose_lr=0.002, stage3_gamma_lr=0.01, stage3_tex_lr=0.01, raster_size=224,
        tex_opt_size=128, tex_levels=(32, 64, 128), unwrap_depth_size=448,
        paper_stage2_steps=50, paper_stage3_steps=100),
    vocab.PRESET_STANDARD: Preset(
        name=vocab.PRESET_STANDARD,
        stage1_steps=300, stage1_lr=0.05, stage3_steps=100, stage3_lr=0.02,
        stage3_pose_lr=0.002, stage3_gamma_lr=0.01, stage3_tex_lr=0.01, raster_size=224,
        tex_opt_size=256, tex_levels=(32, 64, 128, 256), unwrap_depth_size=512),
    vocab.PRESET_BEST: Preset(
        name=vocab.PRESET_BEST,
        stage1_steps=500, stage1_lr=0.05, stage3_steps=200, stage3_lr=0.02,
        stage3_pose_lr=0.002, stage3_gamma_lr=0.01, stage3_tex_lr=0.01, raster_size=224,
        tex_opt_size=512, tex_levels=(32, 64, 128, 256, 512), unwrap_depth_size=1024),
}


def get_preset(preset: str | Preset) -> Preset:
    """Look a preset up by name (``fast`` / ``standard`` / ``best``); pass Preset objects on.

    Raises:
        InvalidInput: unknown name.
    """
    if isinstance(preset, Preset):
        return preset
    key = (preset or vocab.DEFAULT_PRESET).lower()
    if key not in PRESETS:
        raise InvalidInput(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[key]
