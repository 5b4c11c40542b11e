"""Paths and settings shared by every service, read from the environment.

| variable | default | meaning |
|---|---|---|
| ``FFHQUV_CACHE_DIR`` | ``<repo>/.cache`` (checkout), ``~/.cache/ffhquv`` | built models |
| ``FFHQUV_CHECKPOINTS_DIR`` | unset | the paper's ``checkpoints/`` folder (optional) |
| ``FFHQUV_TOPO_DIR`` | unset | the paper's ``topo_assets/`` folder (optional, for ``hifi3dpp``) |
| ``FFHQUV_LANDMARK_MODEL`` | the copy in ``face_recognition_models`` | dlib 68-point model file |
| ``FFHQUV_LOG_FORMAT`` | ``json`` for services, ``text`` for the CLI | log line format |
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    env = os.environ.get("FFHQUV_CACHE_DIR")
    if env:
        p = Path(env)
    elif (REPO_ROOT / "pyproject.toml").is_file():
        p = REPO_ROOT / ".cache"
    else:
        p = Path.home() / ".cache" / "ffhquv"
    p.mkdir(parents=True, exist_ok=True)
    return p


def checkpoints_dir() -> Path | None:
    env = os.environ.get("FFHQUV_CHECKPOINTS_DIR")
    return Path(env) if env else None


def topo_dir() -> Path | None:
    env = os.environ.get("FFHQUV_TOPO_DIR")
    return Path(env) if env else None


def landmark_model() -> Path | None:
    """The dlib 68-point shape predictor file to use instead of the one shipped in
    ``face_recognition_models`` (``FFHQUV_LANDMARK_MODEL``; e.g. a commercially licensed
    model: the shipped one was trained on iBUG 300-W, non-commercial terms)."""
    env = os.environ.get("FFHQUV_LANDMARK_MODEL")
    return Path(env).expanduser() if env else None


def reference_data_dir() -> Path:
    """The developers' shared FFHQ-UV reference data (may be absent)."""
    env = os.environ.get("FFHQUV_REFERENCE_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "ffhq-uv-reference"
