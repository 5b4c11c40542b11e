"""Paper mode (FFHQ-UV networks) end to end: per-stage time of one full-size fit.

    python bench/paper_fit.py [--device cuda] [--json PATH] [--out DIR] [--face PATH.npz]
                              [--topo-dir DIR] [--small] [--steps2 100] [--steps3 200]

Everything is made here, offline, in a temporary folder: random-weight checkpoints in the
official layouts (texture GAN 1024 x 1024, Deep3D ResNet-50, ArcFace iresnet50 (fp16 file),
TorchScript VGG16 LPIPS) and, unless ``--topo-dir`` is given, synthetic HiFi3D++ ``topo_assets``
(on the real topology when ``teaser_1/mesh_head.obj`` of the reference data is present, with
the paper's basis sizes 532 / 45). The face is rendered from the synthetic model (known pose)
or read from an :class:`AlignedFace` ``.npz`` (``--face``); no detector, no dlib data.

Deep3D's random trunk is kept but its heads are zeroed with biases set to the synthetic face's
coefficients, so stage 1 starts from the regressor (as with the real network) and the landmark
stage refines it. With random weights the texture is noise: this measures time and memory, not
quality. ``--small`` uses tiny networks (64 px GAN, narrow VGG) for a quick CPU smoke run.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, table, write_json  # noqa: E402

SMALL_GAN = dict(z_dim=64, w_dim=64, img_resolution=64, channel_base=1024, channel_max=64)


def _scaled_init(net: torch.nn.Module, seed: int = 0) -> None:
    """Random weights that keep activations finite through deep ResNets: convolutions
    N(0, 0.5 / sqrt(fan_in)), non-trivial BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 0.5 / math.sqrt(m.weight[0].numel()), generator=g)
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)


def _save(root: Path, rel: str, obj) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, p)
    return p


def write_random_checkpoints(root: str | Path, *, small: bool = False,
                             networks: tuple[str, ...] = ("texgan", "deep3d", "arcface", "vgg"),
                             deep3d_coeffs: dict[str, np.ndarray] | None = None,
                             w_stats_samples: int = 2000, seed: int = 0,
                             device: str | torch.device = "cpu") -> Path:
    """Write random-weight checkpoints in the official layouts under ``root``.

    Args:
        root: the checkpoints folder (``texgan_model/``, ``deep3d_model/``, ...).
        small: a 64 px texture GAN and a width/8 VGG (the loaders accept any such size);
            Deep3D, ArcFace and BiSeNet have fixed official sizes either way.
        networks: any of ``texgan, deep3d, arcface, vgg, parsing``.
        deep3d_coeffs: optional ``id / exp / angles / trans / gamma`` 1-D arrays: Deep3D's heads
            are then zeroed with these as biases (a regressor that returns them for any image).
        w_stats_samples: the texture GAN's W-statistics side file is written from this many
            mapped z (the loader would use 100000).
        device: where the W statistics are computed.
    Returns:
        ``root``.
    """
    root = Path(root)
    torch.manual_seed(seed)
    if "texgan" in networks:
        from services.fitter.paper import stylegan2 as sg

        cfg = sg.GeneratorConfig(**SMALL_GAN) if small else sg.GeneratorConfig()
        G = sg.Generator(cfg)
        with torch.no_grad():
            for p in G.parameters():
                if p.ndim <= 1:
                    p.add_(torch.randn_like(p) * 0.1)
        path = _save(root, "texgan_model/texgan_ffhq_uv.pth", G.state_dict())
        avg, std = sg.compute_w_stats(G.to(device), w_stats_samples)
        torch.save({"w_avg": avg, "w_std": std}, sg.w_stats_path(path))
    if "deep3d" in networks:
        from services.fitter.paper import deep3d as d3

        net = d3.ReconNet()
        _scaled_init(net, seed)
        if deep3d_coeffs is not None:
            order = [("id", 0), ("exp", 1), ("tex", 2), ("angles", 3), ("gamma", 4),
                     ("trans_xy", 5), ("trans_z", 6)]
            with torch.no_grad():
                for name, i in order:
                    layer = net.final_layers[i]
                    conv = layer[0] if isinstance(layer, torch.nn.Sequential) else layer
                    conv.weight.zero_()
                    conv.bias.zero_()
                    if name == "trans_xy":
                        v = np.asarray(deep3d_coeffs["trans"], np.float32)[:2]
                    elif name == "trans_z":
                        v = np.asarray(deep3d_coeffs["trans"], np.float32)[2:3]
                    else:
                        v = np.asarray(deep3d_coeffs.get(name, []), np.float32).reshape(-1)
                    v = v[:conv.bias.shape[0]]
                    conv.bias[:len(v)] = torch.from_numpy(v)
        _save(root, "deep3d_model/epoch_latest.pth", {"net_recon": net.state_dict(), "epoch": 20})
    if "arcface" in networks:
        from services.fitter.paper import arcface as af

        net = af.iresnet50()
        _scaled_init(net, seed + 1)
        half = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
        _save(root, "arcface_model/ms1mv3_arcface_r50_fp16_backbone.pth", half)
    if "vgg" in networks:
        import warnings

        from services.fitter.paper import vgg as vg

        (root / "vgg_model").mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(vg.LpipsVGG16(width=8 if small else 1).eval())
        torch.jit.save(scripted, str(root / "vgg_model" / "vgg16.pt"))
    if "parsing" in networks:
        from services.detector.bisenet import N_CLASSES, BiSeNet

        net = BiSeNet(N_CLASSES)
        _scaled_init(net, seed + 2)
        _save(root, "parsing_model/79999_iter.pth", net.state_dict())
    return root


def synthetic_hifi3dpp_face(model, hires: int = 1024, yaw: float = 0.25):
    """An :class:`AlignedFace` rendered from ``model`` (zero shape, ``yaw`` radians) and its
    coefficients as 1-D numpy arrays (for :func:`write_random_checkpoints`)."""
    from services.fitter.synthetic import synthetic_face, synthetic_texture

    c = model.zeros(1)
    c["angles"] = torch.tensor([[0.0, yaw, 0.0]], device=model.device)
    face, _ = synthetic_face(model, c, synthetic_texture(512), hires=hires)
    return face, {k: v[0].detach().cpu().numpy() for k, v in c.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--topo-dir", default=None, help="real or prepared topo_assets (optional)")
    ap.add_argument("--face", default=None, help="AlignedFace .npz (default: synthetic render)")
    ap.add_argument("--small", action="store_true", help="tiny GAN / VGG (CPU smoke run)")
    ap.add_argument("--n-id", type=int, default=532)
    ap.add_argument("--n-exp", type=int, default=45)
    ap.add_argument("--stage1-steps", type=int, default=300)
    ap.add_argument("--steps2", type=int, default=100)
    ap.add_argument("--steps3", type=int, default=200)
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2, help="fits (the first one warms up)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write preview / texture / report here")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = header("paper-mode fit (random-weight FFHQ-UV networks, HiFi3D++)")

    from services.fitter.core import FitterCore, resolve_device
    from services.fitter.facemodel import load_face_model
    from services.fitter.presets import get_preset

    dev = resolve_device(args.device)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="paper_fit_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        topo = Path(args.topo_dir) if args.topo_dir else tmp / "topo_assets"
        real_topology = None
        if not args.topo_dir:
            from tests.hifi3dpp_synthetic import write_synthetic_topo

            info = write_synthetic_topo(topo, n_id=args.n_id, n_exp=args.n_exp)
            real_topology = bool(info.get("real_topology"))
        rows.append({"step": "write topo_assets", "seconds": time.perf_counter() - t0})
        t0 = time.perf_counter()
        model = load_face_model("hifi3dpp", dev, topo)
        if args.face:
            from services.detector.types import AlignedFace

            face, coeffs = AlignedFace.load_npz(args.face), None
        else:
            face, coeffs = synthetic_hifi3dpp_face(model)
        rows.append({"step": "face model + face", "seconds": time.perf_counter() - t0})
        t0 = time.perf_counter()
        ckpt = write_random_checkpoints(tmp / "checkpoints", small=args.small,
                                        deep3d_coeffs=coeffs,
                                        w_stats_samples=2000 if args.small else 100_000,
                                        device=dev)
        rows.append({"step": "write checkpoints", "seconds": time.perf_counter() - t0})
        t0 = time.perf_counter()
        core = FitterCore("hifi3dpp", str(dev), checkpoints_dir=ckpt, topo_dir=topo,
                          model=model)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rows.append({"step": "load networks", "seconds": time.perf_counter() - t0})
        preset = get_preset("standard").with_overrides(
            stage1_steps=args.stage1_steps, paper_stage2_steps=args.steps2,
            paper_stage3_steps=args.steps3)
        out = None
        for r in range(max(args.repeat, 1)):
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            out = core.fit(face, preset=preset, texture_size=args.texture_size)
            wall = time.perf_counter() - t0
            tm = out.report["timings_s"]
            row = {"step": f"fit #{r + 1}" + (" (warm-up)" if r == 0 and args.repeat > 1
                                             else ""),
                   "seconds": wall, "stage1": tm.get("stage1"), "stage2": tm.get("stage2"),
                   "stage3": tm.get("stage3"), "outputs": tm.get("outputs"),
                   "ms_per_step2": 1000 * tm.get("stage2", 0) / max(args.steps2, 1),
                   "ms_per_step3": 1000 * tm.get("stage3", 0) / max(args.steps3, 1)}
            if dev.type == "cuda":
                row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
            rows.append(row)
        table(rows, ["step", "seconds", "stage1", "stage2", "stage3", "outputs",
                     "ms_per_step2", "ms_per_step3", "peak_gpu_gib"])
        rep = out.report
        print("# paper_networks:", rep.get("paper_networks"))
        print("# texture_source:", rep.get("texture_source"), " stage1_init:",
              rep.get("stage1_init"), " landmark error px:",
              round(out.metrics["landmark_error_px"], 3))
        if args.out:
            from ffhquv.imaging import png_bytes

            o = Path(args.out)
            o.mkdir(parents=True, exist_ok=True)
            (o / "preview.png").write_bytes(png_bytes(out.preview))
            (o / "texture.png").write_bytes(png_bytes(out.uv_texture))
            (o / "report.json").write_text(out.report_json)
            print(f"# wrote {o}/preview.png, texture.png, report.json")
        write_json(args.json, meta, rows, device=str(dev), small=args.small,
                   real_topology=real_topology, face_model_vertices=model.n_vertices,
                   steps={"stage1": args.stage1_steps, "stage2": args.steps2,
                          "stage3": args.steps3},
                   paper_networks=rep.get("paper_networks"),
                   texture_source=rep.get("texture_source"), stage1_init=rep.get("stage1_init"),
                   metrics=out.metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
