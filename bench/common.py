"""Shared bits of the benchmark scripts: machine description, table printing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def header(title: str) -> dict:
    meta = {"title": title, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine()}
    la = loadavg()
    if la:
        meta["loadavg"] = la
    print(f"# {title}")
    print(f"# {meta['date']}  |  {meta['command']}")
    m = meta["machine"]
    print(f"# {m.get('cpu', '?')} x{m.get('cpus')}  torch {m.get('torch', '-')}"
          f"  {m.get('gpu', 'no GPU')}")
    if "loadavg" in meta:
        print("# load average (1, 5, 15 min): " + ", ".join(map(str, meta["loadavg"]))
              + " (the machine may be shared)")
    return meta


def loadavg() -> list[float]:
    """``[1, 5, 15]``-minute load averages ([] where the OS has none); the CI / dev machine is
    shared, so timings are only comparable at similar load."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def table(rows: list[dict], cols: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    print("| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|")
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols) + " |")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return "" if v is None else str(v)


def write_json(path: str | None, meta: dict, rows: list[dict], **extra) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**meta, **extra, "rows": rows}, indent=2))
    print(f"# wrote {path}")


def preset_overrides(pairs: list[str] | None) -> dict:
    """``["stage3_steps=50", ...]`` (``--set``) -> ``{field: value}`` of
    :class:`services.fitter.presets.Preset`, each value parsed as the field's type (int,
    float, 0 / 1 for bools, or comma-separated ints for tuples). Raises SystemExit naming a
    bad pair."""
    import dataclasses

    from services.fitter.presets import Preset

    types = {f.name: f.type for f in dataclasses.fields(Preset)}
    out: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or key not in types or key == "name":
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of "
                             f"{sorted(k for k in types if k != 'name')}")
        kind = str(types[key])
        try:
            out[key] = (tuple(int(v) for v in value.split(",")) if "tuple" in kind
                        else bool(int(value)) if kind == "bool"
                        else int(value) if kind == "int" else float(value))
        except ValueError as err:
            raise SystemExit(f"--set {pair!r}: {err}") from err
    return out


def preset_label(name: str, overrides: dict) -> str:
    """``standard`` or ``standard[stage3_steps=50]``: a row's preset with its overrides."""
    if not overrides:
        return name
    return f"{name}[{','.join(f'{k}={v}' for k, v in sorted(overrides.items()))}]"
