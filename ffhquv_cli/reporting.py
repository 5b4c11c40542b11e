"""What ``ffhquv fit`` tells its caller (:class:`FitReporter`: a progress bar or plain line per
photo, ``--json`` records, the summary and the exit code), the same for in-process,
``--workers`` and ``--remote`` runs."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path

#: exit codes of ``ffhquv fit``: all done (or skipped), some photos failed, usage error
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: ``ffhquv fit``'s own error codes (beside the gRPC status names): a photo it could not read
#: (gone or unreadable since the inputs were listed), an output folder it could not write
INPUT_READ_FAILED, OUTPUT_WRITE_FAILED = "INPUT_READ_FAILED", "OUTPUT_WRITE_FAILED"
#: files whose presence (and age) says a photo's output folder is complete
OUTPUT_MARKERS = ("report.json", "stage3_uv.png", "stage3_mesh_id.obj")


#: one writer at a time: ``--remote`` reports from a thread per photo in flight, and a
#: result line or a ``--json`` record is never split by another's
_WRITE = threading.Lock()

STAGES = {1: "queued", 2: "detected", 3: "stage 1", 4: "stage 2", 5: "stage 3", 6: "eyeballs",
          7: "exported", 8: "done"}


class _Bar:
    """A tqdm bar per photo, driven by progress events (on a terminal)."""

    WEIGHTS = {1: 0.0, 2: 0.05, 3: 0.15, 4: 0.3, 5: 0.9, 6: 0.93, 7: 1.0, 8: 1.0}
    PREV = {3: 0.05, 4: 0.15, 5: 0.3}

    def __init__(self, name: str, position: int = 0):
        from tqdm import tqdm

        self.bar = tqdm(total=100, desc=name, position=position, leave=True,
                        bar_format="{desc:<24} {percentage:3.0f}%|{bar}| {postfix}",
                        file=sys.stderr, disable=None)

    def update(self, p) -> None:
        lo = self.PREV.get(p.stage, self.WEIGHTS.get(p.stage, 0.0))
        hi = self.WEIGHTS.get(p.stage, lo)
        frac = lo + (hi - lo) * max(0.0, min(1.0, p.fraction))
        target = int(100 * frac)
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)
        self.bar.set_postfix_str(f"{STAGES.get(p.stage, '')} {p.message}"[:60])

    def close(self, ok: bool) -> None:
        if ok and self.bar.n < 100:
            self.bar.update(100 - self.bar.n)
        self.bar.close()


class _Lines:
    """Progress without a terminal (CI, job runners, redirected stderr): one plain line on
    stderr per stage of a photo, ``<name>: <stage> (<message>) [<seconds> s]``."""

    def __init__(self, name: str):
        self.name = name
        self.stage: int | None = None
        self.t0 = time.monotonic()

    def update(self, p) -> None:
        if p.stage == self.stage:
            return
        self.stage = p.stage
        note = f" ({p.message})" if p.message else ""
        with _WRITE:
            print(f"{self.name}: {STAGES.get(p.stage, str(p.stage))}{note} "
                  f"[{time.monotonic() - self.t0:.1f} s]", file=sys.stderr, flush=True)

    def close(self, ok: bool) -> None:
        return None


class _FolderBar:
    """One bar for a folder on a terminal: photos done of all, the photos running and the
    latest stage reached (several photos run at once: a bar each overwrote one another)."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="ffhquv fit", unit="photo", leave=True,
                        file=sys.stderr, disable=None)
        self.running = 0

    def photo(self, name: str) -> _FolderPhoto:
        with _WRITE:
            self.running += 1
        return _FolderPhoto(self, name)

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)  # above the bar, which stays at the bottom

    def done(self) -> None:
        self.bar.set_postfix_str(f"{self.running} running" if self.running else "",
                                 refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class _FolderPhoto:
    """A photo's progress inside :class:`_FolderBar` (the bar's postfix)."""

    def __init__(self, folder: _FolderBar, name: str):
        self.folder, self.name = folder, name

    def update(self, p) -> None:
        with _WRITE:
            self.folder.bar.set_postfix_str(
                f"{self.folder.running} running; {self.name}: {STAGES.get(p.stage, '')}"[:60])

    def close(self, ok: bool) -> None:
        with _WRITE:
            self.folder.running -= 1


class _Silent:
    """No progress (a ``--workers`` worker under its parent's folder bar)."""

    def update(self, p) -> None:
        return None

    def close(self, ok: bool) -> None:
        return None


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


class FitReporter:
    """What ``ffhquv fit`` tells its caller, the same for local and ``--remote`` runs.

    stderr: progress (on a terminal a bar for the photo, or one for a folder's photos, else
    one line per stage per photo), one result line per photo, a summary line. stdout with
    ``--json``: one JSON object per photo
    (``input``, ``name``, ``status`` ok|failed|skipped, ``output``, ``files``, ``metrics``,
    ``timings`` in seconds, ``warnings``, ``error`` {code, reason, message, field}).
    """

    def __init__(self, json_lines: bool = False, tty: bool | None = None,
                 results: bool = True, progress: bool = True):
        self.json = json_lines
        #: False in a worker whose parent shows the folder's bar: no progress of its own
        self.show_progress = progress
        self.tty = sys.stderr.isatty() if tty is None else tty
        #: False in a ``--workers`` worker: its parent prints the result and summary lines
        #: (from the worker's ``--json`` records); the worker prints progress only
        self.results = results
        self.counts = {"ok": 0, "failed": 0, "skipped": 0}
        self.t0 = time.monotonic()
        self._folder: _FolderBar | None = None

    def begin(self, photos: int) -> None:
        """The photos this process will fit: on a terminal, several get one bar for all
        (:class:`_FolderBar`) instead of a bar each."""
        if self.tty and self.results and photos > 1:
            self._folder = _FolderBar(photos)

    @property
    def folder_bar(self) -> bool:
        """Whether a folder's bar is shown (lines then go above it: :meth:`note`)."""
        return self._folder is not None

    def progress(self, name: str):
        if not self.show_progress:
            return _Silent()
        if self._folder is not None:
            return self._folder.photo(name)
        return _Bar(name) if self.tty else _Lines(name)

    def _line(self, line: str) -> None:
        if self._folder is not None:
            self._folder.write(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def _emit(self, record: dict) -> None:
        self.counts[record["status"]] += 1
        if self.json:
            sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
            sys.stdout.flush()

    def note(self, line: str) -> None:
        """One line on stderr (a retry, a warning), never split by another photo's."""
        with _WRITE:
            self._line(line)

    def record(self, rec: dict) -> None:
        """Report one photo's record (the ``--json`` object): its result line on stderr, then
        the record itself on stdout with ``--json``. Safe from several threads."""
        with _WRITE:
            self._record(rec)

    def _record(self, rec: dict) -> None:
        if self.results:
            if rec["status"] == "ok":
                m, t = rec["metrics"], rec["timings"]
                lm, psnr = m.get("landmark_error_iod"), m.get("psnr_masked")
                self._line(f"{rec['input']} -> {rec['output']}/  landmark error "
                           f"{'n/a' if lm is None else f'{lm:.3f}'} IOD, PSNR "
                           f"{'n/a' if psnr is None else f'{psnr:.1f}'} dB, "
                           f"{t.get('total_s') or 0:.1f} s")
                for w in rec["warnings"]:
                    self._line(f"  note: {w}")
            elif rec["status"] == "failed":
                self._line(f"{rec['input']}: {rec['error']['code']}: {rec['error']['message']}")
            else:
                self._line(f"{rec['input']}: {rec['output']} exists; skipped (use --overwrite "
                           "to replace)")
        self._emit(rec)
        if self._folder is not None and rec["status"] != "skipped":
            self._folder.done()

    def ok(self, photo: Path, name: str, final: Path, metrics: dict[str, float],
           warnings: list[str], files: list[str]) -> None:
        m = {k: _finite(v) for k, v in metrics.items()}
        self.record({"input": str(photo), "name": name, "status": "ok", "output": str(final),
                     "files": sorted(files),
                     "metrics": {k: v for k, v in m.items() if not k.endswith("_s")},
                     "timings": {k: v for k, v in m.items() if k.endswith("_s")},
                     "warnings": list(warnings), "error": None})

    def failed(self, photo: Path, name: str, code: str, message: str, reason: str = "",
               field: str = "") -> None:
        self.record({"input": str(photo), "name": name, "status": "failed", "output": None,
                     "files": [], "metrics": {}, "timings": {}, "warnings": [],
                     "error": {"code": code, "reason": reason or code, "message": message,
                               "field": field or None}})

    def read_failed(self, photo: Path, name: str, err: OSError) -> None:
        """The photo could not be read (:data:`INPUT_READ_FAILED`)."""
        self.failed(photo, name, INPUT_READ_FAILED, f"cannot read {photo}: {err.strerror or err}")

    def write_failed(self, photo: Path, name: str, final: Path, err: OSError) -> None:
        """Its output folder could not be written (:data:`OUTPUT_WRITE_FAILED`)."""
        self.failed(photo, name, OUTPUT_WRITE_FAILED,
                    f"cannot write {final}: {err.strerror or err}")

    def skipped(self, photo: Path, name: str, final: Path) -> None:
        self.record({"input": str(photo), "name": name, "status": "skipped",
                     "output": str(final), "files": [], "metrics": {}, "timings": {},
                     "warnings": [], "error": None})

    def summary(self) -> int:
        """Print the summary line; returns the exit code (1 when a photo failed)."""
        c = self.counts
        if self._folder is not None:
            self._folder.close()
            self._folder = None
        if self.results:
            print(f"ffhquv fit: {sum(c.values())} photo(s): {c['ok']} ok, {c['failed']} "
                  f"failed, {c['skipped']} skipped in {time.monotonic() - self.t0:.1f} s",
                  file=sys.stderr, flush=True)
        return EXIT_FAILED if c["failed"] else EXIT_OK
