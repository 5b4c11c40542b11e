"""Artifact storage: atomic results, idempotent puts, size-capped retention, safe ids."""

from __future__ import annotations

import threading

import pytest

from ffhquv.errors import InvalidInput, NotFound
from gateway.orchestrator import output_stem, validate_options
from gateway.security import check_bearer
from gateway.storage import LocalArtifactStore


def test_put_get_roundtrip(tmp_path):
    store = LocalArtifactStore(tmp_path)
    res = store.put("abc", {"a.png": b"x" * 10, "report.json": b"{}"}, {"k": 1})
    assert {a.name for a in res.artifacts} == {"a.png", "report.json"}
    again = store.get_result("abc")
    assert again is not None and again.meta == {"k": 1}
    art, chunks = store.open_artifact("abc/a.png")
    assert art.size_bytes == 10 and art.media_type == "image/png"
    assert b"".join(chunks(3)) == b"x" * 10
    assert not list(tmp_path.glob(".tmp-*"))


def test_second_put_keeps_first(tmp_path):
    store = LocalArtifactStore(tmp_path)
    store.put("id1", {"f.txt": b"first"}, {})
    store.put("id1", {"f.txt": b"second"}, {})
    _, chunks = store.open_artifact("id1/f.txt")
    assert b"".join(chunks(100)) == b"first"


def test_unknown_and_unsafe_ids(tmp_path):
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(NotFound):
        store.open_artifact("nope/x.png")
    with pytest.raises(NotFound):
        store.open_artifact("../etc/passwd")
    with pytest.raises(InvalidInput):
        store.put("../evil", {"a": b""}, {})
    with pytest.raises(InvalidInput):
        store.put("ok", {"../a": b""}, {})


def test_failed_put_leaves_nothing(tmp_path):
    store = LocalArtifactStore(tmp_path)

    class Boom(dict):
        def items(self):
            yield "a.txt", b"ok"
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.put("r1", Boom(), {})
    assert store.get_result("r1") is None
    assert [p.name for p in tmp_path.iterdir()] == []


def test_retention_evicts_oldest(tmp_path):
    import os
    import time

    store = LocalArtifactStore(tmp_path, max_bytes=2500)
    for i in range(4):
        store.put(f"r{i}", {"blob.bin": b"x" * 1000}, {})
        os.utime(tmp_path / f"r{i}", (time.time() + i, time.time() + i))
    kept = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert "r3" in kept and "r0" not in kept
    assert store.total_bytes() <= 2500 + 4096


def test_concurrent_readers_never_see_partial(tmp_path):
    store = LocalArtifactStore(tmp_path)
    payload = b"y" * 200_000
    seen_bad = []

    def reader():
        for _ in range(200):
            res = store.get_result("big")
            if res is not None:
                _, chunks = store.open_artifact("big/data.bin")
                if b"".join(chunks(65536)) != payload:
                    seen_bad.append(1)

    t = threading.Thread(target=reader)
    t.start()
    store.put("big", {"data.bin": payload}, {})
    t.join()
    assert not seen_bad


def test_output_stem_and_options():
    from ffhquv.pb import gateway_pb2

    assert output_stem("photos/IMG 0001.JPG") == "IMG_0001"
    assert output_stem("") == "face"
    assert output_stem("..\\..\\x.png") == "x"
    validate_options(gateway_pb2.Options())
    with pytest.raises(InvalidInput, match="face_model"):
        validate_options(gateway_pb2.Options(face_model="bfm"))
    with pytest.raises(InvalidInput, match="texture_size"):
        validate_options(gateway_pb2.Options(texture_size=100))


def test_bearer():
    assert check_bearer([], None)
    assert not check_bearer([], "s3cret")
    assert check_bearer([("authorization", "Bearer s3cret")], "s3cret")
    assert not check_bearer([("authorization", "Bearer nope")], "s3cret")
    assert not check_bearer([("authorization", "Basic s3cret")], "s3cret")


def test_retention_counts_results_of_an_earlier_process_and_survives_outside_removal(tmp_path):
    import os
    import shutil
    import time

    first = LocalArtifactStore(tmp_path)  # no cap: keeps all
    for i in range(3):
        first.put(f"old{i}", {"blob.bin": b"x" * 1000}, {})
        os.utime(tmp_path / f"old{i}", (time.time() - 100 + i, time.time() - 100 + i))
    store = LocalArtifactStore(tmp_path, max_bytes=3000)  # a restarted gateway: two fit
    shutil.rmtree(tmp_path / "old1")  # removed behind the store's back
    store.put("new", {"blob.bin": b"y" * 1000}, {})
    kept = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert kept == ["new", "old2"]  # the oldest went first, the new result stays
    store.put("newer", {"blob.bin": b"z" * 1000}, {})  # old2 from memory, no rescan
    kept = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert kept == ["new", "newer"]
    assert store.get_result("newer") is not None
