"""Files of the cache directory (``<FFHQUV_CACHE_DIR>``, :func:`ffhquv.config.cache_dir`):
what a new process would otherwise build again (the UV atlas and what derives from it, the
eyeball texture's layers, dlib's face detector).

A cache file is written whole or not at all (:func:`ffhquv.objfile.atomic_write`: processes
that start together may write the same file), and a cache that cannot be written (a read-only
image in k8s) or read (a damaged file: built again and replaced) costs the build, never the
request. Keys, formats and what to build stay with their users.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ffhquv.objfile import atomic_write

log = logging.getLogger(__name__)


def write_atomically(path: Path, write: Callable[[Path], None], what: str) -> bool:
    """:func:`ffhquv.objfile.atomic_write` of the cache file ``path`` (its folder made first);
    False (logged, nothing left behind) when it cannot be written.

    Args:
        path: the file. write: writes the whole file at the path given.
        what: what the file holds, for the log.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
        return True
    except (OSError, RuntimeError) as e:  # RuntimeError: dlib's own writers
        log.info(f"{what} cache not written (built again by each new process)",
                 extra={"path": str(path), "error": str(e)})
        return False


def save_arrays(path: Path, arrays: dict[str, np.ndarray], what: str) -> bool:
    """:func:`write_atomically` of an uncompressed ``.npz`` of ``arrays``."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return write_atomically(path, write, what)


def load_arrays(path: Path, what: str) -> dict[str, np.ndarray] | None:
    """The arrays of the ``.npz`` cache file ``path``; None when it is absent or cannot be
    read (logged: the caller builds them again and saves them over it)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError) as e:
        log.warning(f"{what} cache unreadable, building again",
                    extra={"path": str(path), "error": str(e)})
        return None
