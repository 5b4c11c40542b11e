"""Device memory kept after each fit-like run of :class:`services.fitter.graphs.StepRunner`.

Each ``StepRunner.run`` in graph mode warms up on a new side stream and captures a graph; a
GEMM in the step makes cuBLAS give that stream its own workspace. The script prints
``torch.cuda.memory_allocated`` after each of RUNS runs (a new runner each, as each fit makes),
then the same with one side stream reused (``--one-stream``), to see whether the memory kept
grows per run and where it stops.

    python3 bench/graph_memory.py [--runs 40] [--one-stream]
"""

from __future__ import annotations

import argparse

import torch

from services.fitter.graphs import StepRunner, make_adam


def one_run() -> None:
    dev = torch.device("cuda")
    x = torch.randn(4, 50176, 9, device=dev)
    p = torch.zeros(4, 3, 9, device=dev, requires_grad=True)
    w = torch.randn(80, 10920, device=dev)
    c = torch.zeros(4, 80, device=dev, requires_grad=True)
    opt = make_adam([{"params": [p, c], "lr": 0.01}], graph=True)

    def body():
        loss = (x @ p.transpose(1, 2)).square().mean() + (c @ w).square().mean()
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    StepRunner(opt, body, graph=True).run(20)
    torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--one-stream", action="store_true",
                    help="every torch.cuda.Stream() here returns one stream")
    a = ap.parse_args()
    if a.one_stream:
        s = torch.cuda.Stream()
        torch.cuda.Stream = lambda *args, **kw: s  # noqa: E731
    rows = []
    for i in range(a.runs):
        one_run()
        rows.append(torch.cuda.memory_allocated() / 2**20)
        if i < 3 or i % 8 == 7:
            print(f"run {i + 1:3d}: allocated {rows[-1]:8.1f} MiB, reserved "
                  f"{torch.cuda.memory_reserved() / 2**20:8.1f} MiB", flush=True)
    print(f"{'one stream' if a.one_stream else 'a new side stream a run'}: allocated after "
          f"run 1 {rows[0]:.1f} MiB, after run {a.runs} {rows[-1]:.1f} MiB")


if __name__ == "__main__":
    main()
