"""Face models behind one interface (:class:`FaceModel`); :func:`load_face_model` picks one."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from ffhquv.vocab import DEFAULT_FACE_MODEL, FACE_MODEL_HIFI3DPP, FACE_MODELS
from services.fitter.facemodel.base import FaceModel

__all__ = ["FACE_MODELS", "FaceModel", "load_face_model"]

_CACHE: dict[tuple[str, str, str], FaceModel] = {}
_LOCK = threading.Lock()


def load_face_model(name: str = DEFAULT_FACE_MODEL, device: str | torch.device = "cpu",
                    topo_dir: Path | None = None) -> FaceModel:
    """The face model ``name`` on ``device``, cached in-process per (name, device, topo_dir).

    Args:
        name: ``"default"`` (built from anny on first use and cached on disk, see
            :func:`services.fitter.facemodel.default.ensure_default_model`) or ``"hifi3dpp"``
            (needs the paper's ``topo_assets/`` folder in ``topo_dir``).
        device: torch device of the model's tensors.
        topo_dir: folder holding ``hifi3dpp_model_info.mat`` and ``unwrap_1024_info.mat``.
    Raises:
        InvalidInput: unknown ``name``.
        PreconditionFailed: ``hifi3dpp`` without ``topo_dir`` or with files missing.
    """
    from ffhquv.errors import InvalidInput, PreconditionFailed

    if name not in FACE_MODELS:
        raise InvalidInput(f"unknown face model {name!r}; expected one of {', '.join(FACE_MODELS)}")
    dev = torch.device(device)
    key = (name, str(dev), str(topo_dir) if name == FACE_MODEL_HIFI3DPP else "")
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if name == DEFAULT_FACE_MODEL:
            from services.fitter.facemodel.default import ensure_default_model

            model = FaceModel.load(ensure_default_model(progress=False), device=dev)
        else:
            if topo_dir is None:
                raise PreconditionFailed(
                    "face model 'hifi3dpp' needs the paper's topo_assets/ folder "
                    "(hifi3dpp_model_info.mat, unwrap_1024_info.mat): pass --topo-dir or set "
                    "FFHQUV_TOPO_DIR")
            from services.fitter.facemodel.hifi3dpp import load_hifi3dpp

            model = load_hifi3dpp(Path(topo_dir), dev)
        _CACHE[key] = model
        return model
