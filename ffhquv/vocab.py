"""The project's vocabulary: every name and default that more than one module knows, once.

Preset names, face-model names, devices, export formats, media types of output files, the
texture-size rule, the parse labels of the aligned face, and the maps between these names and
their protobuf enum values. CLI, gateway, servicers and cores import them from here; a test
(``tests/test_vocab.py``) fails on a stray string literal of a preset or face-model name
elsewhere.

The proto maps are built on first use (:func:`preset_by_proto` ...), so importing this module
does not import the generated stubs or grpc: cores that only need the names stay light.
"""

from __future__ import annotations

from enum import IntEnum
from functools import cache
from pathlib import PurePath

from ffhquv.errors import InvalidInput

# ---- fitting presets (hyper-parameters: services/fitter/presets.py) ---------------------------
PRESET_FAST = "fast"
PRESET_STANDARD = "standard"
PRESET_BEST = "best"
PRESETS: tuple[str, ...] = (PRESET_FAST, PRESET_STANDARD, PRESET_BEST)
DEFAULT_PRESET = PRESET_STANDARD

# ---- face models (implementations: services/fitter/facemodel/) --------------------------------
FACE_MODEL_DEFAULT = "default"   # built from anny on first use, cached on disk
FACE_MODEL_HIFI3DPP = "hifi3dpp"  # the paper's HiFi3D++ (needs FFHQUV_TOPO_DIR)
FACE_MODELS: tuple[str, ...] = (FACE_MODEL_DEFAULT, FACE_MODEL_HIFI3DPP)
DEFAULT_FACE_MODEL = FACE_MODEL_DEFAULT

# ---- devices ("auto": CUDA when present; ``cuda:N`` is accepted by the fitter core too) --------
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"

# ---- export formats (what each writes: protos/ffhquv/exporter/v1/exporter.proto) ---------------
FORMAT_INTERMEDIATES = "intermediates"  # the fitter's stage1_* / stage2_* / stage3_coeffs.*
EXPORT_FORMATS: tuple[str, ...] = ("obj", "glb", "blend", "preview", "turntable", "zip",
                                   FORMAT_INTERMEDIATES)
DEFAULT_EXPORT_FORMATS: frozenset[str] = frozenset({"obj", "glb", "blend", "preview", "zip",
                                                    FORMAT_INTERMEDIATES})
# units of the written mesh files ("" = GLB / .blend in metres, OBJ in the face model's units)
EXPORT_UNITS: tuple[str, ...] = ("m", "cm", "model")
# levels of Loop subdivision of the exported head (0 = as fitted, 1 = 4x the triangles)
SUBDIVISION_LEVELS: tuple[int, ...] = (0, 1)

# ---- media types of the files the services write, by suffix ----------------------------------
MEDIA_TYPES: dict[str, str] = {
    ".obj": "model/obj",
    ".mtl": "model/mtl",
    ".png": "image/png",
    ".gif": "image/gif",
    ".glb": "model/gltf-binary",
    ".blend": "application/x-blender",
    ".zip": "application/zip",
    ".json": "application/json",
    ".npy": "application/octet-stream",
    ".npz": "application/octet-stream",
    ".txt": "text/plain",
}
DEFAULT_MEDIA_TYPE = "application/octet-stream"


def media_type(name: str) -> str:
    """MIME type of an output file from its suffix (``application/octet-stream`` if unknown)."""
    return MEDIA_TYPES.get(PurePath(name).suffix.lower(), DEFAULT_MEDIA_TYPE)


# ---- texture sizes -----------------------------------------------------------------------------
# The rule: a texture side is a power of two in [TEXTURE_SIZE_MIN, TEXTURE_SIZE_MAX]; 0 (proto
# "unset") means TEXTURE_SIZE_DEFAULT. The fitter core enforces it for the head texture. The
# eyeball texture takes any side in the same range. The gateway narrows what it accepts from the
# public API to 256..2048 (gateway/orchestrator.py, listed in tests/test_vocab.py as pending).
TEXTURE_SIZE_DEFAULT = 1024
TEXTURE_SIZE_MIN = 64
TEXTURE_SIZE_MAX = 4096


def texture_size(size: int | None, *, what: str = "texture_size") -> int:
    """``size`` checked against the texture-size rule; 0 / None gives the default.

    Raises:
        InvalidInput: outside [64, 4096] or not a power of two.
    """
    s = int(size or 0) or TEXTURE_SIZE_DEFAULT
    if s < TEXTURE_SIZE_MIN or s > TEXTURE_SIZE_MAX or s & (s - 1):
        raise InvalidInput(f"{what} must be a power of two in [{TEXTURE_SIZE_MIN}, "
                           f"{TEXTURE_SIZE_MAX}], got {size}")
    return s


# ---- parse labels of the aligned face's parse mask ---------------------------------------------
class ParseLabel(IntEnum):
    """Values of the parse mask (``detector.v1.ParseLabel`` without the prefix)."""

    BACKGROUND = 0
    SKIN = 1
    BROWS = 2
    EYES = 3
    NOSE = 4
    LIPS = 5
    MOUTH = 6  # mouth interior


PARSE_SOURCE_LANDMARKS = "landmarks"  # parse mask drawn from the 68 landmarks
PARSE_SOURCE_BISENET = "bisenet"      # parse mask from the paper's BiSeNet


# ---- proto enum value <-> name -----------------------------------------------------------------
def _enum_map(enum, prefix: str, names: tuple[str, ...], unspecified: str | None) -> dict[int, str]:
    out = {enum.Value(prefix + n.upper()): n for n in names}
    if unspecified is not None:
        out[enum.Value(prefix + "UNSPECIFIED")] = unspecified
    return out


@cache
def preset_by_proto() -> dict[int, str]:
    """``common.v1.Preset`` value -> preset name (UNSPECIFIED -> the default preset)."""
    from ffhquv.pb import common_pb2

    return _enum_map(common_pb2.Preset, "PRESET_", PRESETS, DEFAULT_PRESET)


@cache
def device_by_proto() -> dict[int, str]:
    """``common.v1.Device`` value -> device name (UNSPECIFIED -> ``auto``)."""
    from ffhquv.pb import common_pb2

    return _enum_map(common_pb2.Device, "DEVICE_", DEVICES[1:], DEFAULT_DEVICE)


@cache
def format_by_proto() -> dict[int, str]:
    """``exporter.v1.ExportFormat`` value -> format name (UNSPECIFIED is not a format)."""
    from ffhquv.pb import exporter_pb2

    return _enum_map(exporter_pb2.ExportFormat, "EXPORT_FORMAT_", EXPORT_FORMATS, None)


def preset_to_proto(name: str) -> int:
    return {v: k for k, v in preset_by_proto().items() if k}[name]


def device_to_proto(name: str) -> int:
    """``auto`` -> UNSPECIFIED (the server's choice), ``cpu`` / ``cuda`` -> their values."""
    return {v: k for k, v in device_by_proto().items()}[name]


def format_to_proto(name: str) -> int:
    return {v: k for k, v in format_by_proto().items()}[name]
