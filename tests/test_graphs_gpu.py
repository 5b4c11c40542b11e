"""CUDA-graph replay of the fitter's steps on a GPU (run through the device tool):

    python -m pytest tests/test_graphs_gpu.py -q -s -m gpu

The graph path must give the fit the eager path gives (up to the order of atomic additions in
nvdiffrast's kernels), and must actually replay."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from ffhquv.render.camera import Camera
from ffhquv.render.raster import get_backend
from ffhquv.render.renderer import MeshRenderer, RasterOptions, Surface
from services.fitter.core import FitterCore
from services.fitter.graphs import StepRunner, make_adam
from services.fitter.presets import get_preset
from services.fitter.synthetic import build_synthetic_model, synthetic_face, synthetic_texture

pytestmark = pytest.mark.gpu


def test_attach_rast_matches_rasterize_on_nvdiffrast():
    from tests.test_graphs import _scene

    be = get_backend("cuda", prefer="nvdiffrast")
    r = MeshRenderer(Camera(), backend=be, device="cuda")
    res = []
    for pre in (False, True):
        world, tri, uv, uv_tri, tex, gamma = (x.cuda() for x in _scene())
        w = world.clone().requires_grad_(True)
        rast = r.rasterize(w, tri, 224) if pre else None
        out = r.render(w, tri, Surface(uv=uv, uv_tri=uv_tri, texture=tex), gamma=gamma,
                       rast=rast, options=RasterOptions(size=224))
        ((out.image - 0.5) ** 2).sum().backward()
        res.append((out.image.detach(), w.grad))
    torch.testing.assert_close(res[0][0], res[1][0])
    cos = float((res[0][1] * res[1][1]).sum() / (res[0][1].norm() * res[1][1].norm()))
    assert cos > 0.9999, cos


def test_step_runner_replays_and_matches_eager():
    def solve(graph: bool) -> tuple[torch.Tensor, int]:
        torch.manual_seed(0)
        a = torch.randn(64, 64, device="cuda")
        b = torch.randn(64, device="cuda")
        x = torch.zeros(64, device="cuda", requires_grad=True)
        opt = make_adam([{"params": [x], "lr": 0.05}], graph=graph)

        def body():
            loss = ((a @ x - b) ** 2).mean()
            loss.backward()
            opt.step()
            return {"loss": loss.detach()}

        n = StepRunner(opt, body, graph=graph).run(200)
        return x.detach(), n

    xe, ne = solve(False)
    xg, ng = solve(True)
    assert ne == 0 and ng == 197
    torch.testing.assert_close(xe, xg, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def synthetic():
    model = build_synthetic_model()
    c = model.zeros(1)
    g = torch.Generator().manual_seed(3)
    c["id"] = torch.randn(1, model.id_dim, generator=g) * 0.5
    c["angles"] = torch.tensor([[0.08, 0.45, -0.05]])
    c["trans"] = torch.tensor([[0.05, -0.08, 0.2]])
    c["gamma"][0, [0, 9, 18]] = 0.33
    face, _ = synthetic_face(model, c, synthetic_texture(256), hires=512)
    return model, face


def test_fit_with_graphs_matches_eager(synthetic, monkeypatch):
    model, face = synthetic
    preset = get_preset("standard")
    res = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("FFHQUV_CUDA_GRAPHS", mode)
        core = FitterCore(model=model, device="cuda")
        core.fit(face, preset=preset, texture_size=256)  # warm-up (plugin, caches)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = core.fit(face, preset=preset, texture_size=256)
        res[mode] = (out, time.perf_counter() - t0)
    (eager, te), (graph, tg) = res["0"], res["1"]
    print(f"\nstandard fit of a synthetic face on CUDA: eager {te:.2f} s, graphs {tg:.2f} s; "
          f"graph steps {graph.report['cuda_graph_steps']}; landmark error "
          f"{eager.metrics['landmark_error_px']:.3f} / {graph.metrics['landmark_error_px']:.3f} "
          f"px, PSNR {eager.metrics['psnr_masked']:.2f} / {graph.metrics['psnr_masked']:.2f} dB")
    assert eager.report["cuda_graph_steps"] == {"stage1": 0, "stage3": 0}
    # the second fit replays every step of the graphs the first one recorded
    steps = graph.report["cuda_graph_steps"]
    assert steps["stage1"] == preset.stage1_steps
    assert steps["stage3"] == preset.stage3_steps
    assert abs(graph.metrics["landmark_error_px"] - eager.metrics["landmark_error_px"]) < 0.1
    assert abs(graph.metrics["psnr_masked"] - eager.metrics["psnr_masked"]) < 0.3


def test_concurrent_fits_on_one_gpu(synthetic, monkeypatch):
    """Two fitter cores (say two face models served by one process) asked to fit at the same
    time on one GPU: the fits are serialised per GPU (shared nvdiffrast context; a graph
    capture must not overlap another thread's cuBLAS work), both replay their steps and equal
    a fit made alone."""
    import threading

    model, face = synthetic
    monkeypatch.setenv("FFHQUV_CUDA_GRAPHS", "1")
    preset = get_preset("fast")
    alone = FitterCore(model=model, device="cuda").fit(face, preset=preset, texture_size=256)
    cores = [FitterCore(model=model, device="cuda") for _ in range(2)]
    outs: dict[int, object] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(2):
                outs[k] = cores[k].fit(face, preset=preset, texture_size=256)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for out in outs.values():
        print(f"\nconcurrent fit: graph steps {out.report['cuda_graph_steps']}, landmark error "
              f"{out.metrics['landmark_error_px']:.3f} px (alone "
              f"{alone.metrics['landmark_error_px']:.3f})")
        assert out.report["cuda_graph_steps"]["stage3"] > 0
        assert abs(out.metrics["landmark_error_px"] - alone.metrics["landmark_error_px"]) < 0.1
        assert abs(out.metrics["psnr_masked"] - alone.metrics["psnr_masked"]) < 0.3


def test_fits_reuse_their_pinned_host_buffers(synthetic, monkeypatch):
    """A graph capture does not release torch's pinned host cache (``capturing``): from the
    third fit on, a fit's host copies reuse the pinned buffers of the fits before it."""
    from services.fitter.graphs import capturing  # noqa: F401  (the capture under test)

    model, face = synthetic
    monkeypatch.setenv("FFHQUV_CUDA_GRAPHS", "1")
    core = FitterCore(model=model, device="cuda")
    for _ in range(2):
        core.fit(face, preset="fast", texture_size=256)
    before = torch.cuda.host_memory_stats()
    out = core.fit(face, preset="fast", texture_size=256)
    after = torch.cuda.host_memory_stats()
    print(f"\npinned host buffers of a fit: allocated "
          f"{after['num_host_alloc'] - before['num_host_alloc']}, freed "
          f"{after['num_host_free'] - before['num_host_free']}")
    assert out.report["cuda_graph_steps"]["stage3"] > 0
    assert after["num_host_free"] == before["num_host_free"]
    assert after["num_host_alloc"] == before["num_host_alloc"]


def test_later_fits_replay_the_first_fits_graphs(synthetic, monkeypatch):
    """The graphs of a fit are kept (``cached_program``): the first fit of a batch size
    warms up and records, later fits of that size replay every step and give the first
    fit's result; another batch size gets programs of its own; the device memory a fit
    leaves allocated does not grow from fit to fit."""
    from services.fitter.graphs import cached_programs

    model, face = synthetic
    monkeypatch.setenv("FFHQUV_CUDA_GRAPHS", "1")
    preset = get_preset("fast")
    core = FitterCore(model=model, device="cuda")
    first = core.fit(face, preset=preset, texture_size=256)
    assert first.report["cuda_graph_steps"] == {"stage1": preset.stage1_steps - 3,
                                                "stage3": preset.stage3_steps - 3}
    assert cached_programs(core.model) == 2  # stage 1 and stage 3 of batch 1
    outs, mem = [], []
    for _ in range(3):
        outs.append(core.fit(face, preset=preset, texture_size=256))
        torch.cuda.synchronize()
        mem.append(torch.cuda.memory_allocated())
    pair = core.fit_batch([face, face], preset=preset, texture_size=256)
    assert cached_programs(core.model) == 4
    again = core.fit_batch([face, face], preset=preset, texture_size=256)
    print(f"\nkept graphs: landmark error {first.metrics['landmark_error_px']:.4f} first, "
          f"{[round(o.metrics['landmark_error_px'], 4) for o in outs]} replayed; PSNR "
          f"{first.metrics['psnr_masked']:.3f} / "
          f"{[round(o.metrics['psnr_masked'], 3) for o in outs]}; allocated {mem}")
    for o in [*outs, *pair, *again]:
        assert o.report["cuda_graph_steps"]["stage3"] >= preset.stage3_steps - 3
        assert abs(o.metrics["landmark_error_px"] - first.metrics["landmark_error_px"]) < 0.05
        assert abs(o.metrics["psnr_masked"] - first.metrics["psnr_masked"]) < 0.1
    for o in outs:
        assert o.report["cuda_graph_steps"] == {"stage1": preset.stage1_steps,
                                                "stage3": preset.stage3_steps}
    assert again[0].report["cuda_graph_steps"]["stage3"] == preset.stage3_steps
    # replays of the same graphs on the same inputs: the same numbers (up to the order of
    # nvdiffrast's atomic additions)
    np.testing.assert_allclose(outs[2].coefficients["id"], outs[1].coefficients["id"],
                               rtol=1e-3, atol=1e-3)
    assert mem[2] <= mem[1] + (1 << 20), mem


def test_a_cancelled_fit_leaves_a_kept_program_usable(synthetic, monkeypatch):
    """A fit cancelled half-way through stage 3 leaves its program's tensors mid-way; the
    next fit loads its own inputs and resets the optimiser, so it equals a fit never
    interrupted."""
    import threading

    from ffhquv.errors import Cancelled

    model, face = synthetic
    monkeypatch.setenv("FFHQUV_CUDA_GRAPHS", "1")
    preset = get_preset("fast")
    core = FitterCore(model=model, device="cuda")
    core.fit(face, preset=preset, texture_size=256)
    ref = core.fit(face, preset=preset, texture_size=256)
    stop = threading.Event()

    def progress(stage: str, frac: float, _msg: str) -> None:
        if stage == "stage3" and 0 < frac < 1:
            stop.set()

    with pytest.raises(Cancelled):
        core.fit(face, preset=preset, texture_size=256, progress=progress, cancel=stop)
    out = core.fit(face, preset=preset, texture_size=256)
    assert out.report["cuda_graph_steps"] == ref.report["cuda_graph_steps"]
    np.testing.assert_allclose(out.coefficients["id"], ref.coefficients["id"],
                               rtol=1e-3, atol=1e-3)
    diff = np.abs(out.uv_texture.astype(np.int16) - ref.uv_texture.astype(np.int16))
    print(f"\nafter a cancelled fit: texture differs by {diff.mean():.4f} levels on average "
          f"(max {diff.max()}), landmark error {out.metrics['landmark_error_px']:.4f} / "
          f"{ref.metrics['landmark_error_px']:.4f} px")
    assert diff.mean() < 0.05
    assert abs(out.metrics["landmark_error_px"] - ref.metrics["landmark_error_px"]) < 0.01
