"""The vocabulary (``ffhquv/vocab.py``) is defined once: its names match the protos, the modules
that used to define copies import it, and no stray literal of a preset or face-model name is
left in services/, gateway/, ffhquv/, ffhquv_cli/ or ffhquv_deploy/ (tests/ and bench/ are
not scanned)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from ffhquv import vocab
from ffhquv.errors import InvalidInput

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("services", "gateway", "ffhquv", "ffhquv_cli", "ffhquv_deploy")

# Names whose string literal may appear only in ffhquv/vocab.py.
PRESET_NAMES = {"fast", "standard", "best"}
FACE_MODEL_NAMES = {"default", "hifi3dpp"}

# Known exceptions: (file, literal) -> why. This list may only shrink: an entry that no longer
# matches a literal fails the test too, so remove it when the file is switched to the vocabulary.
ALLOWED: dict[tuple[str, str], str] = {
    # the same word in another vocabulary: where the iris colour came from ("photo" / "default")
    ("services/eyeball/iris.py", "default"): "iris_source value, not a face model",
    ("gateway/orchestrator.py", "default"): "iris_source shown in a progress message, not a "
                                            "face model",
}


def _python_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", *SCANNED], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    return sorted(f for f in out if f.endswith(".py") and f != "ffhquv/vocab.py")


def _stray_literals() -> dict[tuple[str, str], list[int]]:
    found: dict[tuple[str, str], list[int]] = {}
    for rel in _python_files():
        tree = ast.parse((ROOT / rel).read_text(), filename=rel)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and node.value in PRESET_NAMES | FACE_MODEL_NAMES):
                found.setdefault((rel, node.value), []).append(node.lineno)
    return found


def test_no_stray_preset_or_face_model_literals():
    found = _stray_literals()
    new = {k: v for k, v in found.items() if k not in ALLOWED}
    assert not new, ("preset / face-model names written out instead of imported from "
                     f"ffhquv.vocab (file, literal): lines {new}")
    stale = sorted(k for k in ALLOWED if k not in found)
    assert not stale, f"allow-list entries no longer needed, remove them: {stale}"


def test_proto_maps_cover_the_enums():
    from ffhquv.pb import common_pb2, detector_pb2, exporter_pb2

    assert set(vocab.preset_by_proto()) == set(common_pb2.Preset.values())
    assert set(vocab.preset_by_proto().values()) == set(vocab.PRESETS)
    assert vocab.preset_by_proto()[common_pb2.PRESET_UNSPECIFIED] == vocab.DEFAULT_PRESET
    assert set(vocab.device_by_proto()) == set(common_pb2.Device.values())
    assert set(vocab.device_by_proto().values()) == set(vocab.DEVICES)
    fmt_values = set(exporter_pb2.ExportFormat.values()) - {exporter_pb2.EXPORT_FORMAT_UNSPECIFIED}
    assert set(vocab.format_by_proto()) == fmt_values
    assert set(vocab.format_by_proto().values()) == set(vocab.EXPORT_FORMATS)
    for name in vocab.PRESETS:
        assert vocab.preset_by_proto()[vocab.preset_to_proto(name)] == name
    for name in vocab.EXPORT_FORMATS:
        assert vocab.format_by_proto()[vocab.format_to_proto(name)] == name
    assert vocab.device_to_proto("auto") == common_pb2.DEVICE_UNSPECIFIED
    assert vocab.device_to_proto("cuda") == common_pb2.DEVICE_CUDA
    # parse labels: the same values as detector.v1.ParseLabel
    assert {f"PARSE_LABEL_{p.name}": int(p) for p in vocab.ParseLabel} == dict(
        detector_pb2.ParseLabel.items())


def test_copies_are_the_vocabulary():
    from gateway import orchestrator
    from services.detector.masks import ParseLabel
    from services.exporter import core as exporter_core
    from services.exporter import servicer as exporter_servicer
    from services.fitter import servicer as fitter_servicer
    from services.fitter.facemodel import FACE_MODELS
    from services.fitter.presets import PRESETS
    from services.fitter.texture import PARSE_EYES, PARSE_MOUTH, PARSE_SKIN

    assert ParseLabel is vocab.ParseLabel
    assert (PARSE_SKIN, PARSE_EYES, PARSE_MOUTH) == (1, 3, 6)
    assert FACE_MODELS is vocab.FACE_MODELS and fitter_servicer.FACE_MODELS is vocab.FACE_MODELS
    assert tuple(PRESETS) == vocab.PRESETS
    assert all(p.name == k for k, p in PRESETS.items())
    assert fitter_servicer.MEDIA_TYPES is vocab.MEDIA_TYPES
    assert exporter_core.MEDIA_TYPES is vocab.MEDIA_TYPES
    assert exporter_core.FORMATS == set(vocab.EXPORT_FORMATS)
    assert exporter_servicer.FORMAT_NAMES == vocab.format_by_proto()
    assert orchestrator.FACE_MODELS is vocab.FACE_MODELS


def test_gateway_media_types_are_the_vocabulary():
    """The gateway stores artifacts under the vocabulary's media types, not a copy."""
    from gateway import storage

    assert storage.MEDIA_TYPES is vocab.MEDIA_TYPES
    assert storage.media_type is vocab.media_type
    assert storage.media_type("x/head.GLB") == "model/gltf-binary"


@pytest.mark.parametrize("size, want", [(0, 1024), (None, 1024), (64, 64), (4096, 4096),
                                        (256, 256)])
def test_texture_size_rule(size, want):
    assert vocab.texture_size(size) == want


@pytest.mark.parametrize("size", [32, 8192, 100, 1000, -4])
def test_texture_size_rule_rejects(size):
    with pytest.raises(InvalidInput, match="texture_size must be a power of two"):
        vocab.texture_size(size)


def test_media_type():
    assert vocab.media_type("a/b/stage3_uv.PNG") == "image/png"
    assert vocab.media_type("head.glb") == "model/gltf-binary"
    assert vocab.media_type("x.unknown") == "application/octet-stream"


def test_requested_formats_default_and_explicit():
    from ffhquv.pb import exporter_pb2, gateway_pb2
    from gateway.orchestrator import requested_formats

    assert requested_formats(gateway_pb2.Options()) == vocab.DEFAULT_EXPORT_FORMATS
    assert vocab.FORMAT_INTERMEDIATES in vocab.DEFAULT_EXPORT_FORMATS
    opts = gateway_pb2.Options(formats=[exporter_pb2.EXPORT_FORMAT_GLB,
                                        exporter_pb2.EXPORT_FORMAT_INTERMEDIATES])
    assert requested_formats(opts) == {"glb", vocab.FORMAT_INTERMEDIATES}
