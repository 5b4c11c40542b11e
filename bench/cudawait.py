"""How much host CPU a thread burns while it waits for the GPU, per ``FFHQUV_CUDA_WAIT`` mode.

Each mode runs in its own process (the flag is set once, before the CUDA context): queue about
``--seconds`` of matrix products, then synchronise, and report the process's CPU time during
the wait, the wall time, and the device flags CUDA reports.

    python bench/cudawait.py [--seconds 2] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, table, write_json  # noqa: E402


def _child(seconds: float) -> dict:
    import torch

    from ffhquv.cuda import configure_waits, wait_mode_now

    mode = configure_waits()
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        a = (a @ a).clamp(-1, 1)
    torch.cuda.synchronize()
    per = (time.perf_counter() - t) / 5
    n = max(1, int(seconds / max(per, 1e-6)))
    for _ in range(n):
        a = (a @ a).clamp(-1, 1)
    c0, w0 = time.process_time(), time.perf_counter()
    torch.cuda.synchronize()
    return {"mode": mode, "flags": wait_mode_now(), "wait_wall_s": time.perf_counter() - w0,
            "wait_cpu_s": time.process_time() - c0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.seconds)))
        return 0
    rows = []
    for mode in ("spin", "auto", "block"):
        env = dict(os.environ, FFHQUV_CUDA_WAIT=mode)
        out = subprocess.run([sys.executable, __file__, "--child", "--seconds",
                              str(args.seconds)], env=env, capture_output=True, text=True,
                             check=True)
        rows.append({"asked": mode, **json.loads(out.stdout.strip().splitlines()[-1])})
    meta = header("CUDA waits: host CPU burnt while a thread waits for queued GPU work")
    table(rows, ["asked", "mode", "flags", "wait_wall_s", "wait_cpu_s"])
    write_json(args.json, meta, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
