"""The step runner of services.fitter.graphs and the pre-rasterised render path it relies on,
on the CPU (the CUDA-graph replays themselves are checked in tests/test_graphs_gpu.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from ffhquv.errors import Cancelled, InvalidInput
from ffhquv.render.camera import Camera, rigid_transform
from ffhquv.render.raster import TorchRasterizer
from ffhquv.render.renderer import PREVIEW_GAMMA, MeshRenderer, RasterOptions, Surface
from ffhquv.render.shapes import uv_sphere
from services.fitter.graphs import StepRunner, compiled, graphs_enabled, make_adam, set_lr
from services.fitter.stage3 import _face_coverage


def _scene():
    v, tri, uv, uv_tri = uv_sphere(24, 48)
    world = rigid_transform(v[None], torch.tensor([[0.1, 0.4, 0.0]]), torch.zeros(1, 3))
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(1, 64, 64, 3, generator=g)
    return world, tri, uv, uv_tri, tex, PREVIEW_GAMMA[None].clone()


def _render_grads(r: MeshRenderer, pre_rasterised: bool):
    world, tri, uv, uv_tri, tex, gamma = _scene()
    w = world.clone().requires_grad_(True)
    t = tex.clone().requires_grad_(True)
    g = gamma.clone().requires_grad_(True)
    rast = r.rasterize(w, tri, 96) if pre_rasterised else None
    out = r.render(w, tri, Surface(uv=uv, uv_tri=uv_tri, texture=t), gamma=g, rast=rast,
                   options=RasterOptions(size=96))
    ((out.image - 0.5) ** 2).sum().backward()
    return out.image.detach(), w.grad, t.grad, g.grad


def test_pre_rasterised_render_matches_rasterising():
    r = MeshRenderer(Camera(), backend=TorchRasterizer("cpu"))
    a = _render_grads(r, False)
    b = _render_grads(r, True)
    # float noise: the vertex gradients are scatter-added by several threads, in an order
    # that varies from run to run (one of 3318 values once differed by 2.6e-6)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    assert a[1].abs().sum() > 0  # vertex gradients flow through the attached rasterisation


def test_pre_rasterised_render_checks_shape():
    r = MeshRenderer(Camera(), backend=TorchRasterizer("cpu"))
    world, tri, *_ = _scene()
    with pytest.raises(InvalidInput, match="rast must be"):
        r.render(world, tri, rast=torch.zeros(1, 32, 32, 4), options=RasterOptions(size=64))


def test_step_runner_runs_eagerly_on_cpu():
    x = torch.tensor([3.0, -2.0], requires_grad=True)
    opt = make_adam([{"params": [x], "lr": 0.1}], graph=False)
    assert isinstance(opt.param_groups[0]["lr"], float)
    seen: list[tuple[str, int]] = []

    def prepare(i: int) -> None:
        seen.append(("prepare", i))
        set_lr(opt, 0, 0.1 if i < 50 else 0.02)

    def body() -> dict[str, torch.Tensor]:
        loss = (x**2).sum()
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    losses: list[float] = []

    def on_step(i: int, terms: dict[str, torch.Tensor]) -> None:
        seen.append(("step", i))
        losses.append(float(terms["loss"]))

    # graph=True without CUDA runs eagerly: one code path on every device
    replayed = StepRunner(opt, body, prepare, graph=True).run(80, on_step=on_step)
    assert replayed == 0
    assert seen[:4] == [("prepare", 0), ("step", 0), ("prepare", 1), ("step", 1)]
    assert len(losses) == 80 and losses[-1] < 0.05 * losses[0]
    assert opt.param_groups[0]["lr"] == 0.02


def test_adam_steps_as_torch_optim_adam():
    """The fitter's Adam (torch's functional Adam without the Optimizer class) takes the
    same steps as ``torch.optim.Adam`` over several groups, with a group left without a
    gradient and a learning rate changed on the way."""
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(5, generator=g), torch.randn(3, 2, generator=g),
            torch.randn(4, generator=g)]
    targets = [torch.randn(t.shape, generator=g) for t in init]

    def run(make) -> list[torch.Tensor]:
        ps = [t.clone().requires_grad_(True) for t in init]
        opt = make([{"params": ps[:2], "lr": 0.1}, {"params": ps[2:], "lr": 0.03}])
        for i in range(40):
            if i == 20:
                opt.param_groups[0]["lr"] = 0.02
            opt.zero_grad(set_to_none=True)
            loss = sum(((p - t) ** 3).abs().sum() for p, t in zip(ps[:2], targets[:2], strict=True))
            if i % 3:  # the second group gets a gradient on two steps of three
                loss = loss + ((ps[2] - targets[2]) ** 2).sum()
            loss.backward()
            opt.step()
        return [p.detach() for p in ps]

    ours = run(lambda groups: make_adam(groups, graph=False))
    ref = run(torch.optim.Adam)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# a new interpreter's synthetic face ``face`` and CPU core ``core`` (for the tests that need
# a process of their own: what a fit imports, dynamo's global caches)
_SYNTHETIC_CORE = (
    "from services.fitter.core import FitterCore\n"
    "from services.fitter.synthetic import (build_synthetic_model, synthetic_face,\n"
    "                                       synthetic_texture)\n"
    "m = build_synthetic_model()\n"
    "c = m.zeros(1)\n"
    "c['gamma'][0, [0, 9, 18]] = 0.33\n"
    "face = synthetic_face(m, c, synthetic_texture(128), hires=256)[0]\n"
    "core = FitterCore(model=m, device='cpu', threads=1)\n")


def _last_line_of(code: str) -> str:
    """The last line ``code`` prints, run by a new interpreter from the repository root."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(root))
    return out.stdout.strip().splitlines()[-1]


def test_a_first_fit_does_not_import_torch_dynamo():
    """Constructing a torch.optim.Optimizer imports torch._dynamo (sympy, triton, FSDP) on
    first use, 1-5 s of a new process: a fit must not (a new interpreter, synthetic model)."""
    code = ("import sys, torch\n" + _SYNTHETIC_CORE
            + "core.fit(face, preset='fast', texture_size=128, want_intermediates=False)\n"
            "print('torch._dynamo' in sys.modules)\n")
    assert _last_line_of(code) == "False"


def test_step_runner_cancel():
    x = torch.zeros(1, requires_grad=True)
    opt = make_adam([{"params": [x], "lr": 0.1}], graph=False)
    stop = threading.Event()

    def body() -> dict[str, torch.Tensor]:
        (x - 1).square().sum().backward()
        opt.step()
        return {}

    def on_step(i: int, _terms) -> None:
        if i == 2:
            stop.set()

    with pytest.raises(Cancelled):
        StepRunner(opt, body, graph=False).run(10, on_step=on_step, cancel=stop)


def test_graphs_enabled(monkeypatch):
    assert not graphs_enabled("cpu")
    monkeypatch.setenv("FFHQUV_CUDA_GRAPHS", "1")
    assert graphs_enabled("cuda")  # a predicate on the request: no GPU needed to answer
    assert not graphs_enabled("cuda", TorchRasterizer("cpu"))  # not capturable

    class Capturable:
        capturable = True

    assert graphs_enabled("cuda", Capturable())
    monkeypatch.setenv("FFHQUV_CUDA_GRAPHS", "0")
    assert not graphs_enabled("cuda", Capturable())


def test_compiled_only_on_cuda_when_asked(monkeypatch):
    """FFHQUV_COMPILE fuses a step's arithmetic on CUDA only; elsewhere, or off (the default),
    the function itself runs (and torch._dynamo is not imported for it)."""

    def f(x: torch.Tensor) -> torch.Tensor:
        return x + 1

    monkeypatch.setenv("FFHQUV_COMPILE", "1")
    assert compiled(f, "cpu") is f
    monkeypatch.delenv("FFHQUV_COMPILE")
    assert compiled(f, "cuda") is f
    monkeypatch.setenv("FFHQUV_COMPILE", "1")
    g = compiled(f, "cuda")  # wrapped lazily: compiling waits for the first call on the GPU
    assert g is not f and callable(g)


def test_face_coverage_is_a_gather():
    rast = torch.zeros(1, 2, 3, 4)
    rast[0, 0, :, 3] = torch.tensor([1.0, 2.0, 3.0])  # triangles 0, 1, 2
    mask = torch.tensor([True, False, True])
    cov = _face_coverage(rast, mask)
    assert cov.shape == (1, 2, 3, 1)
    assert cov[0, 0, :, 0].tolist() == [1.0, 0.0, 1.0]
    assert cov[0, 1].sum() == 0  # empty pixels


def test_cached_programs_are_kept_per_owner_least_recently_used_first_out(monkeypatch):
    """``cached_program`` builds a program once per key and owner, hands the same one back,
    drops the least recently used beyond ``FFHQUV_CUDA_GRAPH_PROGRAMS`` and forgets an
    owner's programs with the owner."""
    import gc
    from dataclasses import dataclass

    from services.fitter.graphs import cached_program, cached_programs

    @dataclass
    class Owner:  # a face model stands here: a dataclass, not hashable
        n: int = 0

    monkeypatch.setenv("FFHQUV_CUDA_GRAPH_PROGRAMS", "2")
    a, b = Owner(), Owner()
    built: list[str] = []

    def get(owner: Owner, key: str) -> object:
        def build() -> object:
            built.append(key)
            return object()

        return cached_program(owner, key, build)

    p1 = get(a, "k1")
    assert get(a, "k1") is p1 and built == ["k1"]
    get(b, "k1")  # another owner: its own program
    assert built == ["k1", "k1"]
    get(a, "k2")
    get(a, "k1")  # k1 used last: k2 is the oldest now
    get(a, "k3")
    assert cached_programs(a) == 2
    assert get(a, "k1") is p1  # kept
    get(a, "k2")  # dropped before: built again
    assert built == ["k1", "k1", "k2", "k3", "k2"]
    del b
    gc.collect()
    assert cached_programs(a) == 2


def test_step_runner_eager_runs_again_from_reset_state():
    """A runner used for a second run (a kept program on the CPU path) takes the same steps
    from the same start once its optimiser is reset."""
    x = torch.zeros(3, requires_grad=True)
    opt = make_adam([{"params": [x], "lr": 0.1}], graph=False)
    target = torch.tensor([1.0, -2.0, 0.5])

    def body() -> dict[str, torch.Tensor]:
        loss = ((x - target) ** 2).sum()
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    runner = StepRunner(opt, body, graph=False)
    runner.run(30)
    first = x.detach().clone()
    with torch.no_grad():
        x.zero_()
    opt.reset()
    assert all(float(t.abs().sum()) == 0 for st in opt.state.values() for t in st.values())
    runner.run(30)
    torch.testing.assert_close(x.detach(), first, rtol=0, atol=0)


def test_no_collection_during_overlapping_captures():
    """The cyclic collector is off while any capture runs, and back on (if it was) only
    when the last overlapping one ends (``graphs._no_collection``, used by ``capturing``)."""
    import gc

    from services.fitter.graphs import _no_collection

    assert gc.isenabled()
    a, b = _no_collection(), _no_collection()
    a.__enter__()
    assert not gc.isenabled()
    b.__enter__()
    a.__exit__(None, None, None)
    assert not gc.isenabled()  # the other capture still runs
    b.__exit__(None, None, None)
    assert gc.isenabled()
    gc.disable()
    try:
        with _no_collection():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()


def test_compiled_steps_are_two_programs_for_every_batch_size():
    """With FFHQUV_COMPILE on, each compiled step function is compiled twice, for a batch of
    one and for every larger batch (the batch symbolic), not once per batch size (each was a
    compile of 12-160 s on a request). Counted on the host with a counting backend and
    graphs.compiled's own dynamo settings (a new interpreter: dynamo's caches are global)."""
    import ast

    code = ("import torch\n"
            "from torch._dynamo.testing import CompileCounter\n"
            "import services.fitter.graphs as g, services.fitter.stage1 as s1\n"
            "import services.fitter.stage3 as s3\n"
            "cnt = CompileCounter()\n"
            "def on_host(fn, device):\n"
            "    g.configure_dynamo()\n"
            "    return torch.compile(fn, backend=cnt)\n"
            "s1.compiled = s3.compiled = on_host\n"
            + _SYNTHETIC_CORE +
            "counts = []\n"
            "for b in (1, 2, 3, 4):\n"
            "    core.fit_batch([face] * b, preset='fast', texture_size=128,\n"
            "                   want_intermediates=False)\n"
            "    counts.append(cnt.frame_count)\n"
            "print(counts)\n")
    # stage 1's loss, stage 3's surface and losses: three for a batch of one, three more at
    # two, none after
    assert ast.literal_eval(_last_line_of(code)) == [3, 6, 6, 6]
