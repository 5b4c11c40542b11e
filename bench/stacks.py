"""Summarise a py-spy recording (``py-spy record --idle --threads -f raw``): wall seconds by
thread, then by function, inclusive, for the frames that matter when reading a cold start:
this repository's functions and imports. A recording with ``--subprocesses`` is summed by
process too (``serve NAME`` children by service name), each thread named ``process: thread``.

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
_THREAD = re.compile(r"^thread \(\d+\)(?:: ?(?P<name>.*))?$")
_PROCESS = re.compile(r'^process \d+:"(?P<cmd>.*)"$')


def _process_label(cmd: str) -> str:
    """``serve NAME`` children by service name, any other process by its script / module."""
    argv = cmd.split()
    if "serve" in argv and argv.index("serve") + 1 < len(argv):
        return argv[argv.index("serve") + 1]
    for a in argv[1:]:
        if not a.startswith("-"):
            return Path(a).name
    return Path(argv[0]).name if argv else "?"


def _thread_group(name: str) -> str:
    """Pool threads by their pool's name (``asyncio_0`` .. ``asyncio_7`` -> ``asyncio_*``;
    ``ThreadPoolExecutor-24_3``, one of many short-lived pools -> ``ThreadPoolExecutor-*``)."""
    g = re.sub(r"_\d+$", "_*", re.sub(r"-\d+( \(.*\))?$", "-*", name or "?"))
    return re.sub(r"-\d+_\*$", "-*", g)


def _key(frame: str, every: bool = False) -> str | None:
    m = _FRAME.match(frame)
    if m is None:
        return None
    func, file = m.group("func"), m.group("file")
    if every and func != "<module>" and not any(r in file for r in OURS):
        # a library's function, by its package path (numpy/lib/npyio.py: savetxt)
        tail = file.split("site-packages/", 1)[-1].split("lib/python3", 1)[-1]
        return f"{func} ({tail.lstrip('.0123456789/')})"
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


def summarise(raw: str, rate: float, top: int = 40, every: bool = False) -> str:
    threads: Counter[str] = Counter()
    frames: dict[str, Counter[str]] = defaultdict(Counter)
    selfs: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        parts = stack.split(";")
        proc = None
        while parts and (pm := _PROCESS.match(parts[0])):  # --subprocesses: parent;...;child
            proc = _process_label(pm.group("cmd"))
            parts = parts[1:]
        if not parts:
            continue
        m = _THREAD.match(parts[0])
        group = _thread_group(m.group("name") if m else "?")
        if proc is not None:
            group = f"{proc}: {group}"
        if m:
            parts = parts[1:]
            if m.group("name") and parts and parts[0] == m.group("name"):
                parts = parts[1:]
        count = int(n)
        threads[group] += count
        if every and parts:  # the innermost frame: where the samples burnt
            leaf = _key(parts[-1], True)
            if leaf is not None:
                selfs[group][leaf] += count
        seen = set()
        for f in parts:
            k = _key(f, every)
            if k is not None and k not in seen:  # inclusive: once per sample
                seen.add(k)
                frames[group][k] += count
    lines = [f"py-spy samples at {rate:g} Hz; seconds = samples / rate (threads of a pool summed)",
             "", "thread                         wall s"]
    lines += [f"{g:30s} {c / rate:7.2f}" for g, c in threads.most_common()]
    procs: Counter[str] = Counter()
    for g, c in threads.items():
        if ": " in g:
            procs[g.split(": ", 1)[0]] += c
    if procs:  # recorded with --subprocesses
        lines += ["", "process                        s"]
        lines += [f"{g:30s} {c / rate:7.2f}" for g, c in procs.most_common()]
    for g, _c in threads.most_common():
        if not frames[g]:
            continue
        lines += ["", f"== {g}: inclusive wall s by frame (ours and imports), top {top}"]
        lines += [f"{c / rate:7.2f}  {k}" for k, c in frames[g].most_common(top)]
        if selfs[g]:
            lines += ["", f"== {g}: self s by innermost frame, top {top}"]
            lines += [f"{c / rate:7.2f}  {k}" for k, c in selfs[g].most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", help="py-spy raw (collapsed stacks) file, recorded with --threads")
    ap.add_argument("--rate", type=float, default=100.0, help="the -r given to py-spy")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--out", help="write the summary here as well as to stdout")
    ap.add_argument("--every", action="store_true",
                    help="libraries' functions too (numpy, cv2, grpc, ...), not only ours")
    a = ap.parse_args()
    text = summarise(Path(a.raw).read_text(), a.rate, a.top, a.every)
    print(text, end="")
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
