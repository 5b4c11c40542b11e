"""The paper's optional checkpoint files: where they live, what replaces each one, strict loading.

The FFHQ-UV RGB fitting uses pretrained networks from a ``checkpoints/`` folder
(``FFHQUV_CHECKPOINTS_DIR`` / ``--checkpoints-dir``). Every one of them is optional here: a
missing file is reported once per process (a warning naming the file, its expected full path
and the default path served instead) and never crashes a service.

Files (relative to the checkpoints dir) and what is served without them:

* ``texgan``: ``texgan_model/texgan_ffhq_uv.pth``, StyleGAN2-ADA UV texture generator;
  default: photo unwrap + completion.
* ``deep3d``: ``deep3d_model/epoch_latest.pth``, Deep3D ResNet-50 coefficient regressor;
  default: landmark fit (PnP + Adam).
* ``arcface``: ``arcface_model/ms1mv3_arcface_r50_fp16_backbone.pth``, iresnet50;
  default: no identity loss.
* ``vgg``: ``vgg_model/vgg16.pt``, TorchScript VGG16 (LPIPS); default: no perceptual loss.
* ``parsing``: ``parsing_model/79999_iter.pth``, BiSeNet face parsing;
  default: landmark-polygon parse mask.
* ``parsing_resnet18``: ``resnet_model/resnet18-5c106cde.pth``, ImageNet ResNet-18 that only
  initialises BiSeNet before training; not needed at inference.
* ``dlib_landmarks``: ``dlib_model/shape_predictor_68_face_landmarks.dat``;
  default: the copy in the ``face_recognition_models`` package.

Loaders of the networks live next to the networks (``services/fitter/paper/``,
``services/detector/bisenet.py``); they share :func:`torch_load` and
:func:`load_state_dict_strict` from here so that a broken file always fails the same way: a
:class:`CheckpointError` naming the file and the offending keys.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ffhquv.errors import PreconditionFailed

log = logging.getLogger(__name__)

T = TypeVar("T")


class CheckpointError(PreconditionFailed):
    """A checkpoint file exists but cannot be used (unreadable, wrong layout, wrong keys)."""

    reason = "CHECKPOINT_UNUSABLE"


@dataclass(frozen=True)
class Checkpoint:
    """One optional file of the paper.

    Attributes:
        name: registry key.
        relpath: path relative to the checkpoints dir, as in the FFHQ-UV repository.
        network: what the file holds.
        default: what is used instead when the file is missing.
        needed: False for files the original code only needs for training-time
            initialisation (reported at INFO level, not as a warning).
    """

    name: str
    relpath: str
    network: str
    default: str
    needed: bool = True

    @property
    def filename(self) -> str:
        return Path(self.relpath).name


REGISTRY: dict[str, Checkpoint] = {c.name: c for c in [
    Checkpoint("texgan", "texgan_model/texgan_ffhq_uv.pth",
               "StyleGAN2-ADA UV texture generator",
               "using the default texture path (photo unwrap + completion)"),
    Checkpoint("deep3d", "deep3d_model/epoch_latest.pth",
               "Deep3D ResNet-50 coefficient regressor",
               "using the landmark-fit stage-1 initialisation (PnP + landmark optimisation)"),
    Checkpoint("arcface", "arcface_model/ms1mv3_arcface_r50_fp16_backbone.pth",
               "ArcFace iresnet50 identity network",
               "fitting without the identity (ArcFace) loss"),
    Checkpoint("vgg", "vgg_model/vgg16.pt", "TorchScript VGG16 perceptual (LPIPS) network",
               "fitting without the VGG perceptual loss"),
    Checkpoint("parsing", "parsing_model/79999_iter.pth", "BiSeNet face parser",
               "using the landmark-polygon parse mask"),
    Checkpoint("parsing_resnet18", "resnet_model/resnet18-5c106cde.pth",
               "ImageNet ResNet-18 (initialises BiSeNet's backbone before training)",
               "not needed: parsing_model/79999_iter.pth holds all BiSeNet weights",
               needed=False),
    Checkpoint("dlib_landmarks", "dlib_model/shape_predictor_68_face_landmarks.dat",
               "dlib 68-point shape predictor",
               "using the shape predictor of the face_recognition_models package"),
]}

_logged: set[tuple[str, str]] = set()
_log_lock = threading.Lock()


def _resolve_dir(checkpoints_dir: str | Path | None) -> Path | None:
    if checkpoints_dir is None:
        from ffhquv.config import checkpoints_dir as configured

        return configured()
    return Path(checkpoints_dir)


def _entry(name: str) -> Checkpoint:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown checkpoint {name!r}; known: {', '.join(REGISTRY)}") from None


def expected_path(name: str, checkpoints_dir: str | Path | None = None) -> Path | None:
    """The full path where ``name`` is looked for (None when no checkpoints dir is set)."""
    d = _resolve_dir(checkpoints_dir)
    return None if d is None else d / _entry(name).relpath


def find(name: str, checkpoints_dir: str | Path | None = None) -> Path | None:
    """The path of checkpoint ``name`` when it is a file, else None.

    Args:
        name: a key of :data:`REGISTRY` (KeyError otherwise).
        checkpoints_dir: the checkpoints folder; None reads ``FFHQUV_CHECKPOINTS_DIR``.
    """
    p = expected_path(name, checkpoints_dir)
    return p if p is not None and p.is_file() else None


def missing_message(name: str, checkpoints_dir: str | Path | None = None) -> str:
    """``"<file> not found at <full path>: <default>"`` for checkpoint ``name``."""
    c = _entry(name)
    p = expected_path(name, checkpoints_dir)
    if p is None:
        return (f"{c.filename} not found (no checkpoints directory set; FFHQUV_CHECKPOINTS_DIR "
                f"or --checkpoints-dir, expected at <checkpoints>/{c.relpath}): {c.default}")
    return f"{c.filename} not found at {p}: {c.default}"


def status(checkpoints_dir: str | Path | None = None, *, log_missing: bool = True
           ) -> dict[str, str]:
    """One message per registered checkpoint: ``"<file> found at <path>"`` or the message of
    :func:`missing_message`. Missing files are logged once per process and path (WARNING, INFO
    for files not needed at inference)."""
    out: dict[str, str] = {}
    for name, c in REGISTRY.items():
        p = find(name, checkpoints_dir)
        if p is not None:
            out[name] = f"{c.filename} found at {p}"
            continue
        msg = missing_message(name, checkpoints_dir)
        out[name] = msg
        if log_missing:
            _log_once(name, str(expected_path(name, checkpoints_dir)), msg,
                      logging.WARNING if c.needed else logging.INFO)
    return out


def _log_once(name: str, key: str, msg: str, level: int) -> None:
    with _log_lock:
        if (name, key) in _logged:
            return
        _logged.add((name, key))
    log.log(level, msg, extra={"checkpoint": name})


def load_optional(name: str, loader: Callable[[Path], T],
                  checkpoints_dir: str | Path | None = None) -> T | None:
    """``loader(path)`` when checkpoint ``name`` exists and loads, else None.

    A missing file or a :class:`CheckpointError` is logged once (WARNING) with the default
    path used instead; any other exception propagates (it is a bug, not a bad file).
    """
    p = find(name, checkpoints_dir)
    if p is None:
        c = _entry(name)
        _log_once(name, str(expected_path(name, checkpoints_dir)),
                  missing_message(name, checkpoints_dir),
                  logging.WARNING if c.needed else logging.INFO)
        return None
    try:
        return loader(p)
    except CheckpointError as e:
        _log_once(name, f"broken:{p}", f"{e}: {_entry(name).default}", logging.WARNING)
        return None


# ----------------------------------------------------------------------------- loading helpers

def torch_load(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True`` on CPU; CheckpointError when that fails
    (not a file, truncated, or a pickle of Python classes such as a StyleGAN ``.pkl``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.name}: no such file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unpickling failure means an unusable file
        first = e
    # Training checkpoints (e.g. Deep3D's optimizer / scheduler entries) may hold numpy
    # scalars: allow those data-only types, nothing else.
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        pass
    raise CheckpointError(f"{path.name}: cannot be read as a pickle-free torch checkpoint "
                          f"({path}): {type(first).__name__}: {first}") from first


def _numpy_safe_globals() -> list:
    import numpy as np

    out: list = [np.dtype, np.ndarray]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            m = __import__(mod, fromlist=["scalar", "_reconstruct"])
            out += [m.scalar, m._reconstruct]
            break
        except (ImportError, AttributeError):
            continue
    out += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool")]
    return out


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Drop ``prefix`` from every key that has it (e.g. ``module.`` of DataParallel)."""
    n = len(prefix)
    return {(k[n:] if k.startswith(prefix) else k): v for k, v in state.items()}


def load_state_dict_strict(module, state: Mapping[str, Any], what: str,
                           ignore: Callable[[str], bool] | None = None) -> None:
    """Load ``state`` into ``module`` requiring the exact key set and shapes.

    Args:
        module: a ``torch.nn.Module``.
        state: name -> tensor.
        what: the file label used in messages (e.g. ``"epoch_latest.pth"``).
        ignore: keys for which this returns True are neither required nor loaded
            (e.g. ``num_batches_tracked``).

    Raises:
        CheckpointError: naming missing keys, unexpected keys and shape mismatches (the first
            few of each, with counts).
    """
    import torch

    if not isinstance(state, Mapping):
        raise CheckpointError(f"{what}: expected a state dict (name -> tensor), "
                              f"got {type(state).__name__}")
    ignore = ignore or (lambda k: k.endswith("num_batches_tracked"))
    own = {k: v for k, v in module.state_dict().items() if not ignore(k)}
    given = {k: v for k, v in state.items() if not ignore(k)}
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    bad_type = [k for k in own if k in given and not isinstance(given[k], torch.Tensor)]
    shapes = [f"{k}: file {tuple(given[k].shape)} vs network {tuple(own[k].shape)}"
              for k in own if k in given and k not in bad_type
              and tuple(given[k].shape) != tuple(own[k].shape)]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("non-tensor values", bad_type), ("shape mismatches", shapes)):
        if items:
            head = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5
                                           else "")
            problems.append(f"{label}: {head}")
    if problems:
        raise CheckpointError(f"{what}: state dict does not match the network; "
                              + "; ".join(problems))
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(given[k].to(dtype=v.dtype))
