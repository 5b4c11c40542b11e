"""The face model's basis product ``v[b, n, c] = sum_k base[n, c, k] * coeff[b, k]`` forward and
backward on the device, in several formulations, for the batch sizes the fitter runs.

The backward's coefficient gradient is a tiny output (``[B, K]``) over a long reduction
(``N * 3`` = 10 920 for the default head): a GEMM shape that cuBLAS may run on few tiles. This
script times each formulation with CUDA events (the same work repeated, one sync at the end)
and checks that they agree.

    python3 bench/basis_gemm.py [--device cuda] [--batches 1,4,8,16,32] [--iters 200]
"""

from __future__ import annotations

import argparse
import time

import torch


def einsum(base: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nck,bk->bnc", base, c)


def formulation(coeff_grad):
    """A basis product ``[N, 3, K] x [B, K] -> [B, N, 3]`` whose coefficient gradient is
    ``coeff_grad(g [B, M], flat [M, K]) -> [B, K]`` (M = 3N)."""
    class _Product(torch.autograd.Function):
        @staticmethod
        def forward(ctx, flat, c):  # flat [M, K], c [B, K]
            ctx.save_for_backward(flat)
            return c @ flat.T  # [B, M]

        @staticmethod
        def backward(ctx, g):  # g [B, M]
            (flat,) = ctx.saved_tensors
            return None, coeff_grad(g, flat)

    def f(base, c):
        n, three, k = base.shape
        return _Product.apply(base.reshape(n * three, k), c).reshape(c.shape[0], n, three)
    return f


def make_splitk(chunks: int):
    """The reduction cut into ``chunks`` pieces, one small GEMM each, summed."""
    def grad(g, flat):
        m, k = flat.shape
        b = g.shape[0]
        pad = (-m) % chunks
        if pad:
            g = torch.nn.functional.pad(g, (0, pad))
            flat = torch.nn.functional.pad(flat, (0, 0, 0, pad))
        gc = g.reshape(b, chunks, -1).transpose(0, 1)  # [S, B, L]
        fc = flat.reshape(chunks, -1, k)  # [S, L, K]
        return torch.bmm(gc, fc).sum(0)
    return formulation(grad)


# elementwise products and a reduction kernel, no GEMM
mulsum = formulation(lambda g, flat: (g[:, :, None] * flat[None]).sum(1))
# ``(flat^T @ g^T)^T``: the same product with the long side as M
tmm = formulation(lambda g, flat: torch.mv(flat.T, g[0])[None] if g.shape[0] == 1
                  else (flat.T @ g.T).T)


def _time(f, base, c, w, iters: int, graph: bool) -> float:
    """Microseconds of device time per forward + backward (CUDA events around ``iters``
    eager iterations or graph replays; seconds of wall clock per iteration on the CPU)."""
    def body():
        c.grad = None
        (f(base, c) * w).sum().backward()

    cuda = base.device.type == "cuda"
    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                body()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        c.grad = None
        with torch.cuda.graph(g):
            (f(base, c) * w).sum().backward()
        run = g.replay
    else:
        run = body
    for _ in range(3):
        run()
    if cuda:
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
    t0 = time.perf_counter()
    for _ in range(iters):
        run()
    if cuda:
        e1.record()
        torch.cuda.synchronize()
        return e0.elapsed_time(e1) * 1e3 / iters
    return (time.perf_counter() - t0) * 1e6 / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--shapes", default="3640x80,3640x52,68x80,68x52",
                    help="NxK of the bases (vertices x coefficients)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    forms = {"einsum": einsum, "splitk8": make_splitk(8), "splitk24": make_splitk(24),
             "splitk60": make_splitk(60), "mulsum": mulsum, "tmm": tmm}
    modes = [False, True] if dev.type == "cuda" else [False]
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}),"
          f" {a.iters} forward+backward each, us per iteration (eager: launches included)")
    for shp in a.shapes.split(","):
        n, k = (int(x) for x in shp.split("x"))
        base = torch.randn(n, 3, k, generator=g).to(dev) * 1e-3
        for graph in modes:
            print(f"\nbase [{n}, 3, {k}] {'CUDA graph replays' if graph else 'eager'}")
            print("B      " + "".join(f"{x:>10}" for x in forms))
            for b in [int(x) for x in a.batches.split(",")]:
                c0 = torch.randn(b, k, generator=g).to(dev)
                w = torch.randn(b, n, 3, generator=g).to(dev)
                ref = None
                row = []
                for name, f in forms.items():
                    c = c0.clone().requires_grad_()
                    (f(base, c) * w).sum().backward()
                    gr = c.grad.clone()
                    if ref is None:
                        ref = gr
                    err = float((gr - ref).abs().max() / ref.abs().max())
                    assert err < 1e-4, (name, b, err)
                    row.append(_time(f, base, c, w, a.iters, graph))
                print(f"{b:<7}" + "".join(f"{x:>10.1f}" for x in row))


if __name__ == "__main__":
    main()
