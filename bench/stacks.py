"""Summarise a py-spy recording (``py-spy record --idle --threads -f raw``): wall seconds by
thread, then by function, inclusive, for the frames that matter when reading a cold start:
this repository's functions and imports.

py-spy samples every thread of the process at a fixed rate, waiting included with ``--idle``,
so a frame's samples / rate are the wall seconds that thread spent inside it (a thread's rows
overlap: ``fit`` includes ``stage1``). The raw format loses the order of samples; the CLI's own
progress lines give the order.

    py-spy record --idle --threads -r 100 -f raw -o cold.txt -- python -m ffhquv_cli fit ...
    python bench/stacks.py cold.txt --rate 100 [--top 40] [--out cold_summary.txt]

py-spy is a benchmark tool, not a dependency: ``pip install py-spy`` where you measure.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

OURS = ("ffhquv/", "ffhquv_cli/", "services/", "gateway/", "bench/")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_THREAD = re.compile(r"^thread \(\d+\): ?(?P<name>.*)$")


def _thread_group(name: str) -> str:
    """Pool threads by their pool's name (``asyncio_0`` .. ``asyncio_7`` -> ``asyncio_*``)."""
    return re.sub(r"_\d+$", "_*", re.sub(r"-\d+( \(.*\))?$", "-*", name or "?"))


def _key(frame: str) -> str | None:
    m = _FRAME.match(frame)
    if m is None:
        return None
    func, file = m.group("func"), m.group("file")
    if func == "<module>":  # an import: name the module, not the line
        for root in ("site-packages/", "lib/python3"):
            if root in file:
                mod = file.split(root, 1)[1].split("/")
                mod = mod[1:] if root == "lib/python3" else mod
                return "import " + ".".join(mod[:2]).removesuffix(".py")
        return "import " + file
    for root in OURS:
        i = file.find(root)
        if i >= 0 and (i == 0 or file[i - 1] == "/"):
            return f"{func} ({file[i:]})"
    return None


def summarise(raw: str, rate: float, top: int = 40) -> str:
    threads: Counter[str] = Counter()
    frames: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        parts = stack.split(";")
        m = _THREAD.match(parts[0])
        group = _thread_group(m.group("name") if m else "?")
        if m:
            parts = parts[1:]
            if m.group("name") and parts and parts[0] == m.group("name"):
                parts = parts[1:]
        count = int(n)
        threads[group] += count
        seen = set()
        for f in parts:
            k = _key(f)
            if k is not None and k not in seen:  # inclusive: once per sample
                seen.add(k)
                frames[group][k] += count
    lines = [f"py-spy samples at {rate:g} Hz; seconds = samples / rate (threads of a pool summed)",
             "", "thread                         wall s"]
    lines += [f"{g:30s} {c / rate:7.2f}" for g, c in threads.most_common()]
    for g, _c in threads.most_common():
        if not frames[g]:
            continue
        lines += ["", f"== {g}: inclusive wall s by frame (ours and imports), top {top}"]
        lines += [f"{c / rate:7.2f}  {k}" for k, c in frames[g].most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", help="py-spy raw (collapsed stacks) file, recorded with --threads")
    ap.add_argument("--rate", type=float, default=100.0, help="the -r given to py-spy")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--out", help="write the summary here as well as to stdout")
    a = ap.parse_args()
    text = summarise(Path(a.raw).read_text(), a.rate, a.top)
    print(text, end="")
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
