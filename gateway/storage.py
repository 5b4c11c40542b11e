"""Artifact storage for the gateway.

:class:`ArtifactStore` is the interface (ready for an object store); :class:`LocalArtifactStore`
keeps each result in ``root/<result id>/`` on a local disk. A result is written into a hidden
temporary folder and renamed into place in one step, so a reader never sees a partially written
file; a size cap evicts the oldest results first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ffhquv import vocab
from ffhquv.errors import InvalidInput, NotFound, echo

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

# media types by suffix: the vocabulary's table and rule, not a copy
MEDIA_TYPES = vocab.MEDIA_TYPES
media_type = vocab.media_type


@dataclass(frozen=True)
class StoredArtifact:
    """Metadata of one stored file; ``id`` is ``<result id>/<name>``."""

    id: str
    name: str
    media_type: str
    size_bytes: int
    sha256: str


@dataclass
class StoredResult:
    result_id: str
    artifacts: list[StoredArtifact]
    meta: dict


def check_id(result_id: str) -> str:
    if not _SAFE_ID.match(result_id or ""):
        raise InvalidInput(
            "request_id must be 1-128 characters of letters, digits, '.', '_' or '-' and start "
            f"with a letter or digit; got {echo(result_id)}")
    return result_id


class ArtifactStore(ABC):
    """Where results live. Implementations must make :meth:`put` atomic per result."""

    @abstractmethod
    def put(self, result_id: str, files: dict[str, bytes], meta: dict) -> StoredResult: ...

    @abstractmethod
    def get_result(self, result_id: str) -> StoredResult | None: ...

    @abstractmethod
    def open_artifact(
        self, artifact_id: str
    ) -> tuple[StoredArtifact, Callable[[int], Iterator[bytes]]]:
        """Metadata and a reader ``chunks(size) -> Iterator[bytes]``; NotFound if unknown."""


def _write_synced(path: Path, data: bytes) -> None:
    """``data`` into a new file at ``path``, on the disk when this returns (fsync)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class LocalArtifactStore(ArtifactStore):
    """Results on a local directory with a total size cap (``max_bytes``; 0 = unlimited)."""

    INDEX = "index.json"
    RESCAN_EVERY = 256

    def __init__(self, root: Path, max_bytes: int = 0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # result id -> (mtime, bytes) of the stored results, for the size cap: one scan of the
        # folder, then kept up to date by put / evict (a scan per put stat()ed every file of
        # every result: 0.05 CPU s a photo under load, growing with the store); scanned
        # again every RESCAN_EVERY puts for what other processes did to the folder
        self._held: dict[str, tuple[float, int]] | None = None
        self._puts = 0
        self._cleanup_temp()

    def _cleanup_temp(self) -> None:
        for p in self.root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)

    def _dir(self, result_id: str) -> Path:
        return self.root / check_id(result_id)

    def put(self, result_id: str, files: dict[str, bytes], meta: dict) -> StoredResult:
        final = self._dir(result_id)
        for name in files:
            if not _SAFE_NAME.match(name):
                raise InvalidInput(f"artifact name not allowed: {echo(name)}")
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))

        def write(item: tuple[str, bytes]) -> StoredArtifact:
            name, data = item
            _write_synced(tmp / name, data)
            return StoredArtifact(id=f"{result_id}/{name}", name=name,
                                  media_type=media_type(name), size_bytes=len(data),
                                  sha256=hashlib.sha256(data).hexdigest())

        try:
            # each file written, hashed and synced on a thread of its own: the disk's journal
            # takes the syncs together (one after the other, 27 syncs of a photo's files
            # cost 0.15-0.4 s on cpu2's disk, together about what no sync costs)
            with ThreadPoolExecutor(max(1, min(8, len(files)))) as pool:
                arts = list(pool.map(write, sorted(files.items())))
            index = {"result_id": result_id, "created": time.time(), "meta": meta,
                     "artifacts": [a.__dict__ for a in arts]}
            index_text = json.dumps(index)
            _write_synced(tmp / self.INDEX, index_text.encode())
            size = sum(a.size_bytes for a in arts) + len(index_text.encode())
            with self._lock:
                if final.exists():
                    # Idempotent retry of the same id: keep the first complete result.
                    shutil.rmtree(tmp, ignore_errors=True)
                    existing = self.get_result(result_id)
                    assert existing is not None
                    return existing
                os.rename(tmp, final)
                self._evict(keep=result_id, size=size)
            return StoredResult(result_id, arts, meta)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def get_result(self, result_id: str) -> StoredResult | None:
        idx = self._dir(result_id) / self.INDEX
        if not idx.is_file():
            return None
        data = json.loads(idx.read_text())
        return StoredResult(result_id, [StoredArtifact(**a) for a in data["artifacts"]],
                            data.get("meta", {}))

    def open_artifact(
        self, artifact_id: str
    ) -> tuple[StoredArtifact, Callable[[int], Iterator[bytes]]]:
        rid, _, name = (artifact_id or "").partition("/")
        if not rid or not name or not _SAFE_ID.match(rid) or not _SAFE_NAME.match(name):
            raise NotFound(f"unknown artifact id {echo(artifact_id)}")
        res = self.get_result(rid)
        art = next((a for a in res.artifacts if a.name == name), None) if res else None
        if art is None:
            raise NotFound(f"unknown or expired artifact id {echo(artifact_id)}")
        path = self._dir(rid) / name
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError as e:
            raise NotFound(f"artifact {echo(artifact_id)} expired") from e

        def chunks(size: int = 1 << 20) -> Iterator[bytes]:
            with fh:
                while True:
                    b = fh.read(size)
                    if not b:
                        return
                    yield b

        return art, chunks

    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.glob("*/*") if f.is_file()
                   and not f.parent.name.startswith(".tmp-"))

    def _scan(self) -> dict[str, tuple[float, int]]:
        """``{result id: (mtime, bytes)}`` of every complete result in the folder."""
        held = {}
        for d in self.root.iterdir():
            try:
                if d.is_dir() and not d.name.startswith(".tmp-") and (d / self.INDEX).is_file():
                    held[d.name] = (d.stat().st_mtime,
                                    sum(f.stat().st_size for f in d.iterdir() if f.is_file()))
            except FileNotFoundError:  # evicted meanwhile by another process
                continue
        return held

    def _evict(self, keep: str, size: int) -> None:
        """Remove the oldest results (never ``keep``, just stored with ``size`` bytes) until
        the store holds at most ``max_bytes``. Called under ``_lock``."""
        if self.max_bytes <= 0:
            return
        self._puts += 1
        if self._held is None or self._puts % self.RESCAN_EVERY == 0:
            self._held = self._scan()
        else:
            self._held[keep] = (time.time(), size)
        total = sum(s for _, s in self._held.values())
        for name, (_, nbytes) in sorted(self._held.items(), key=lambda kv: (kv[1][0], kv[0])):
            if total <= self.max_bytes:
                break
            if name == keep:
                continue
            # Rename first so a concurrent reader sees either the whole result or none.
            trash = self.root / f".tmp-evict-{name}"
            try:
                os.rename(self.root / name, trash)
            except FileNotFoundError:  # gone already (another process sharing the folder)
                pass
            else:
                shutil.rmtree(trash, ignore_errors=True)
                log.info("evicted result", extra={"result_id": name, "bytes": nbytes})
            del self._held[name]
            total -= nbytes
