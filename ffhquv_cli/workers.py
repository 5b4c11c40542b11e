"""``ffhquv fit --workers N``: the photos of one call shared by N processes of the same CLI.

One process fits its photos in batches on the GPU, but the host work around each fit
(detection, texture completion, eyeballs, export, PNG encoding) runs under that process's
GIL: one process keeps one to two of a GPU host's cores busy and the GPU idle most of the
time (BENCHMARKS.md, folder rows). Several processes, each the whole in-process pipeline on
its share of the photos, overlap that host work and share the GPU.

The parent never imports torch. It deals the photos out in turn (photo i to worker i mod N,
so the workers' shares differ by one photo at most), starts each worker as ``python -m
ffhquv_cli fit`` with the same options, its photos and their output names
(``--worker-stems``), each with its share of the cores' threads, and re-reports what the
workers print: their progress lines pass through to stderr, their one JSON record per photo
becomes the parent's result line and ``--json`` record, so a multi-process run reads exactly
as a single-process one. A photo a worker did not report (the worker crashed or was killed)
is reported failed, with the worker's exit code. Ctrl-C reaches every worker (one process
group); each leaves no half-written output folder.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ffhquv_cli.machine import cuda_available, gpu_memory_gb, threads_env
from ffhquv_cli.reporting import OUTPUT_MARKERS, FitReporter

#: GPU memory a worker may need at the default batch of 8 (CUDA context, 1024 textures,
#: ``standard``: 2.4 GB peak in BENCHMARKS.md) with headroom: more workers than fit are not
#: started
WORKER_GPU_GB = 4.0

#: host memory a worker may need (a CPU worker peaks at 1.4 GB resident, ``standard``, 1024
#: textures)
WORKER_RAM_GB = 2.0

#: the options a worker gets as given to the parent (flag, attribute)
FORWARDED = (("--preset", "preset"), ("--device", "device"), ("--face-model", "face_model"),
             ("--texture-size", "texture_size"), ("--detector", "detector"), ("--face", "face"),
             ("--formats", "formats"), ("--units", "units"), ("--subdivision", "subdivision"),
             ("--checkpoints-dir", "checkpoints_dir"), ("--topo-dir", "topo_dir"),
             ("--landmark-model", "landmark_model"), ("--batch-size", "batch_size"),
             ("--seed", "seed"))


def _available_ram_gb() -> float | None:
    """``MemAvailable`` of ``/proc/meminfo`` in GB, None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024 ** 2
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_workers(cores: int, cuda: bool, ram_gb: float | None,
                    gpu_gb: float | None) -> int:
    """Workers for a folder when ``--workers`` is not given: one per 2 cores, 2 to 8, as many
    as the memory holds (:data:`WORKER_RAM_GB`, :data:`WORKER_GPU_GB` each); 1 on one core.
    Measured (BENCHMARKS.md, 2026-12-03 eighth session): on the 16-core H200 host a folder of
    64 ran at 0.77 photos/s in one process, 1.70 in 4, 2.17 in 8, 2.22 in 16; on the 2-core
    CI machine a folder of 6 took 53 s in one process and 40 s in two."""
    if cores < 2:
        return 1
    n = min(8, max(2, cores // 2))
    if ram_gb is not None:
        n = min(n, int(ram_gb // WORKER_RAM_GB))
    if cuda and gpu_gb is not None:
        n = min(n, int(gpu_gb // WORKER_GPU_GB))
    return max(1, n)


def fit_workers(requested: int, device: str, n_photos: int) -> int:
    """Processes for ``n_photos`` photos: ``requested``, else :func:`default_workers` for this
    machine; never more than the photos (one photo: no parent in between)."""
    if n_photos <= 1:
        return 1
    if requested > 0:
        return min(requested, n_photos)
    cuda = device != "cpu" and cuda_available()
    return min(n_photos, default_workers(os.cpu_count() or 1, cuda, _available_ram_gb(),
                                         gpu_memory_gb() if cuda else None))


def deal(items: list, n: int) -> list[list]:
    """``items`` dealt in turn to ``n`` hands (``deal([0..4], 2) == [[0, 2, 4], [1, 3]]``)."""
    return [items[i::n] for i in range(n)]


def worker_argv(args: argparse.Namespace, photos: list[Path], stems_file: Path,
                out: Path, quiet: bool = False) -> list[str]:
    """The command line of one worker: this CLI's ``fit`` with the parent's options
    (``quiet``: no progress lines, the parent shows the folder's bar)."""
    argv = [sys.executable, "-m", "ffhquv_cli", "fit", *map(str, photos), "-o", str(out),
            "--workers", "1", "--worker-stems", str(stems_file)]
    if quiet:
        argv.append("--no-progress")
    for flag, attr in FORWARDED:
        v = getattr(args, attr, None)
        if v is not None:
            argv += [flag, str(v)]
    if args.overwrite:
        argv.append("--overwrite")
    return argv


def worker_env(n: int) -> dict[str, str]:
    """A worker's environment: its share of the cores for torch's and OpenCV's thread pools
    (unless the user set them), and the parent's pid (it dies with the parent)."""
    from ffhquv.supervisor import PARENT_PID_ENV

    env = {**os.environ, **threads_env(max(1, (os.cpu_count() or 1) // n))}
    env[PARENT_PID_ENV] = str(os.getpid())
    return env


def _written_since(folder: Path, since: float) -> bool:
    """Whether ``folder`` is an output folder (its markers present) written after ``since``
    (a time.time() value; one second of slack for coarse file-system clocks)."""
    try:
        return all((folder / m).stat().st_mtime >= since - 1.0 for m in OUTPUT_MARKERS)
    except OSError:
        return False


def _report_metrics(folder: Path) -> dict[str, float]:
    """The fitter's metrics from ``folder/report.json`` (empty when unreadable)."""
    try:
        m = json.loads((folder / "report.json").read_text()).get("metrics") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}


class _Worker:
    """One worker process and what it has reported."""

    def __init__(self, argv: list[str], env: dict[str, str], todo: list[tuple[Path, str]],
                 out: Path, rep: FitReporter, lock: threading.Lock):
        self.todo, self.out = todo, out
        self.reported: set[str] = set()
        self.rep, self.lock = rep, lock
        self.started = time.time()
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.threads = [threading.Thread(target=self._records, daemon=True),
                        threading.Thread(target=self._stderr, daemon=True)]
        for t in self.threads:
            t.start()

    def _records(self) -> None:
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
                name = rec["name"]
            except (ValueError, KeyError, TypeError):
                with self.lock:  # not a record: show it as the worker printed it
                    sys.stderr.write(line)
                continue
            with self.lock:
                self.reported.add(name)
                self.rep.record(rec)

    def _stderr(self) -> None:
        for line in self.proc.stderr:
            with self.lock:  # whole lines: the workers' and the result lines never interleave
                self.rep.note(line.rstrip("\n"))  # above the folder's bar when there is one

    def finish(self) -> None:
        """Wait for the worker; report its unreported photos as failed and remove what it
        left of their output folders (a killed worker cannot remove its temporary ones). A
        photo whose output folder the worker finished (output folders appear whole, by one
        rename) during this run but did not report is reported done, its metrics read back
        from its ``report.json``."""
        rc = self.proc.wait()
        for t in self.threads:
            t.join()
        with self.lock:
            for photo, stem in self.todo:
                final = self.out / stem
                if stem in self.reported:
                    continue
                if _written_since(final, self.started):
                    self.rep.ok(photo, stem, final, _report_metrics(final),
                                [f"its worker process exited with code {rc} after writing "
                                 f"{stem}/ and before reporting it: metrics from its "
                                 "report.json"], [p.name for p in final.iterdir()])
                else:
                    for tmp in self.out.glob(f".{glob.escape(stem)}.tmp-*"):
                        shutil.rmtree(tmp, ignore_errors=True)
                    self.rep.failed(photo, stem, "INTERNAL",
                                    f"the worker process fitting it exited with code {rc} "
                                    "before it was done", reason="WORKER_EXITED")


def fit_with_workers(args: argparse.Namespace, todo: list[tuple[Path, str]], out: Path,
                     rep: FitReporter, n: int) -> int:
    """Fit ``todo`` (photo, output name) in ``n`` worker processes; returns the exit code."""
    hands = [h for h in deal(todo, n) if h]
    lock = threading.Lock()
    workers: list[_Worker] = []
    with tempfile.TemporaryDirectory(prefix="ffhquv-workers-") as tmp:
        env = worker_env(len(hands))
        try:
            for i, hand in enumerate(hands):
                stems_file = Path(tmp) / f"stems-{i}.json"
                stems_file.write_text(json.dumps([s for _, s in hand]))
                argv = worker_argv(args, [p for p, _ in hand], stems_file, out,
                                   quiet=rep.folder_bar)
                workers.append(_Worker(argv, env, hand, out, rep, lock))
            for w in workers:
                w.finish()
        except KeyboardInterrupt:
            # a terminal's Ctrl-C reached the workers too; a signal to this process alone
            # is passed on. Each worker stops its fits and removes its unfinished folders.
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.send_signal(signal.SIGINT)
            for w in workers:
                try:
                    w.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
            raise
    return rep.summary()


def read_stems(path: str, n_photos: int) -> list[str]:
    """A worker's output names (``--worker-stems``), one per photo on its command line."""
    stems = json.loads(Path(path).read_text())
    if (not isinstance(stems, list) or len(stems) != n_photos
            or not all(isinstance(s, str) and s for s in stems)):
        raise ValueError(f"{path}: expected {n_photos} output names")
    return stems
