"""What users get: real photos, real detection, every output written, timed end to end.

    python bench/users.py cli   --photos DIR [--device cuda] [--batch-sizes 1,8] [--workers 1,4]
                                [--cold-runs 3]
    python bench/users.py warm  --photos DIR [--device cuda] [--count 8]
    python bench/users.py serve --photos DIR [--device cuda] [--clients 1,32] [--seconds 120]
                                [--warmup-photos N] [--remote-folder 64]

``cli``: ``ffhquv fit`` as a user runs it (a new process each time): one photo cold, then the
whole folder with each batch size (photos/s). ``warm``: photo after photo through the in-process
pipeline (the one ``ffhquv fit`` uses) once warm, with the per-stage split (detect, the
fitter's stages, eyeballs, export, writing). ``serve``: ``ffhquv serve all`` with N concurrent
clients, each ReconstructStream then downloading every artifact, for a fixed time, after a
warm-up round (every replica's first photo is not a warm one); throughput,
latency percentiles, errors and the batch sizes the fitter reported; with ``--remote-folder``
then ``ffhquv fit --remote`` of a folder against the same server. Each row samples the GPU's
utilisation (NVML, else ``nvidia-smi``) while it runs.
"""

from __future__ import annotations

import argparse
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

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as ffhquv_cli/__init__.py sets it

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, table, write_json  # noqa: E402

PRESETS = {"fast": 1, "standard": 2, "best": 3}
DEVICES = {"auto": 0, "cpu": 1, "cuda": 2}
SPY_RATE = 100  # py-spy samples a second (--spy)


class GpuSampler:
    """Samples GPU utilisation (percent of time a kernel ran) every ``period`` seconds."""

    def __init__(self, period: float = 0.2):
        self.period, self.samples = period, []
        self._stop = threading.Event()
        self._read = self._nvml() or self._smi()
        self._t = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _nvml():
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
        except Exception:  # noqa: BLE001 - no NVML here
            return None

    @staticmethod
    def _smi():
        if shutil.which("nvidia-smi") is None:
            return None

        def read() -> float:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, timeout=5).stdout
            return float(out.split()[0])
        return read

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.samples.append(self._read())
            except Exception:  # noqa: BLE001
                return

    def __enter__(self):
        if self._read is not None:
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def photos_in(folder: str, count: int | None = None) -> list[Path]:
    ps = sorted(p for p in Path(folder).iterdir()
                if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if count:
        ps = (ps * (count // max(1, len(ps)) + 1))[:count]
    return ps


def folder_of(photos: list[Path], n: int, dst: Path) -> Path:
    """``n`` photos (repeating the list, under distinct names) in a fresh folder ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = photos[i % len(photos)]
        os.link(p, dst / f"{i:03d}_{p.name}") if _same_fs(p, dst) else shutil.copy(
            p, dst / f"{i:03d}_{p.name}")
    return dst


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False


def _fit_cmd(inputs: list[str], out: Path, args, batch: int | None = None,
             workers: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "ffhquv_cli", "fit", *inputs, "-o", str(out), "--preset",
           args.preset, "--device", args.device, "--overwrite"]
    if batch:
        cmd += ["--batch-size", str(batch)]
    if workers:
        cmd += ["--workers", str(workers)]
    return cmd


def _reports(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/report.json"))]


def run_cli(args) -> list[dict]:
    photos = photos_in(args.photos)
    rows = []
    env = {**os.environ, "FFHQUV_LOG_LEVEL": "WARNING", "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.cold_runs):
            out = Path(tmp) / f"cold{r}"
            cmd = _fit_cmd([str(photos[r % len(photos)])], out, args)
            if args.spy:
                Path(args.spy).mkdir(parents=True, exist_ok=True)
                cmd = ["py-spy", "record", "--idle", "--threads", "-r", str(SPY_RATE), "-f",
                       "raw", "-o", str(Path(args.spy) / f"cold{r}.txt"), "--", *cmd]
            with GpuSampler() as g:
                t = time.perf_counter()
                p = subprocess.run(cmd, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t
            if args.spy and (Path(args.spy) / f"cold{r}.txt").exists():
                from bench.stacks import summarise
                (Path(args.spy) / f"cold{r}_summary.txt").write_text(summarise(
                    (Path(args.spy) / f"cold{r}.txt").read_text(), SPY_RATE))
            rep = _reports(out)
            rows.append({"what": "ffhquv fit, 1 photo, cold (new process)"
                         + (", under py-spy" if args.spy else ""), "photos": 1,
                         "batch": 1, "wall_s": wall, "photos_per_s": 1 / wall,
                         "fit_s": rep[0]["timings_s"]["total"] if rep else None,
                         "rasteriser": rep[0].get("backend") if rep else None,
                         "gpu_busy_pct": g.mean, "rc": p.returncode})
            if p.returncode:
                print(p.stderr[-2000:], file=sys.stderr)
        folders = [(int(b), int(w)) for b in args.batch_sizes.split(",") if b
                   for w in args.workers.split(",") if w]
        for b, w in folders:
            src = folder_of(photos, args.count, Path(tmp) / f"in{b}-{w}")
            out = Path(tmp) / f"out{b}-{w}"
            with GpuSampler() as g:
                t = time.perf_counter()
                p = subprocess.run(_fit_cmd([str(src)], out, args, batch=b, workers=w),
                                   env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t
            reps = _reports(out)
            sizes = [r_["batch_size"] for r_ in reps]
            rows.append({"what": f"ffhquv fit, folder of {args.count}, --batch-size {b}"
                         + (f", --workers {w}" if w else ""), "workers": w,
                         "photos": len(reps), "batch": b, "wall_s": wall,
                         "photos_per_s": len(reps) / wall,
                         "batch_sizes_seen": ",".join(str(s) for s in sorted(set(sizes))),
                         "rasteriser": reps[0].get("backend") if reps else None,
                         "gpu_busy_pct": g.mean, "rc": p.returncode})
            if p.returncode:
                print(p.stderr[-2000:], file=sys.stderr)
            shutil.rmtree(out, ignore_errors=True)
    return rows


def run_warm(args) -> list[dict]:
    import asyncio

    from ffhquv.pb import common_pb2, gateway_pb2
    from ffhquv_cli.commands import write_output_dir
    from gateway.backends import LocalBackends
    from gateway.orchestrator import Orchestrator

    photos = photos_in(args.photos, args.count + 1)
    opts = gateway_pb2.Options(preset=PRESETS[args.preset], device_hint=DEVICES[args.device])

    async def main() -> list[dict]:
        be = LocalBackends(device=args.device, max_batch=1)
        orch = Orchestrator(be)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, p in enumerate(photos):
                req = gateway_pb2.ReconstructRequest(
                    request_id=p.stem, options=opts,
                    image=common_pb2.Image(data=p.read_bytes(), filename=p.name))
                with GpuSampler() as g:
                    t = time.perf_counter()
                    res = await orch.run(req)
                    tw = time.perf_counter()
                    write_output_dir(Path(tmp) / f"{i}_{p.stem}", res.files, True)
                    t_end = time.perf_counter()
                m = res.metrics
                rows.append({"what": "first (cold in process)" if i == 0 else "warm",
                             "photo": p.name, "total_s": t_end - t,
                             "detect_s": m.get("detect_s"), "fit_s": m.get("fit_s"),
                             "stage1_s": m.get("seconds_stage1"),
                             "stage2_s": m.get("seconds_stage2"),
                             "stage3_s": m.get("seconds_stage3"),
                             "outputs_s": m.get("seconds_outputs"),
                             "eyeballs_s": m.get("eyeballs_s"), "export_s": m.get("export_s"),
                             "write_s": t_end - tw, "files": len(res.files),
                             "gpu_busy_pct": g.mean})
        await be.close()
        return rows

    rows = asyncio.run(main())
    warm = [r for r in rows if r["what"] == "warm"]
    if warm:
        med = {"what": "warm, median", "photo": f"{len(warm)} photos"}
        for k in rows[0]:
            if k.endswith("_s") or k == "gpu_busy_pct":
                vals = [r[k] for r in warm if r.get(k) is not None]
                med[k] = float(np.median(vals)) if vals else None
        rows.append(med)
    return rows


def _spy_serve(folder: str, pid: int, clients: int, secs: float,
               gil: bool = False) -> subprocess.Popen:
    """py-spy on ``serve all`` and its children while the clients run (CPU samples only,
    without pausing the processes: ``--nonblocking``; with ``gil`` only the thread holding
    each process's GIL), into ``FOLDER/serveN.txt``."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--subprocesses", "--threads", "--nonblocking",
         *(["--gil"] if gil else []),
         "-r", str(SPY_RATE // 2), "-f", "raw", "--duration", str(max(5, int(secs) - 5)),
         "-o", str(Path(folder) / f"serve{clients}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _spy_summary(spy: subprocess.Popen, folder: str, clients: int, photos: float) -> None:
    """Wait for the recording; write its summary (``bench/stacks.py --every``) beside it,
    headed by the photos finished in the recorded time (the row's rate times the recording's
    length: CPU seconds a photo = s / photos)."""
    from bench.stacks import summarise

    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
    raw = Path(folder) / f"serve{clients}.txt"
    if raw.exists():
        (Path(folder) / f"serve{clients}_summary.txt").write_text(
            f"~{photos:.0f} photos finished by {clients} clients while recorded\n"
            + summarise(raw.read_text(), SPY_RATE // 2, 60, every=True))


#: the stages of a served photo in its result's metrics (the gateway's timings) and in its
#: report.json (the fitter's, for the whole batch the photo was fitted in); eyeballs_s is the
#: eyeball call's own time, eyeballs_wait_s what the request waited for it after the fit (the
#: eyeballs start on the fit's geometry event)
GATEWAY_SPLIT = ("detect_s", "fit_s", "eyeballs_s", "eyeballs_wait_s", "export_s")
FIT_SPLIT = ("stage1", "stage2", "stage3", "outputs")
LATENCIES = "latencies_s"  # a serve row's every photo, written to the JSON, not printed


def run_serve(args) -> list[dict]:
    import grpc

    from bench.load import free_port, host_cpu_ticks, tree_cpu_by_service, tree_rss
    from ffhquv.pb import common_pb2, gateway_pb2, gateway_pb2_grpc
    from ffhquv.server import channel
    from ffhquv_cli.commands import fitter_replicas, gateway_replicas

    photos = [(p.read_bytes(), p.name) for p in photos_in(args.photos)]
    fitters = fitter_replicas(args.device)
    port = free_port()
    env = {**os.environ, "FFHQUV_LOG_LEVEL": "WARNING"}
    if args.max_concurrent:
        env["FFHQUV_MAX_CONCURRENT"] = str(args.max_concurrent)
    t_start = time.perf_counter()
    # serve all's own log (warnings and errors: FFHQUV_LOG_LEVEL) where --serve-log says, so a
    # start that fails or hangs on the GPU machine says why
    log = open(args.serve_log or os.devnull, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "ffhquv_cli", "serve", "all", "--port",
                             str(port), "--metrics-port", "-1", "--device", args.device],
                            env=env, stderr=log)
    address = f"127.0.0.1:{port}"
    rows = []
    # a timeout's SIGTERM ends this process through the finally below (serve all with it)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        ready_s = _await_ready(proc, address, timeout=600)
        progress(f"serve all ready in {ready_s:.1f} s")
        opts = gateway_pb2.Options(preset=PRESETS[args.preset], device_hint=DEVICES[args.device])

        def one(stub, i: int) -> tuple[str, float, int | None, dict[str, float]]:
            data, name = photos[i % len(photos)]
            req = gateway_pb2.ReconstructRequest(image=common_pb2.Image(data=data, filename=name),
                                                 options=opts)
            t = time.perf_counter()
            try:
                result = None
                for ev in stub.ReconstructStream(req, timeout=600):
                    if ev.WhichOneof("event") == "result":
                        result = ev.result
                t_result = time.perf_counter() - t
                bs, split, got = None, {}, 0
                for art in result.artifacts:
                    buf = bytearray()
                    for ch in stub.GetArtifact(gateway_pb2.GetArtifactRequest(
                            artifact_id=art.id), timeout=120):
                        buf.extend(ch.data)
                    got += len(buf)
                    if art.name == "report.json":
                        rep = json.loads(bytes(buf))
                        bs = rep["batch_size"]
                        split = {k: float(rep["timings_s"].get(k, 0.0)) for k in FIT_SPLIT}
                dt = time.perf_counter() - t
                split.update({k: float(result.metrics.get(k, 0.0)) for k in GATEWAY_SPLIT})
                split["download_s"] = dt - t_result
                split["download_mb"] = got / 1e6
                return "OK", dt, bs, split
            except grpc.RpcError as e:
                return e.code().name, time.perf_counter() - t, None, {}

        # warm-up: the latency is a warm one, and every replica's first photo pays its
        # first use (serve all runs several gateways, fitters, exporters, ...): a round of
        # photos on as many connections at once, so that each process has served one
        n_warm = args.warmup_photos if args.warmup_photos >= 0 else 2 * max(fitters, 1)

        def warm_one(i: int) -> None:
            with channel(address, own_connection=True) as ch:
                one(gateway_pb2_grpc.ReconstructionStub(ch), i)

        warmers = [threading.Thread(target=warm_one, args=(i,)) for i in range(n_warm)]
        for t in warmers:
            t.start()
        for t in warmers:
            t.join()
        progress(f"warm-up round of {n_warm} photos done at {time.perf_counter() - t_start:.1f} s")
        for n in [int(x) for x in args.clients.split(",") if x and int(x) > 0]:
            results: list[tuple[str, float, int | None, dict[str, float]]] = []
            lock = threading.Lock()
            secs = args.seconds_single if n == 1 and args.seconds_single else args.seconds
            end = time.perf_counter() + secs

            def client(ci: int, n=n, end=end, results=results, lock=lock) -> None:
                # each client its own connection, as separate users have
                with channel(address, own_connection=not args.one_connection) as ch:
                    stub = gateway_pb2_grpc.ReconstructionStub(ch)
                    i = ci
                    while time.perf_counter() < end:
                        r = one(stub, i)
                        i += n
                        with lock:
                            results.append(r)
                        if r[0] == "RESOURCE_EXHAUSTED":
                            time.sleep(0.2)

            peak = 0
            cpu0 = tree_cpu_by_service(proc.pid)
            host0, me0 = host_cpu_ticks(), os.times()
            spy = (_spy_serve(args.spy, proc.pid, n, secs, args.spy_gil)
                   if args.spy and n > 1 else None)
            with GpuSampler() as g:
                t0 = time.perf_counter()
                threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
                for t in threads:
                    t.start()
                while any(t.is_alive() for t in threads):
                    peak = max(peak, tree_rss(proc.pid))
                    time.sleep(1.0)
                wall = time.perf_counter() - t0
            cpu1 = tree_cpu_by_service(proc.pid)
            host1, me1 = host_cpu_ticks(), os.times()
            if spy is not None:
                _spy_summary(spy, args.spy, n, len(results) * max(5, int(secs) - 5) / wall)
            ok = np.array([dt for c, dt, _, _ in results if c == "OK"])
            # where the cores went: CPU seconds per finished photo, by service
            cpu = {k: (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) / max(len(ok), 1) for k in cpu1}
            # the clients' own process (same host), and how busy the whole host was
            cpu["clients"] = ((me1.user + me1.system) - (me0.user + me0.system)) / max(len(ok), 1)
            host_busy = (100.0 * (host1[0] - host0[0]) / (host1[1] - host0[1])
                         if host1[1] > host0[1] else None)
            codes: dict[str, int] = {}
            for c, _, _, _ in results:
                codes[c] = codes.get(c, 0) + 1
            sizes = [b for c, _, b, _ in results if b]
            splits = [sp for c, _, _, sp in results if c == "OK" and sp]
            gws = gateway_replicas()  # FFHQUV_GATEWAY_REPLICAS, else serve all's default
            conn = ", 1 connection" if args.one_connection else ""
            rows.append({"what": f"serve all, {n} clients, {secs:.0f} s, {fitters} fitters, "
                                 f"{gws} gateways{conn}",
                         "clients": n, "fitters": fitters, "ok": int(len(ok)), "wall_s": wall,
                         "photos_per_s": len(ok) / wall,
                         "p50_s": float(np.percentile(ok, 50)) if len(ok) else None,
                         "p95_s": float(np.percentile(ok, 95)) if len(ok) else None,
                         "mean_batch": float(np.mean(sizes)) if sizes else None,
                         "gpu_busy_pct": g.mean, "host_busy_pct": host_busy,
                         "peak_rss_gb": peak / 2 ** 30,
                         "ready_s": ready_s,
                         "cpu_s_per_photo": ", ".join(f"{k} {v:.2f}" for k, v in
                                                      sorted(cpu.items(), key=lambda x: -x[1])),
                         "codes": ", ".join(f"{k}={v}" for k, v in sorted(codes.items())),
                         # what a client downloads a photo (every artifact), median
                         "mb_per_photo": (float(np.median([sp["download_mb"] for sp in splits]))
                                          if splits else None),
                         # medians: the gateway's stages as it saw them, the fitter's own
                         # stages of the batch the photo was in, the artifacts' download
                         "split_s": ", ".join(
                             f"{k.removesuffix('_s')} {np.median([sp[k] for sp in splits]):.2f}"
                             for k in (*GATEWAY_SPLIT, *FIT_SPLIT, "download_s")
                             if splits and all(k in sp for sp in splits)),
                         # every photo's seconds, in the JSON only (a p50 of 20 photos moves
                         # by ~0.1 s between runs: compare the distributions)
                         LATENCIES: [round(float(x), 4) for x in ok]})
            table(rows[-1:], [c for c in rows[-1] if c != LATENCIES])
        for flight in ([int(x) for x in str(args.in_flight).split(",") if x]
                       if args.remote_folder else []):
            rows.append(_remote_folder(args, address, fitters, flight))
            table(rows[-1:], list(rows[-1]))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return rows


def _remote_folder(args, address: str, fitters: int, in_flight: int) -> dict:
    """``ffhquv fit --remote`` of a folder of ``--remote-folder`` photos against the running
    ``serve all``, as a user with a server runs it: a new CLI process (its start included),
    every output written into its folders."""
    env = {**os.environ, "FFHQUV_LOG_LEVEL": "WARNING", "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        src = folder_of(photos_in(args.photos), args.remote_folder, Path(tmp) / "in")
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "ffhquv_cli", "fit", str(src), "-o", str(out),
               "--remote", address, "--preset", args.preset]
        if in_flight:
            cmd += ["--in-flight", str(in_flight)]
        with GpuSampler() as g:
            t = time.perf_counter()
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t
        if p.returncode:
            print(p.stderr[-2000:], file=sys.stderr)
        reps = _reports(out)
        return {"what": f"ffhquv fit --remote (serve all), folder of {args.remote_folder}, "
                        f"--in-flight {in_flight or 'default'}, {fitters} fitters",
                "photos": len(reps), "wall_s": wall, "photos_per_s": len(reps) / wall,
                "files_per_photo": (sum(len(list(d.iterdir())) for d in out.iterdir())
                                    / max(len(reps), 1)) if out.is_dir() else 0,
                "gpu_busy_pct": g.mean, "rc": p.returncode}


def progress(msg: str) -> None:
    """A dated progress line on stderr (a long run's log says where it is)."""
    print(f"# {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def _await_ready(proc: subprocess.Popen, address: str, timeout: float) -> float:
    """Seconds until serve all at ``address`` answers SERVING; RuntimeError at once if it
    exits first, TimeoutError after ``timeout`` s."""
    from ffhquv_cli.commands import wait_healthy

    t0 = time.perf_counter()
    while True:
        try:
            wait_healthy(address, timeout=5)
            return time.perf_counter() - t0
        except TimeoutError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"serve all exited with {proc.returncode} before it was ready "
                               "(its log: --serve-log)")
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"serve all not ready after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("cli", "warm", "serve"))
    ap.add_argument("--photos", required=True, help="folder of real photos")
    ap.add_argument("--device", choices=tuple(DEVICES), default="auto")
    ap.add_argument("--preset", choices=tuple(PRESETS), default="standard")
    ap.add_argument("--count", type=int, default=64, help="photos per folder run / warm run")
    ap.add_argument("--batch-sizes", default="1,8", help="cli: --batch-size values")
    ap.add_argument("--workers", default="0",
                    help="cli: --workers values, each folder run once per value and batch "
                         "size (0 = the CLI's default)")
    ap.add_argument("--cold-runs", type=int, default=2, help="cli: cold one-photo runs")
    ap.add_argument("--spy", default=None, metavar="DIR",
                    help="cli: record each cold run with py-spy (all threads, waits included) "
                         "into DIR/coldN.txt and its summary (bench/stacks.py) into "
                         "DIR/coldN_summary.txt; serve: each many-clients row, every process, "
                         "CPU samples only, into DIR/serveN.txt and DIR/serveN_summary.txt; "
                         "py-spy must be on PATH")
    ap.add_argument("--spy-gil", action="store_true",
                    help="serve: --spy records only the thread holding each process's GIL")
    ap.add_argument("--clients", default="1,32",
                    help="serve: concurrent clients per row (0: none)")
    ap.add_argument("--seconds", type=float, default=120.0, help="serve: time per row")
    ap.add_argument("--warmup-photos", type=int, default=-1,
                    help="serve: photos sent at once before the timed rows, each on its own "
                         "connection (default: twice the fitter replicas)")
    ap.add_argument("--seconds-single", type=float, default=0.0,
                    help="serve: time of the 1-client row (0: --seconds)")
    ap.add_argument("--max-concurrent", type=int, default=0, help="serve: gateway limit")
    ap.add_argument("--one-connection", action="store_true",
                    help="serve: every client on one shared connection (gRPC's default within "
                         "a process; the rows before the eighteenth session); default: a "
                         "connection each, as separate users")
    ap.add_argument("--remote-folder", type=int, default=0, metavar="N",
                    help="serve: after the client rows, `ffhquv fit --remote` of a folder of N "
                         "photos against the same serve all (a new CLI process, timed whole)")
    ap.add_argument("--in-flight", default="0",
                    help="serve: --remote-folder's --in-flight values, a run each (0: the "
                         "CLI's default), e.g. 16,32,64")
    ap.add_argument("--serve-log", default=None, metavar="FILE",
                    help="serve: serve all's stderr appended here (default: discarded)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    meta = header(f"users: {args.mode}, preset {args.preset}, device {args.device}")
    rows = {"cli": run_cli, "warm": run_warm, "serve": run_serve}[args.mode](args)
    table(rows, [c for c in dict.fromkeys(k for r in rows for k in r) if c != LATENCIES])
    write_json(args.json, meta, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
