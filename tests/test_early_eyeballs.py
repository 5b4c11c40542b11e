"""The eyeballs start on the fit stream's geometry event (gateway/orchestrator.py,
``EarlyEyeballs``): the real service cores in this process (LocalBackends: dlib detection of a
real photo, the fitter with the default head model, the eyeball and exporter cores), with the
calls recorded in the order they happen."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ffhquv.errors import BackendUnavailable
from ffhquv.pb import common_pb2, exporter_pb2, gateway_pb2
from gateway.backends import LocalBackends
from gateway.orchestrator import Orchestrator


class Recording(LocalBackends):
    """LocalBackends that note each fit event and eyeball call in the order they happen; the fit
    stream waits after its geometry event until the eyeballs are asked for; ``shift`` moves
    the geometry event's first vertex (as a stream restarted on another replica might send a
    shape that is not the result's); ``fail_after_geometry`` breaks the stream after it."""

    def __init__(self, shift: float = 0.0, fail_after_geometry: bool = False):
        super().__init__(device="cpu")
        self.log: list[str] = []
        self.heads: list[np.ndarray] = []
        self.shift = shift
        self.fail_after_geometry = fail_after_geometry
        self.asked = asyncio.Event()

    async def fit(self, req, timeout):
        async for ev in super().fit(req, timeout):
            kind = ev.WhichOneof("event")
            if kind != "progress":
                self.log.append(kind)
            if kind == "geometry" and self.shift:
                ev.geometry.mesh_neutral.vertices[0] += self.shift
            yield ev
            if kind == "geometry":
                # the stream holds its next event until the eyeballs have been asked for: an
                # orchestrator that waited for the result first would time out here
                await asyncio.wait_for(self.asked.wait(), 60)
                if self.fail_after_geometry:
                    raise BackendUnavailable("fitter went away")

    async def place_eyeballs(self, req, timeout):
        self.log.append("eyeballs")
        self.asked.set()
        self.heads.append(np.asarray(req.head.vertices, np.float32))
        resp = await super().place_eyeballs(req, timeout)
        self.log.append("eyeballs done")
        return resp


def _request(photo: bytes) -> gateway_pb2.ReconstructRequest:
    return gateway_pb2.ReconstructRequest(
        request_id="early", image=common_pb2.Image(data=photo, filename="a.jpg"),
        options=gateway_pb2.Options(preset=common_pb2.PRESET_FAST, texture_size=256,
                                    device_hint=common_pb2.DEVICE_CPU,
                                    formats=[exporter_pb2.EXPORT_FORMAT_GLB]))


async def _run(backends: Recording, photo: bytes):
    try:
        out = await Orchestrator(backends).run(_request(photo))
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return out, pending
    finally:
        await backends.close()


def test_the_eyeballs_start_on_the_geometry_event(astronaut_jpg_bytes):
    """Placed once, from the geometry event, before the fit's result arrives; the shape they
    were placed on is the result's."""
    rec = Recording()
    out, pending = asyncio.run(_run(rec, astronaut_jpg_bytes))
    assert not pending
    assert rec.log.count("eyeballs") == 1
    assert rec.log.index("geometry") < rec.log.index("eyeballs") < rec.log.index("result")
    assert "a.glb" in out.files
    assert out.metrics["eyeballs_s"] > 0 and out.metrics["eyeballs_wait_s"] >= 0


def test_a_geometry_that_is_not_the_results_shape_is_placed_again(astronaut_jpg_bytes):
    rec = Recording(shift=0.5)
    out, pending = asyncio.run(_run(rec, astronaut_jpg_bytes))
    assert not pending
    assert rec.log.count("eyeballs") == 2
    assert rec.log.index("result") < len(rec.log) - 1 - rec.log[::-1].index("eyeballs")
    # the second placement used the result's head: the first vertex unshifted
    assert rec.heads[0][0] == pytest.approx(rec.heads[1][0] + 0.5)
    assert "a.glb" in out.files


def test_a_fit_that_fails_after_its_geometry_leaves_no_eyeball_task(astronaut_jpg_bytes):
    rec = Recording(fail_after_geometry=True)

    async def run():
        try:
            with pytest.raises(BackendUnavailable, match="went away"):
                await Orchestrator(rec).run(_request(astronaut_jpg_bytes))
            return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        finally:
            await rec.close()

    assert not asyncio.run(run())
    assert rec.log[:2] == ["geometry", "eyeballs"] and "result" not in rec.log
