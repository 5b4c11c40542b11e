"""Batching: a photo fitted in a batch gets its result alone (to float noise), and the fitter's
dynamic batcher coalesces concurrent requests, isolates a failing photo, honours each request's
cancellation and exports its batch sizes (CPU, synthetic model, ``fast``, small textures)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from ffhquv.errors import Cancelled, InvalidInput
from ffhquv.pb import common_pb2, fitter_pb2
from services.fitter.batcher import BatchKey, FitBatcher, FitJob
from services.fitter.core import FitterCore
from services.fitter.presets import get_preset
from services.fitter.servicer import FitterServicer, warm_batch_sizes
from services.fitter.synthetic import build_synthetic_model, synthetic_face, synthetic_texture

TEX = 128
PRESET = get_preset("fast").with_overrides(stage1_steps=60, stage3_steps=4)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return build_synthetic_model()


@pytest.fixture(scope="module")
def core(model):
    return FitterCore(model=model, device="cpu")


def _face(model, yaw: float, seed: int):
    c = model.zeros(1)
    g = torch.Generator().manual_seed(seed)
    c["id"] = torch.randn(1, model.id_dim, generator=g) * 0.5
    c["angles"] = torch.tensor([[0.05, yaw, 0.0]])
    c["gamma"][0, [0, 9, 18]] = 0.33
    return synthetic_face(model, c, synthetic_texture(TEX), hires=256)[0]


@pytest.fixture(scope="module")
def faces(model):
    return _face(model, 0.3, 1), _face(model, -0.2, 2)


def _key(core, preset=PRESET):
    return BatchKey(core_id=id(core), preset=preset, texture_size=TEX, seed=0,
                    want_intermediates=False)


def test_batch_result_equals_alone(core, faces):
    a, b = faces
    alone = core.fit(a, preset=PRESET, texture_size=TEX, want_intermediates=False)
    both = core.fit_batch([a, b], preset=PRESET, texture_size=TEX, want_intermediates=False)
    assert both[0].report["batch_size"] == 2 and alone.report["batch_size"] == 1
    for k, v in alone.coefficients.items():
        np.testing.assert_allclose(both[0].coefficients[k], v, atol=2e-4, rtol=1e-3,
                                   err_msg=k)
    diff = np.abs(both[0].uv_texture.astype(int) - alone.uv_texture.astype(int))
    assert np.percentile(diff, 99) <= 1 and diff.max() <= 3
    np.testing.assert_allclose(both[0].mesh_neutral.vertices, alone.mesh_neutral.vertices,
                               atol=1e-4)
    # and the batch-mate got its own fit, not a copy
    assert not np.allclose(both[1].coefficients["angles"], both[0].coefficients["angles"],
                           atol=1e-2)


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_batcher_coalesces_concurrent_requests(core, faces):
    batcher = FitBatcher(max_batch=2, max_delay_s=600.0)  # the batch starts once it is full
    n0 = _sample("ffhquv_fit_batch_size_count")
    s0 = _sample("ffhquv_fit_batch_size_sum")
    try:
        jobs = [FitJob(face=f, core=core, key=_key(core)) for f in faces]
        futs = [batcher.submit(j) for j in jobs]
        outs = [f.result(timeout=600) for f in futs]
    finally:
        batcher.close()
    assert [o.report["batch_size"] for o in outs] == [2, 2]
    assert _sample("ffhquv_fit_batch_size_count") == n0 + 1
    assert _sample("ffhquv_fit_batch_size_sum") == s0 + 2
    assert _sample("ffhquv_fit_queue_seconds_count") >= 2


def test_failing_photo_does_not_fail_its_batch_mates(core, faces):
    a, _ = faces
    bad = a.__class__(**{**a.__dict__, "crop_landmarks": np.zeros((68, 2), np.float32)})
    batcher = FitBatcher(max_batch=2, max_delay_s=600.0)
    try:
        good_job = FitJob(face=a, core=core, key=_key(core))
        bad_job = FitJob(face=bad, core=core, key=_key(core))
        f_good, f_bad = batcher.submit(good_job), batcher.submit(bad_job)
        out = f_good.result(timeout=600)
        with pytest.raises(InvalidInput, match="degenerate"):
            f_bad.result(timeout=600)
    finally:
        batcher.close()
    assert out.report["batch_size"] == 1  # refitted alone after the batch failed


def test_cancel_while_queued_and_other_keys_wait(core, faces):
    a, b = faces
    batcher = FitBatcher(max_batch=4, max_delay_s=0.0)
    batcher.set_ready(False)  # as while warming up: requests queue
    try:
        gone = FitJob(face=a, core=core, key=_key(core))
        other = FitJob(face=b, core=core, key=_key(core, get_preset("fast").with_overrides(
            stage1_steps=30, stage3_steps=2)))
        f_gone, f_other = batcher.submit(gone), batcher.submit(other)
        gone.cancel.set()
        batcher.set_ready(True)
        with pytest.raises(Cancelled):
            f_gone.result(timeout=600)
        assert f_other.result(timeout=600).report["batch_size"] == 1
    finally:
        batcher.close()


def test_servicer_batches_concurrent_fit_requests(model, faces):
    servicer = FitterServicer(device="cpu", max_batch=2, max_delay_s=600.0)
    servicer.add_core(FitterCore(model=model, device="cpu"), face_model="default")

    def fit(face, rid):
        req = fitter_pb2.FitRequest(request_id=rid, face=face.to_proto(),
                                    preset=common_pb2.PRESET_FAST,
                                    device=common_pb2.DEVICE_CPU, texture_size=TEX)
        evs = list(servicer.events(req, threading.Event()))
        return evs[-1].result

    try:
        with ThreadPoolExecutor(2) as ex:
            results = list(ex.map(fit, faces, ("a", "b")))
    finally:
        servicer.close()
    assert [r.request_id for r in results] == ["a", "b"]
    import json

    assert [json.loads(r.report_json)["batch_size"] for r in results] == [2, 2]
    assert all(r.uv_texture_png.startswith(b"\x89PNG") for r in results)


def test_cli_batch_size_default():
    from ffhquv_cli.commands import fit_batch_size

    assert fit_batch_size(0, "cpu") == 1
    assert fit_batch_size(5, "cpu") == 5


@pytest.mark.parametrize(("photos", "want"), [(1, (1, 0.0)), (3, (3, 1.0)), (12, (8, 1.0))])
def test_cli_batch_no_larger_than_its_photos(tmp_path, monkeypatch, photos, want):
    """``ffhquv fit`` never asks for a batch larger than its photos: the batcher would wait
    ``max_delay_s`` for batch-mates that cannot come (one cold photo on CUDA: a second)."""
    import gateway.backends
    from ffhquv_cli.main import main

    seen = {}

    class Stop(Exception):
        pass

    def record(self, *args, max_batch=None, max_delay_s=None, **kwargs):
        seen.update(max_batch=max_batch, max_delay_s=max_delay_s)
        raise Stop

    monkeypatch.setattr(gateway.backends.LocalBackends, "__init__", record)
    for i in range(photos):
        (tmp_path / f"p{i}.png").write_bytes(b"not read before the backends start")
    with pytest.raises(Stop):
        main(["fit", str(tmp_path), "-o", str(tmp_path / "out"), "--batch-size", "8",
              "--workers", "1"])
    assert (seen["max_batch"], seen["max_delay_s"]) == want


def test_close_stops_the_workers():
    """close() ends the worker threads before it returns: a worker that ran torch work and
    outlives the interpreter can abort ``ffhquv fit`` in C++ teardown (seen: exit code -6,
    "terminate called without an active exception", 3 of 10 runs under load before)."""
    batcher = FitBatcher(max_batch=1, max_delay_s=0.0, workers=2)
    assert all(t.is_alive() for t in batcher._threads)
    batcher.close()
    assert not any(t.is_alive() for t in batcher._threads)


def test_warm_fits_a_batch_of_two_too_when_compiling(monkeypatch):
    """With torch.compile on, a warming fitter also fits a batch of two (the program every
    larger batch reuses), so no request waits for a compile; without it, one photo."""
    monkeypatch.delenv("FFHQUV_COMPILE", raising=False)
    assert warm_batch_sizes(8) == (1,)
    monkeypatch.setenv("FFHQUV_COMPILE", "1")
    assert warm_batch_sizes(8) == (1, 2)
    assert warm_batch_sizes(1) == (1,)
