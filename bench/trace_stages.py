"""Where a profiled fit's GPU time goes, stage by stage (the timeline ``bench/fit.py
--profile`` writes beside its table, ``*.trace.json.gz``).

For each stage range (``stage1``, ``stage2``, ``stage3``, ``outputs``: the fitter's
:func:`services.fitter.pipeline.timed` blocks) it prints the stage's wall time, the device
time of the kernels, copies and memsets launched inside it (attributed by the launch's
correlation id, so a kernel that runs after its stage ended still counts for it), the time the
device was busy with them (their union), their count, and the host's launch / synchronise
calls. Busy time well under the wall time means the stage waits on the host; device time
well above the busy time means kernels overlap (other streams).

    python bench/trace_stages.py prof_b4.trace.json.gz [more traces...]
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from pathlib import Path

STAGES = ("stage1", "stage2", "stage3", "outputs")
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def stages(path: str) -> list[dict]:
    """One row per stage range of the trace (times in ms)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    ranges = [e for e in events if e.get("ph") == "X" and e.get("name") in STAGES
              and e.get("cat") in ("user_annotation", "cpu_op")]
    launches = [e for e in events if e.get("ph") == "X" and e.get("cat") in
                ("cuda_runtime", "cuda_driver")]
    device = [e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS]
    by_corr = defaultdict(list)
    for k in device:
        c = (k.get("args") or {}).get("correlation")
        if c is not None:
            by_corr[c].append(k)
    rows = []
    for r in sorted(ranges, key=lambda e: e["ts"]):
        t0, t1 = r["ts"], r["ts"] + r["dur"]
        inside = [e for e in launches if t0 <= e["ts"] <= t1]
        kern = [k for e in inside for k in by_corr.get((e.get("args") or {}).get("correlation"),
                                                       [])]
        calls = defaultdict(float)
        counts = defaultdict(int)
        for e in inside:
            calls[e["name"]] += e["dur"]
            counts[e["name"]] += 1
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:4]
        rows.append({
            "stage": r["name"], "wall_ms": r["dur"] / 1e3,
            "device_ms": sum(k["dur"] for k in kern) / 1e3,
            "busy_ms": _union([(k["ts"], k["ts"] + k["dur"]) for k in kern]) / 1e3,
            "kernels": len(kern),
            "host_calls": {n: (round(v / 1e3, 1), counts[n]) for n, v in top},
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("traces", nargs="+")
    args = ap.parse_args(argv)
    for p in args.traces:
        print(Path(p).name)
        print(f"  {'stage':8} {'wall ms':>8} {'device ms':>10} {'busy ms':>8} {'kernels':>8}  "
              "host calls (ms, count)")
        for r in stages(p):
            print(f"  {r['stage']:8} {r['wall_ms']:8.1f} {r['device_ms']:10.1f} "
                  f"{r['busy_ms']:8.1f} {r['kernels']:8d}  {r['host_calls']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
