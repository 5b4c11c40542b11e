"""Stage 2: the UV texture with the shape fixed (default path, no checkpoints).

One concept per file:

- :mod:`.atlas`: the per-(model, size) texel maps (:class:`UVMaps`, :func:`uv_maps`): texel
  matrix, mirror texels, face zones, seam fade, seam pairs and the seam-step measure.
- :mod:`.lowpass`: low frequencies on the mesh surface (texels <-> vertices,
  :func:`mesh_lowpass`, :func:`symmetrize_lowfreq`, :func:`spread_offsets`).
- :mod:`.masks`: photo-space masks (:func:`photo_face_mask`, :func:`skin_colour_weight`; the
  whole head's skin, facial hair and hair once its pose is known: :func:`head_masks`).
- :mod:`.unwrap`: the photo sampled into UV through the fitted mesh (:func:`unwrap`).
- :mod:`.completion`: mirror + skin template + pyramid blend (:func:`complete_texture`); the
  albedo into [1 / 255, 1] with each texel's hue kept (:func:`fit_range`).
- :mod:`.hair`: hair over the skin (:func:`hair_weight`), the head of hair painted on the scalp
  (:func:`hair_layer`; its texture from the photo's hair, :func:`hair_swatch` laid over the
  head by :func:`swatch_on_head`, else :func:`strand_noise`).
- :mod:`.beard`: a seen full beard continued over the jaw's unseen sides
  (:func:`beard_layer`).
- :mod:`.source`: where the stage-2 texture comes from (:class:`TextureSource`,
  :class:`UnwrapTextureSource`).
- :mod:`.pool`: the per-photo thread pool of a batch's host work (:func:`per_photo`; work
  started beside the caller's next step: :class:`Beside`).
- :mod:`.hostcopy`: device tensors to host arrays through pinned memory (:func:`to_host`).

Texture arrays follow the project convention: ``[S, S, 3]`` with row 0 = ``v = 1``.
"""

from services.fitter.texture.atlas import (
    UVMaps,
    head_zones,
    host_array,
    seam_step,
    seam_texel_pairs,
    uv_maps,
)
from services.fitter.texture.beard import BeardInfo, beard_layer
from services.fitter.texture.completion import (
    LEVEL_MAX,
    CompletedTexture,
    complete_texture,
    coverage,
    fit_range,
    flatten_shading,
    laplacian_blend,
)
from services.fitter.texture.hair import (
    HAIR_RATIO,
    HairLayer,
    hair_layer,
    hair_swatch,
    hair_weight,
    strand_noise,
    swatch_on_head,
)
from services.fitter.texture.hostcopy import to_host
from services.fitter.texture.imageops import normalized_blur
from services.fitter.texture.lowpass import (
    mesh_lowpass,
    spread_offsets,
    symmetrize_lowfreq,
    to_texels,
    to_vertices,
)
from services.fitter.texture.masks import (
    PARSE_BG,
    PARSE_BROWS,
    PARSE_EYES,
    PARSE_LIPS,
    PARSE_MOUTH,
    PARSE_NOSE,
    PARSE_SKIN,
    TEXTURE_LABELS,
    HeadMasks,
    head_masks,
    photo_face_mask,
    skin_colour_weight,
)
from services.fitter.texture.pool import Beside, per_photo
from services.fitter.texture.source import TextureSource, UnwrapTextureSource
from services.fitter.texture.unwrap import COS_MIN, UnwrapResult, unwrap

__all__ = [
    "COS_MIN", "HAIR_RATIO", "LEVEL_MAX", "HairLayer", "HeadMasks", "hair_layer", "head_masks",
    "head_zones", "host_array", "BeardInfo", "beard_layer",
    "hair_swatch", "strand_noise", "swatch_on_head", "PARSE_BG", "PARSE_BROWS", "PARSE_EYES",
    "PARSE_LIPS",
    "PARSE_MOUTH", "PARSE_NOSE", "PARSE_SKIN", "TEXTURE_LABELS", "CompletedTexture",
    "TextureSource", "UVMaps", "UnwrapResult", "UnwrapTextureSource", "complete_texture",
    "coverage", "fit_range", "flatten_shading", "hair_weight", "laplacian_blend", "mesh_lowpass",
    "normalized_blur",
    "per_photo", "Beside", "photo_face_mask", "seam_step", "seam_texel_pairs",
    "skin_colour_weight",
    "spread_offsets", "symmetrize_lowfreq", "to_host", "to_texels", "to_vertices", "unwrap",
    "uv_maps",
]
