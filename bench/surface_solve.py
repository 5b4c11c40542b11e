"""The surface solve of the texture's low-pass family, host against device.

    python bench/surface_solve.py [--device cuda] [--size 1024] [--repeat 20] [--threads 4]
                                  [--json out.json]

:func:`~services.fitter.texture.lowpass.mesh_lowpass` solves a screened Poisson system on the
head's vertices for each photo's weights (four a photo) and
:func:`~services.fitter.texture.lowpass.symmetrize_lowfreq` one of the atlas's own (two a
photo). On the host that is scipy's ``splu`` (it holds the GIL while it factorises); where
the atlas lives on a GPU, a dense float64 Cholesky factorisation there
(:class:`~services.fitter.texture.lowpass.DeviceSolver`). Rows: the median wall time of one
factorise + solve of a photo's weights, and of a symmetrisation, each way; and the same with
``--threads`` threads at once (as a fitter's per-photo pools run them), per solve. Both ways
give the same texels (printed: their largest difference).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, table, write_json  # noqa: E402


def _timed(fn, repeat: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _threaded(fn, threads: int, repeat: int, sync) -> float:
    """Seconds a call with ``threads`` threads calling ``fn`` ``repeat`` times each."""
    with ThreadPoolExecutor(threads) as pool:
        t = time.perf_counter()
        list(pool.map(lambda _: [fn() for _ in range(repeat)] and sync(), range(threads)))
        sync()
        return (time.perf_counter() - t) / (threads * repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--json")
    args = ap.parse_args()
    meta = header("surface solve: host splu against the device's dense Cholesky")

    import dataclasses

    import services.fitter.texture.lowpass as lp
    from services.fitter.core import FitterCore
    from services.fitter.texture.atlas import uv_maps

    dev = torch.device(args.device)
    if dev.type != "cuda":
        lp.DEVICE_SOLVE_TYPES = (*lp.DEVICE_SOLVE_TYPES, dev.type)
    core = FitterCore("default", device="cpu")
    maps = uv_maps(core.model, args.size, core.backend)
    dmaps = dataclasses.replace(maps, mask=maps.mask.to(dev), derived={})
    if dev.type != "cuda":  # the device path on the host's CPU (as the tests take it)
        host_ops = lp.ops_device
        lp.ops_device = lambda m: dev if m is dmaps else host_ops(m)
    s = args.size
    rng = np.random.default_rng(0)
    img = rng.random((s, s, 3), dtype=np.float32)
    weight = (rng.random((s, s), dtype=np.float32) > 0.5).astype(np.float32) \
        * maps.mask.numpy()
    img_d, w_d = torch.from_numpy(img).to(dev), torch.from_numpy(weight).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def host_low():
        return lp.mesh_lowpass(maps, img, weight, sigma=s / 24)[0]

    def dev_low():
        return lp.mesh_lowpass(dmaps, img_d, w_d, sigma=s / 24)[0]

    def host_sym():
        return lp.symmetrize_lowfreq(img, maps, sigma=s / 16)

    def dev_sym():
        return lp.symmetrize_lowfreq(img_d, dmaps, sigma=s / 16)

    diff_low = float(np.abs(dev_low().cpu().numpy() - host_low()).max())
    diff_sym = float(np.abs(dev_sym().cpu().numpy() - host_sym()).max())
    rows = []
    for what, fn in (("mesh_lowpass, host (splu)", host_low),
                     (f"mesh_lowpass, {dev.type} (dense Cholesky)", dev_low),
                     ("symmetrize_lowfreq, host (splu)", host_sym),
                     (f"symmetrize_lowfreq, {dev.type} (factorised once)", dev_sym)):
        rows.append({"what": what, "n_vertices": maps.laplacian.shape[0],
                     "ms_alone": 1e3 * _timed(fn, args.repeat, sync),
                     f"ms_a_call_{args.threads}_threads":
                         1e3 * _threaded(fn, args.threads, max(2, args.repeat // 4), sync)})
    table(rows, list(rows[0]))
    print(f"# largest difference, device against host: mesh_lowpass {diff_low:.2e}, "
          f"symmetrize_lowfreq {diff_sym:.2e}")
    write_json(args.json, meta, rows, diff_lowpass=diff_low, diff_symmetrize=diff_sym)


if __name__ == "__main__":
    main()
