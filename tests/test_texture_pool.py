"""services.fitter.texture.pool: Beside's work runs beside the caller, comes back in order,
raises what it raised, and leaves no thread behind."""

from __future__ import annotations

import os
import threading

import pytest

from services.fitter.texture.pool import Beside, per_photo


def _beside_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("beside")]


def test_beside_runs_while_the_caller_goes_on():
    gate = threading.Event()

    def work(i: int) -> int:
        assert gate.wait(30)  # held until the caller has gone on
        return i * i

    with Beside(work, 3) as side:
        gate.set()  # the caller's own step, after the work started
        assert [side.result(i) for i in range(3)] == [0, 1, 4]
    assert not _beside_threads()


def test_beside_raises_the_works_error_and_ends_its_threads():
    def work(i: int) -> int:
        if i == 1:
            raise ValueError("photo 1")
        return i

    with Beside(work, 2) as side:
        assert side.result(0) == 0
        with pytest.raises(ValueError, match="photo 1"):
            side.result(1)
    assert not _beside_threads()


def test_beside_left_by_an_error_drops_work_not_started():
    started: list[int] = []
    release = threading.Event()

    def work(i: int) -> int:
        started.append(i)
        assert release.wait(30)
        return i

    with pytest.raises(RuntimeError):
        with Beside(work, 64):
            # the running work is held until after the block's end has dropped the rest
            threading.Timer(0.2, release.set).start()
            raise RuntimeError("the caller's step failed")
    assert not _beside_threads()
    assert len(started) <= min(8, os.cpu_count() or 1)


def test_per_photo_keeps_the_order():
    assert per_photo(lambda i: i + 1, 5) == [1, 2, 3, 4, 5]
