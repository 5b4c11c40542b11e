"""Gradient parity of the two rasteriser backends, op by op (needs CUDA and nvdiffrast).

For each scene (a bumpy sphere and the default head), raster size and texture (random noise or
smooth), the same inputs go through both backends and the gradients are compared by cosine:

* ``raster``: backward of ``rasterize`` (``d rast[..., :2] -> d pos``) for a random upstream
  gradient on the pixels where both backends picked the same triangle; ``raster_nosliver``
  the same without pixels of triangles under 0.5 px^2 on screen (their barycentrics are
  ill-conditioned); ``attach``: nvdiffrast ``attach_rast`` against nvdiffrast ``rasterize``.
* ``interp_attr`` / ``interp_rast``: backward of ``interpolate`` into the attributes / the
  barycentrics (both fed nvdiffrast's ``rast``).
* ``tex_tex`` / ``tex_uv``: backward of ``texture`` into the texels / the uv.
* ``aa_color`` / ``aa_pos``: backward of ``antialias`` into the colour / the clip positions.
* ``img_noaa`` / ``img_aa``: the whole :class:`MeshRenderer` image term (MSE to grey), vertex
  gradients, without / with antialiasing; ``img_same_rast``: with antialiasing, both backends
  differentiating nvdiffrast's rasterisation; ``img_gate`` / ``img_gate_same``: the same
  two with the renderer's sliver gate (``min_grad_area``, ``--gate`` px^2), as the fitter
  renders.
* ``fd_nv`` / ``fd_torch``: each backend's directional derivative of an interior-pixel image
  loss (vertex colours, no antialiasing, pixels 3 px away from any silhouette or occlusion
  boundary) divided by the central finite difference of that backend's own forward (1.0 =
  the gradient is right; one row per scene and size).

    python bench/render_parity.py [--sizes 224 512] [--json out.json]
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ffhquv.render.camera import Camera, rigid_transform, to_clip  # noqa: E402
from ffhquv.render.raster import TorchRasterizer, get_backend  # noqa: E402
from ffhquv.render.renderer import (  # noqa: E402
    PREVIEW_GAMMA,
    MeshRenderer,
    RasterOptions,
    Surface,
    sliver_pixels,
)
from ffhquv.render.shapes import uv_sphere  # noqa: E402


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-30))


def scenes(device: str):
    """``(name, world [2, N, 3], tri, uv, uv_tri)``."""
    v, tri, uv, uv_tri = uv_sphere(48, 96)
    bump = 1 + 0.05 * torch.sin(5 * v[:, :1]) * torch.cos(4 * v[:, 1:2])
    v = (v * bump)[None].repeat(2, 1, 1)
    angles = torch.tensor([[0.1, 0.3, 0.05], [-0.2, -0.5, 0.0]])
    trans = torch.tensor([[0.1, -0.05, 0.5], [-0.1, 0.1, 0.0]])
    out = [("sphere", rigid_transform(v, angles, trans), tri, uv, uv_tri)]
    try:
        from services.fitter.facemodel.base import FaceModel
        from services.fitter.facemodel.default import default_model_path

        path = default_model_path()
        if path.exists():
            m = FaceModel.load(path)
            hv = m.mean_shape[None].repeat(2, 1, 1)
            ha = torch.tensor([[0.05, 0.35, 0.0], [-0.1, -0.2, 0.05]])
            out.append(("head", rigid_transform(hv, ha, torch.zeros(2, 3)), m.tri, m.uv,
                        m.uv_tri))
    except Exception as err:  # noqa: BLE001
        print(f"(default head not available: {err})")
    return [(n, w.to(device), t.to(device), u.to(device), ut.to(device))
            for n, w, t, u, ut in out]


def texture(kind: str, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "noise":
        return torch.rand(1, 1024, 1024, 3, generator=g).to(device)
    ii, jj = torch.meshgrid(torch.linspace(0, 1, 1024), torch.linspace(0, 1, 1024),
                            indexing="ij")
    t = torch.stack([0.5 + 0.3 * torch.sin(6 * ii), 0.5 + 0.3 * torch.cos(5 * jj),
                     0.4 + 0.2 * ii * jj], -1)
    return t[None].to(device)


def op_parity(nv, tb, world, tri, uv, uv_tri, tex, size: int) -> dict[str, float]:
    dev = world.device
    cam = Camera().scaled(size)
    res = (size, size)
    tri32 = tri.int().contiguous()
    g = torch.Generator(device=dev).manual_seed(size)
    clip = to_clip(world, cam).contiguous()
    with torch.no_grad():
        r_nv = nv.rasterize(clip, tri32, res)
        r_tb = tb.rasterize(clip, tri32, res)
    t_nv, t_tb = r_nv[..., 3].long(), r_tb[..., 3].long()
    same = (t_nv == t_tb) & (t_nv > 0)
    cover = (t_nv > 0).float()[..., None]
    out: dict[str, float] = {"ids_agree": float(same.sum() / ((t_nv > 0) | (t_tb > 0)).sum())}

    def raster_grad(fn, dy):
        c = clip.detach().clone().requires_grad_(True)
        (fn(c) * dy).sum().backward()
        return c.grad

    dy = torch.randn(r_nv.shape, generator=g, device=dev)
    dy[..., 2:] = 0
    dy = dy * same[..., None]
    g_nv = raster_grad(lambda c: nv.rasterize(c, tri32, res), dy)
    g_tb = raster_grad(lambda c: tb.rasterize(c, tri32, res), dy)
    g_at = raster_grad(lambda c: nv.attach_rast(c, tri32, r_nv), dy)
    out["raster"] = cosine(g_nv, g_tb)
    out["attach"] = cosine(g_nv, g_at)
    keep = ~sliver_pixels(clip, tri32, r_nv, 0.5)
    dyk = dy * keep[..., None]
    out["raster_nosliver"] = cosine(raster_grad(lambda c: nv.rasterize(c, tri32, res), dyk),
                                    raster_grad(lambda c: tb.rasterize(c, tri32, res), dyk))
    out["sliver_px"] = float((~keep & (t_nv > 0)).sum())

    # interpolate (same rast for both)
    attr = torch.randn(world.shape[0], world.shape[1], 3, generator=g, device=dev)
    gi = torch.randn(*r_nv.shape[:3], 3, generator=g, device=dev) * cover
    grads = []
    for be in (nv, tb):
        a = attr.clone().requires_grad_(True)
        r = r_nv.clone().requires_grad_(True)
        (be.interpolate(a, r, tri32) * gi).sum().backward()
        grads.append((a.grad, r.grad[..., :2] * cover))
    out["interp_attr"] = cosine(grads[0][0], grads[1][0])
    out["interp_rast"] = cosine(grads[0][1], grads[1][1])

    # texture (same uv for both)
    from ffhquv.render.renderer import obj_uv_to_texture

    uvm = obj_uv_to_texture(uv.float()).contiguous()
    with torch.no_grad():
        uv_img = nv.interpolate(uvm, r_nv, uv_tri.int().contiguous())
    gt = torch.randn(*r_nv.shape[:3], 3, generator=g, device=dev) * cover
    grads = []
    for be in (nv, tb):
        t = tex.clone().requires_grad_(True)
        u = uv_img.clone().requires_grad_(True)
        (be.texture(t, u) * gt).sum().backward()
        grads.append((t.grad, u.grad * cover))
    out["tex_tex"] = cosine(grads[0][0], grads[1][0])
    out["tex_uv"] = cosine(grads[0][1], grads[1][1])

    # antialias (same rast for both)
    color = torch.rand(*r_nv.shape[:3], 3, generator=g, device=dev) * cover
    ga = torch.randn(color.shape, generator=g, device=dev)
    grads = []
    for be in (nv, tb):
        c = color.clone().requires_grad_(True)
        p = clip.detach().clone().requires_grad_(True)
        (be.antialias(c, r_nv, p, tri32) * ga).sum().backward()
        grads.append((c.grad, p.grad))
    out["aa_color"] = cosine(grads[0][0], grads[1][0])
    out["aa_pos"] = cosine(grads[0][1], grads[1][1])
    return out


def image_grad(be, world, tri, uv, uv_tri, tex, gamma, size, aa: bool,
               mask: torch.Tensor | None = None, rast: torch.Tensor | None = None,
               gate: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    r = MeshRenderer(Camera(), backend=be, device=world.device)
    w = world.clone().requires_grad_(True)
    o = r.render(w, tri, Surface(uv=uv, uv_tri=uv_tri, texture=tex), gamma=gamma, rast=rast,
                 options=RasterOptions(size=size, antialias=aa, min_grad_area=gate))
    err = (o.image - 0.5) ** 2
    if mask is not None:
        err = err * mask
    loss = err.sum()
    loss.backward()
    return loss.detach(), w.grad


def interior_mask(be, world, tri, size) -> torch.Tensor:
    """``[B, H, W, 1]``: pixels 3 px away from any silhouette or occlusion boundary (where a
    vertex move flips pixels between surfaces, which no interior gradient accounts for)."""
    r = MeshRenderer(Camera(), backend=be, device=world.device)
    with torch.no_grad():
        rast = r.rasterize(world, tri, size)
    cov = (rast[..., 3] > 0).float()[:, None]
    z = rast[..., 2][:, None]
    zmax = F.max_pool2d(torch.where(cov > 0, z, torch.full_like(z, -2.0)), 3, 1, 1)
    zmin = -F.max_pool2d(torch.where(cov > 0, -z, torch.full_like(z, -2.0)), 3, 1, 1)
    rng = (zmax - zmin) * cov
    smooth = (rng <= 4 * rng[cov > 0].median()).float() * cov
    # min-pool = erosion
    er = -F.max_pool2d(-smooth, 7, stride=1, padding=3)
    return er.permute(0, 2, 3, 1)


def fd_ratio(be, world, tri, gamma, size, mask, eps: float) -> float:
    """Directional derivative / central difference of an interior image loss. Shading with
    smooth per-vertex colours (a texture would jump at UV seams, which move with the
    vertices)."""
    g = torch.Generator(device=world.device).manual_seed(7)
    d = torch.randn(world.shape, generator=g, device=world.device)
    p = world.detach()
    va = torch.stack([0.5 + 0.3 * torch.sin(3 * p[..., 0]), 0.5 + 0.3 * torch.cos(2 * p[..., 1]),
                      0.5 + 0.2 * torch.sin(p[..., 0] + p[..., 1])], -1)
    r = MeshRenderer(Camera(), backend=be, device=world.device)

    def loss(w: torch.Tensor) -> torch.Tensor:
        o = r.render(w, tri, Surface(vertex_albedo=va), gamma=gamma,
                     options=RasterOptions(size=size, antialias=False))
        return (((o.image - 0.5) ** 2) * mask).sum()

    w = world.clone().requires_grad_(True)
    loss(w).backward()
    with torch.no_grad():
        fd = (float(loss(world + eps * d).double()) - float(loss(world - eps * d).double())) / (
            2 * eps)
    return float((w.grad * d).sum()) / fd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    ap.add_argument("--gate", type=float, default=0.5,
                    help="min_grad_area (px^2) of the img_gate columns")
    ap.add_argument("--eps", type=float, default=1e-3, help="finite-difference step (units)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--self-check", action="store_true",
                    help="compare the torch backend with itself on the CPU (tests this script)")
    args = ap.parse_args(argv)
    dev = "cpu" if args.self_check else "cuda"
    if not args.self_check and not torch.cuda.is_available():
        print("needs CUDA (nvdiffrast); --self-check runs on the CPU")
        return 2
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    nv = TorchRasterizer("cpu") if args.self_check else get_backend("cuda", prefer="nvdiffrast")
    tb = TorchRasterizer(dev)
    print(f"command: {command}\nhost: {platform.node()}, torch {torch.__version__}, "
          + (f"GPU {torch.cuda.get_device_name()}" if dev == "cuda" else "CPU self-check"))
    cols = ["ids_agree", "attach", "raster", "raster_nosliver", "sliver_px", "interp_attr",
            "interp_rast", "tex_tex", "tex_uv", "aa_color", "aa_pos", "img_noaa", "img_aa",
            "img_same_rast", "img_gate", "img_gate_same", "fd_nv", "fd_torch"]
    print(f"{'scene':<7} {'tex':<6} {'size':>4} " + " ".join(f"{c:>15}" for c in cols))
    rows = []
    t0 = time.perf_counter()
    for name, world, tri, uv, uv_tri in scenes(dev):
        gamma = PREVIEW_GAMMA[None].repeat(world.shape[0], 1).to(dev)
        for kind in ("noise", "smooth"):
            tex = texture(kind, dev)
            for size in args.sizes:
                row = {"scene": name, "texture": kind, "size": size}
                row.update(op_parity(nv, tb, world, tri, uv, uv_tri, tex, size))
                for key, aa in (("img_noaa", False), ("img_aa", True)):
                    row[key] = cosine(image_grad(nv, world, tri, uv, uv_tri, tex, gamma, size,
                                                 aa)[1],
                                      image_grad(tb, world, tri, uv, uv_tri, tex, gamma, size,
                                                 aa)[1])
                # the same pipeline on nvdiffrast's rasterisation (torch attaches its own
                # barycentric gradients to it): isolates the effect of the ~1 % of pixels
                # whose triangle the two rasterisers choose differently at ties
                r_nv = MeshRenderer(Camera(), backend=nv, device=dev).rasterize(world, tri, size)
                row["img_same_rast"] = cosine(
                    image_grad(nv, world, tri, uv, uv_tri, tex, gamma, size, True)[1],
                    image_grad(tb, world, tri, uv, uv_tri, tex, gamma, size, True,
                               rast=r_nv)[1])
                # with the renderer's sliver gate (min_grad_area, what the fitter uses)
                row["img_gate"] = cosine(
                    image_grad(nv, world, tri, uv, uv_tri, tex, gamma, size, True,
                               gate=args.gate)[1],
                    image_grad(tb, world, tri, uv, uv_tri, tex, gamma, size, True,
                               gate=args.gate)[1])
                row["img_gate_same"] = cosine(
                    image_grad(nv, world, tri, uv, uv_tri, tex, gamma, size, True,
                               gate=args.gate)[1],
                    image_grad(tb, world, tri, uv, uv_tri, tex, gamma, size, True,
                               rast=r_nv, gate=args.gate)[1])
                mask = interior_mask(nv, world, tri, size)
                for key, be in (("fd_nv", nv), ("fd_torch", tb)):
                    row[key] = (fd_ratio(be, world, tri, gamma, size, mask, args.eps)
                                if kind == "smooth" else float("nan"))
                rows.append(row)
                print(f"{name:<7} {kind:<6} {size:>4} "
                      + " ".join(f"{row[c]:>15.4f}" for c in cols), flush=True)
    print(f"({time.perf_counter() - t0:.1f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, "results": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
