"""What the stages of one fit exchange: named bundles instead of long parameter lists.

Like pytorch3d's ``Fragments``, each is a small dataclass that one step produces and the next
reads:

- :class:`FitContext`: the fixed setting of a fit (face model, camera, rasteriser backend,
  preset, texture size, progress / cancel) and the stage timings, written by :func:`timed`.
- :class:`PhotoBatch`: the B aligned photos as tensors on the fit device.
- :class:`Stage2Result` / :class:`StagesResult`: the texture after stage 2, and everything
  stages 2 and 3 hand to the outputs (textures, final texture, coefficients, losses).

The default path (:mod:`services.fitter.core`) and paper mode
(:mod:`services.fitter.paper_mode`) both run their stages 2 and 3 as a
:class:`StagePlan`; the core times each stage with :func:`timed`, the stages never do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from ffhquv.render.camera import Camera
from services.fitter.facemodel.base import FaceModel
from services.fitter.presets import Preset

if TYPE_CHECKING:
    from services.fitter.texture import CompletedTexture

Progress = Callable[[str, float, str], None]


@dataclass
class FitContext:
    """The fixed setting of one (batched) fit, shared by every stage.

    Attributes:
        model: the face model on the fit device.
        cam: the 224 fitting camera.
        backend: the rasteriser backend (:mod:`ffhquv.render.raster`).
        renderer: the :class:`ffhquv.render.renderer.MeshRenderer` of ``cam`` on ``backend``,
            one per fit (backends cache per-topology data by tensor identity).
        preset: steps, learning rates, sizes (:class:`services.fitter.presets.Preset`).
        tex_size: side S of the output UV texture.
        progress: ``progress(stage, fraction, message)``; raises
            :class:`ffhquv.errors.Cancelled` once ``cancel`` is set.
        cancel: the fit's cancel event (stages also check it every optimisation step).
        times: seconds per stage (``stage1``, ``stage2``, ``stage3``, ``outputs``), written by
            :func:`timed`.
        on_geometry: ``on_geometry(i, geometry)``, called on the fit's thread once per photo
            ``i`` when its shape is final, before the outputs' host work
            (:class:`services.fitter.core.FitGeometry`); None = nobody listens.
    """

    model: FaceModel
    cam: Camera
    backend: Any
    renderer: Any
    preset: Preset
    tex_size: int
    progress: Progress
    cancel: threading.Event | None = None
    times: dict[str, float] = field(default_factory=dict)
    on_geometry: Callable[[int, Any], None] | None = None


@dataclass
class PhotoBatch:
    """The photos of one fit, on the fit device.

    Attributes:
        lm: ``float32 [B, 68, 2]`` crop landmarks (224 pixels, centres at integers).
        photo: ``float32 [B, 224, 224, 3]`` aligned crops in [0, 1].
        hires: ``float32 [B, Sh, Sh, 3]`` high-resolution crops in [0, 1] (one common Sh).
        mask: ``float32 [B, 224, 224, 1]`` photo face mask
            (:func:`services.fitter.texture.photo_face_mask`).
        skin: ``float32 [B, 224, 224, 1]`` ``mask`` on the parse skin label only.
        parse: ``uint8 [B, 224, 224]`` the detector's ParseLabel maps.
        skin_prob: ``uint8 [B, 224, 224]`` the detector's skin probability (0..255).
    """

    lm: Tensor
    photo: Tensor
    hires: Tensor
    mask: Tensor
    skin: Tensor
    parse: Tensor | None = None
    skin_prob: Tensor | None = None


@dataclass
class Stage2Result:
    """The stage-2 texture.

    Attributes:
        textures: B :class:`services.fitter.texture.CompletedTexture` at ``tex_size``.
        losses: per-photo stage-2 loss terms ``{name: [B]}`` (paper mode's latent search).
        latent: paper mode's ``[B, L, Z]`` latent that stage 3 starts from (None otherwise).
    """

    textures: list[CompletedTexture]
    losses: dict[str, Tensor] = field(default_factory=dict)
    latent: Tensor | None = None


@dataclass
class StagesResult:
    """What stages 2 and 3 hand to the outputs.

    Attributes:
        textures: the stage-2 textures (:class:`Stage2Result`).
        final: ``float32 [B, S, S, 3]`` final albedo texture in [1/255, 1].
        coeffs: final ``id, exp, angles, trans, gamma`` ``[B, ...]``.
        losses: per-photo stage-3 loss terms ``{name: [B]}`` (None without stage 3).
        latents: paper mode's ``{"z": [B, L, Z], "w_plus": [B, L, W]}`` numpy float32.
        graph_steps: stage-3 steps replayed as CUDA graphs.
        level_scale: per photo, the factor that put the final texture at the photo's skin
            level (``services.fitter.core.photo_level``); None where it was not applied.
        lit_scale: per photo, the further factor that shows a face lit from one side at its
            lit side's brightness (its light dimmed by as much); None where not applied.
    """

    textures: list[CompletedTexture]
    final: Tensor
    coeffs: dict[str, Tensor]
    losses: dict[str, Any] | None = None
    latents: dict[str, Any] | None = None
    graph_steps: int = 0
    level_scale: list[float] | None = None
    lit_scale: list[float] | None = None


class StagePlan(Protocol):
    """Stages 2 and 3 of one path (default or paper mode)."""

    def stage2(self, ctx: FitContext, photos: PhotoBatch,
               coeffs: dict[str, Tensor]) -> Stage2Result:
        """The texture for the fixed stage-1 geometry."""
        ...

    def stage3(self, ctx: FitContext, photos: PhotoBatch, coeffs: dict[str, Tensor],
               s2: Stage2Result) -> StagesResult:
        """The joint refinement and the final texture."""
        ...


@contextmanager
def timed(ctx: FitContext, name: str) -> Iterator[None]:
    """Record the seconds the block took as ``ctx.times[name]`` (when it completes); under
    torch.profiler the block is a range of that name (``bench/fit.py --profile``)."""
    t0 = time.perf_counter()
    with torch.profiler.record_function(name):
        yield
    ctx.times[name] = time.perf_counter() - t0
