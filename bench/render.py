"""Benchmark the differentiable renderer: forward and forward+backward per backend.

Times :meth:`ffhquv.render.renderer.MeshRenderer.render` (textured, SH-lit, antialiased; the
backward pass is an image MSE to vertices, texture and lighting) and the bare ``rasterize`` call,
for each raster size, batch size and available backend (torch on CPU; nvdiffrast and torch on
CUDA when present). The mesh is the cached default head model when it exists
(``services.fitter.facemodel``), else a UV sphere of the same size (~4.5k vertices, ~9k
triangles).

Two more columns time whole optimisation steps as the fitter runs them (render, image loss,
backward, Adam on vertices, texture and lighting; :mod:`services.fitter.graphs`): eagerly, and
on capturable backends (nvdiffrast) with the rasterisation eager and the rest replayed as one
CUDA graph.

    python bench/render.py [--sizes 224 512 1024] [--batches 1 8 32] [--steps 20]
                           [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ffhquv.render.camera import Camera, rigid_transform, to_clip  # noqa: E402
from ffhquv.render.raster import TorchRasterizer, get_backend  # noqa: E402
from ffhquv.render.renderer import (  # noqa: E402
    PREVIEW_GAMMA,
    MeshRenderer,
    RasterOptions,
    Surface,
)
from ffhquv.render.shapes import uv_sphere  # noqa: E402
from services.fitter.graphs import StepRunner, graphs_enabled, make_adam  # noqa: E402


def load_mesh() -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(name, vertices [N, 3] world, tri [T, 3], uv [M, 2], uv_tri [T, 3])``."""
    try:
        from services.fitter.facemodel.base import FaceModel
        from services.fitter.facemodel.default import default_model_path

        path = default_model_path()
        if path.exists():
            m = FaceModel.load(path)
            return f"default head ({path.name})", m.mean_shape, m.tri, m.uv, m.uv_tri
    except Exception as err:  # noqa: BLE001 - any problem: fall back to the sphere
        print(f"(default head model not loadable: {err}; using a sphere)")
    v, tri, uv, uv_tri = uv_sphere(48, 96)
    return "uv sphere 48x96", v * 1.2, tri, uv, uv_tri


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, repeat: int) -> float:
    """Best-of-``repeat`` seconds of ``fn()`` after one warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def step_time(r: MeshRenderer, world, tri, uv, uv_tri, tex, gamma, size: int, *, graph: bool,
              steps: int) -> float:
    """Seconds per optimisation step as the fitter runs them (:mod:`services.fitter.graphs`):
    render, image MSE, backward, Adam on vertices, texture and lighting; with ``graph`` the
    rasterisation runs eagerly and the rest replays one CUDA graph."""
    wv = world.clone().requires_grad_(True)
    tx = tex.clone().requires_grad_(True)
    gm = gamma.clone().requires_grad_(True)
    opt = make_adam([{"params": [wv, tx, gm], "lr": 1e-4}], graph=graph)
    static = (torch.zeros(world.shape[0], size, size, 4, device=world.device)
              if graph else None)

    def prepare(i: int) -> None:
        if static is not None:
            static.copy_(r.rasterize(wv, tri, size))

    def body() -> dict[str, torch.Tensor]:
        out = r.render(wv, tri, Surface(uv=uv, uv_tri=uv_tri, texture=tx), gamma=gm,
                       rast=static, options=RasterOptions(size=size))
        loss = (out.image - 0.5).square().mean()
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    marks: dict[int, float] = {}
    first = max(steps // 4, 4)

    def on_step(i: int, _terms) -> None:
        if i in (first, steps - 1):
            sync(world.device)
            marks[i] = time.perf_counter()

    StepRunner(opt, body, prepare, graph=graph).run(steps, on_step=on_step)
    return (marks[steps - 1] - marks[first]) / (steps - 1 - first)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 1024])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--backends", nargs="+", default=None,
                    help="subset of: torch-cpu torch-cuda nvdiffrast (default: all available)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--cpu-max-pixels", type=int, default=8 * 512 * 512,
                    help="skip CPU runs with batch * size^2 above this (memory / time)")
    ap.add_argument("--steps", type=int, default=20,
                    help="optimisation steps per step-time measurement")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    name, v, tri, uv, uv_tri = load_mesh()
    cands: list[tuple[str, torch.device]] = [("torch-cpu", torch.device("cpu"))]
    if torch.cuda.is_available():
        cands += [("nvdiffrast", torch.device("cuda")), ("torch-cuda", torch.device("cuda"))]
    if args.backends:
        cands = [c for c in cands if c[0] in args.backends]
    header = [
        f"command: {command}",
        f"mesh: {name}, {v.shape[0]} vertices, {tri.shape[0]} triangles; textured 1024^2, "
        "SH-lit, antialiased; backward = image MSE -> vertices, texture, gamma",
        f"host: {platform.node()} {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, {args.threads} CPU threads"
        + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
    ]
    print("\n".join(header))
    rows = []
    line = (f"{'backend':<11} {'size':>5} {'batch':>5} {'raster fwd ms':>14} "
            f"{'render fwd ms':>14} {'fwd+bwd ms':>11} {'step eager ms':>15} "
            f"{'step graph ms':>15}")
    print(line)
    print("-" * len(line))
    for bname, dev in cands:
        if bname == "nvdiffrast":
            try:
                be = get_backend(dev, prefer="nvdiffrast")
            except Exception as err:  # noqa: BLE001
                print(f"{bname:<11} unavailable: {err}")
                continue
        else:
            be = TorchRasterizer(dev)
        r = MeshRenderer(Camera(), backend=be, device=dev)
        trid = tri.to(dev)
        for size in args.sizes:
            for batch in args.batches:
                if dev.type == "cpu" and batch * size * size > args.cpu_max_pixels:
                    print(f"{bname:<11} {size:>5} {batch:>5}   skipped (over --cpu-max-pixels)")
                    rows.append({"backend": bname, "size": size, "batch": batch,
                                 "skipped": True})
                    continue
                g = torch.Generator().manual_seed(batch)
                angles = ((torch.rand(batch, 3, generator=g) - 0.5) * 0.6).to(dev)
                world = rigid_transform(v.to(dev)[None].expand(batch, -1, -1).contiguous(),
                                        angles, torch.zeros(batch, 3, device=dev))
                tex = torch.rand(1, 1024, 1024, 3, generator=g).to(dev)
                gamma = PREVIEW_GAMMA[None].repeat(batch, 1).to(dev)
                cam = Camera().scaled(size)
                clip = to_clip(world, cam).contiguous()
                tri32 = trid.int().contiguous()

                def raster(clip=clip, tri32=tri32, size=size, be=be):
                    with torch.no_grad():
                        be.rasterize(clip, tri32, (size, size))

                uvd, uvtd = uv.to(dev), uv_tri.to(dev)

                def fwd(world=world, tex=tex, gamma=gamma, size=size, r=r, trid=trid, uvd=uvd,
                        uvtd=uvtd):
                    with torch.no_grad():
                        r.render(world, trid, Surface(uv=uvd, uv_tri=uvtd, texture=tex),
                                 gamma=gamma, options=RasterOptions(size=size))

                def fwd_bwd(world=world, tex=tex, gamma=gamma, size=size, r=r, trid=trid,
                            uvd=uvd, uvtd=uvtd):
                    wv = world.clone().requires_grad_(True)
                    tx = tex.clone().requires_grad_(True)
                    gm = gamma.clone().requires_grad_(True)
                    out = r.render(wv, trid, Surface(uv=uvd, uv_tri=uvtd, texture=tx),
                                   gamma=gm, options=RasterOptions(size=size))
                    (out.image - 0.5).square().mean().backward()

                t_r = timeit(raster, dev, args.repeat)
                t_f = timeit(fwd, dev, args.repeat)
                t_fb = timeit(fwd_bwd, dev, args.repeat)
                t_se = step_time(r, world, trid, uvd, uvtd, tex, gamma, size, graph=False,
                                 steps=args.steps)
                t_sg = (step_time(r, world, trid, uvd, uvtd, tex, gamma, size, graph=True,
                                  steps=args.steps)
                        if graphs_enabled(dev, be) else float("nan"))
                print(f"{bname:<11} {size:>5} {batch:>5} {t_r * 1e3:>14.1f} {t_f * 1e3:>14.1f} "
                      f"{t_fb * 1e3:>11.1f} {t_se * 1e3:>15.1f} {t_sg * 1e3:>15.2f}", flush=True)
                rows.append({"backend": bname, "device": str(dev), "size": size,
                             "batch": batch, "raster_fwd_ms": t_r * 1e3,
                             "render_fwd_ms": t_f * 1e3, "render_fwd_bwd_ms": t_fb * 1e3,
                             "step_eager_ms": t_se * 1e3, "step_graph_ms": t_sg * 1e3})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, "mesh": name,
                                         "vertices": int(v.shape[0]),
                                         "triangles": int(tri.shape[0]),
                                         "header": header, "results": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
