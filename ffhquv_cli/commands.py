"""Implementations of the CLI subcommands (imported lazily by :mod:`ffhquv_cli.main`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ffhquv import config, vocab
from ffhquv_cli.machine import cuda_available, gpu_memory_gb, threads_env
from ffhquv_cli.reporting import EXIT_USAGE, OUTPUT_MARKERS, FitReporter

log = logging.getLogger("ffhquv")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# -- fit ---------------------------------------------------------------------------------
RETRYABLE = ("RESOURCE_EXHAUSTED", "UNAVAILABLE")


class UsageError(Exception):
    """Bad command-line usage (missing input, unwritable output, bad option): the CLI prints
    one line and exits with code 2 before any work starts."""


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Expand files and folders (non-recursive) into a sorted list of image files."""
    out: list[Path] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir()
                              if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise UsageError(f"no such file or folder: {s}")
    if not out:
        raise UsageError("no .jpg/.jpeg/.png images found in " + ", ".join(inputs))
    return out


def check_output_writable(out: Path) -> None:
    """Create ``out`` if needed and prove that a file can be written in it (UsageError)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {out}: {e.strerror or e}") from e
    try:
        fd, probe = tempfile.mkstemp(prefix=".ffhquv-write-check-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"output folder {out} is not writable: {e.strerror or e}") from e


def _options(args: argparse.Namespace):
    from ffhquv.pb import detector_pb2, gateway_pb2

    opts = gateway_pb2.Options(
        preset=vocab.preset_to_proto(args.preset), face_model=args.face_model,
        texture_size=args.texture_size, device_hint=vocab.device_to_proto(args.device),
        detector_backend=(detector_pb2.DETECTOR_BACKEND_CNN if args.detector == "cnn"
                          else detector_pb2.DETECTOR_BACKEND_HOG),
        seed=args.seed)
    if args.face == "largest":
        opts.face_selection = detector_pb2.FACE_SELECTION_LARGEST
    elif args.face == "only":
        opts.face_selection = detector_pb2.FACE_SELECTION_ONLY
    else:
        try:
            opts.face_index = int(args.face)
        except ValueError as e:
            raise UsageError(f"--face must be 'largest', 'only' or an index, got {args.face}") \
                from e
        opts.face_selection = detector_pb2.FACE_SELECTION_INDEX
    opts.units = getattr(args, "units", None) or ""
    opts.subdivision = getattr(args, "subdivision", None) or 0
    for f in filter(None, (s.strip().lower() for s in args.formats.split(","))):
        if f not in vocab.EXPORT_FORMATS:
            raise UsageError(f"unknown format {f!r}; choose from "
                             f"{', '.join(vocab.EXPORT_FORMATS)}")
        opts.formats.append(vocab.format_to_proto(f))
    return opts


def _unique_stems(photos: list[Path]) -> list[str]:
    from gateway.orchestrator import output_stem

    seen: dict[str, int] = {}
    stems = []
    for p in photos:
        s = output_stem(p.name)
        n = seen.get(s, 0)
        seen[s] = n + 1
        stems.append(s if n == 0 else f"{s}_{p.suffix.lstrip('.').lower()}{n}")
    return stems


def write_output_dir(final: Path, files: dict[str, bytes], overwrite: bool) -> None:
    """Write one photo's files so that ``final`` appears complete or not at all."""
    from services.exporter.obj import OutputDir

    with OutputDir(final, overwrite=overwrite) as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)


def fit_batch_size(requested: int, device: str) -> int:
    """Photos per batched fit: ``requested``, else 1 on CPU and the fitter's CUDA default."""
    if requested > 0:
        return requested
    from services.fitter.core import resolve_device
    from services.fitter.servicer import CUDA_MAX_BATCH

    return CUDA_MAX_BATCH if resolve_device(device).type == "cuda" else 1


def _todo(photos: list[Path], stems: list[str], out: Path, overwrite: bool,
          rep: FitReporter) -> list[tuple[Path, str]]:
    """The (photo, output name) pairs to fit: those whose output folder is already there are
    reported skipped unless ``overwrite``."""
    todo = []
    for photo, stem in zip(photos, stems, strict=True):
        if (out / stem).exists() and not overwrite:
            rep.skipped(photo, stem, out / stem)
            continue
        todo.append((photo, stem))
    return todo


async def _fit_local(args, todo: list[tuple[Path, str]], out: Path, rep: FitReporter) -> int:
    """Runs several photos' pipelines at once: the fitter's batcher fits those that reach it
    together (``--batch-size`` photos a batch) while the next photos are detected and finished
    ones get their eyeballs, exports and files; the fitter warms up on a thread meanwhile."""
    from ffhquv.errors import FfhquvError
    from ffhquv.pb import common_pb2, gateway_pb2
    from gateway.backends import LocalBackends, in_own_thread
    from gateway.orchestrator import Orchestrator

    opts = _options(args)
    # no batch larger than the photos there are: the batcher would wait (max_delay_s) for
    # batch-mates that never come (one photo on CUDA: a second of its cold start)
    batch = min(fit_batch_size(args.batch_size, args.device), max(1, len(todo)))
    # photos in flight: enough to fill the next batch while one is fitted
    window = max(2, 2 * batch + 2)
    backends = LocalBackends(device=args.device, checkpoints_dir=args.checkpoints_dir,
                             topo_dir=args.topo_dir, max_batch=batch,
                             # photos reach the fitter as their detection ends: wait a little
                             # for batch-mates when it is idle (it is rarely idle under load)
                             max_delay_s=0.0 if batch == 1 else 1.0)
    orch = Orchestrator(backends)
    # the fitter's tables and the eyeballs' texture layers are built while the first photos
    # are detected; no throw-away fit: the first real fit follows at once
    warm = asyncio.create_task(in_own_thread(
        backends.fitter.warm, args.face_model, None, args.preset, args.texture_size, None,
        False))
    eyes_warm = asyncio.create_task(in_own_thread(backends.eyeball.warm))
    slots = asyncio.Semaphore(window)

    async def one(photo: Path, stem: str) -> None:
        final = out / stem
        async with slots:
            try:
                data = await asyncio.to_thread(photo.read_bytes)
            except OSError as e:
                rep.read_failed(photo, stem, e)
                return
            bar = rep.progress(stem)
            try:
                req = gateway_pb2.ReconstructRequest(
                    request_id=stem, image=common_pb2.Image(data=data, filename=photo.name),
                    options=opts)

                async def progress(p, bar=bar):
                    bar.update(p)

                res = await orch.run(req, progress)
                await asyncio.to_thread(write_output_dir, final, res.files, args.overwrite)
            except FfhquvError as e:
                bar.close(False)
                rep.failed(photo, stem, e.code.name, str(e), e.reason, e.field or "")
                return
            except OSError as e:
                bar.close(False)
                rep.write_failed(photo, stem, final, e)
                return
            bar.close(True)
        rep.ok(photo, stem, final, dict(res.metrics), list(res.warnings), list(res.files))

    try:
        await asyncio.gather(*(one(p, s) for p, s in todo))
    finally:
        for name, task in (("fitter", warm), ("eyeball", eyes_warm)):
            try:
                await task
            except Exception as e:  # noqa: BLE001 - the fits themselves report real problems
                log.warning("%s warm-up failed: %s", name, e)
        await backends.close()
    return rep.summary()


def retry_delay(err, attempt: int, base: float = 0.5, cap: float = 30.0) -> float | None:
    """Seconds to wait before retrying a failed call, None when it must not be retried.

    RESOURCE_EXHAUSTED and UNAVAILABLE are retried: exponential backoff with jitter
    (``base * 2**attempt`` capped at ``cap``, drawn from its upper half), never shorter than
    the server's RetryInfo delay (itself stretched by up to 20 % so that clients told the same
    delay do not come back together).
    """
    from ffhquv.errors import status_details

    if err.code().name not in RETRYABLE:
        return None
    exp = min(cap, base * 2 ** attempt)
    delay = random.uniform(exp / 2, exp)
    hint = status_details(err).retry_after
    if hint is not None:
        delay = max(delay, hint * random.uniform(1.0, 1.2))
    return delay


def _fit_remote(args, todo: list[tuple[Path, str]], out: Path, rep: FitReporter) -> int:
    """The photos through a gateway, ``args.in_flight`` of them at once (threads over one
    channel): the gateway admits them, the fitter batches what arrives together, and one
    photo's failure or retries do not hold up the others. Results are reported as they end."""
    import threading
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from ffhquv.errors import status_details
    from ffhquv.pb import common_pb2, gateway_pb2, gateway_pb2_grpc
    from ffhquv.server import channel

    opts = _options(args)
    token = read_token_of(args)
    metadata = [("authorization", f"Bearer {token}")] if token else None
    stopping = threading.Event()  # Ctrl-C: the photos still running are not reported

    def one(stub, photo: Path, stem: str) -> None:
        if stopping.is_set():
            return
        final = out / stem
        try:
            data = photo.read_bytes()
        except OSError as e:  # gone or unreadable since the folder was listed
            rep.read_failed(photo, stem, e)
            return
        bar = rep.progress(stem)
        # One id for every attempt: the gateway joins or returns the same run.
        req = gateway_pb2.ReconstructRequest(
            request_id=f"{stem}-{uuid.uuid4().hex[:12]}",
            image=common_pb2.Image(data=data, filename=photo.name), options=opts)

        def once():
            result = None
            for ev in stub.ReconstructStream(req, metadata=metadata):
                if ev.WhichOneof("event") == "progress":
                    bar.update(ev.progress)
                else:
                    result = ev.result
            if result is None:
                raise RuntimeError("gateway stream ended without a result")
            files = {}
            for art in result.artifacts:
                buf = bytearray()
                for chunk in stub.GetArtifact(
                        gateway_pb2.GetArtifactRequest(artifact_id=art.id), metadata=metadata):
                    buf.extend(chunk.data)
                files[art.name] = bytes(buf)
            return result, files

        end = time.monotonic() + args.retry_deadline
        attempt = 0
        try:
            while True:
                try:
                    result, files = once()
                    break
                except grpc.RpcError as e:
                    delay = retry_delay(e, attempt)
                    if stopping.is_set() or delay is None or time.monotonic() + delay > end:
                        raise
                    rep.note(f"{photo}: {e.code().name} ({e.details()}); retrying in "
                             f"{delay:.1f} s")
                    if stopping.wait(delay):
                        return
                    attempt += 1
            write_output_dir(final, files, args.overwrite)
        except grpc.RpcError as e:
            bar.close(False)
            if stopping.is_set():
                return
            d = status_details(e)
            field = d.field_violations[0][0] if d.field_violations else ""
            rep.failed(photo, stem, e.code().name, e.details() or "", d.reason, field)
            return
        except OSError as e:
            bar.close(False)
            rep.write_failed(photo, stem, final, e)
            return
        except RuntimeError as e:  # a stream that ended without a result
            bar.close(False)
            rep.failed(photo, stem, "INTERNAL", str(e))
            return
        bar.close(True)
        rep.ok(photo, stem, final, dict(result.metrics), list(result.warnings), list(files))

    with channel(args.remote) as ch:
        stub = gateway_pb2_grpc.ReconstructionStub(ch)
        pool = ThreadPoolExecutor(max_workers=min(args.in_flight, len(todo)),
                                  thread_name_prefix="ffhquv-remote")
        jobs = [pool.submit(one, stub, photo, stem) for photo, stem in todo]
        try:
            for job in jobs:
                job.result()
        except BaseException:
            # Ctrl-C (or a bug): nothing more is sent, what runs is dropped with the channel;
            # a photo's folder is written whole or not at all (write_output_dir)
            stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    return rep.summary()


def _check_landmark_model(path: str | None) -> None:
    if not path:
        return
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"landmark model missing: {p} (--landmark-model)")
    os.environ["FFHQUV_LANDMARK_MODEL"] = str(p.resolve())


def cmd_fit(args: argparse.Namespace) -> int:
    from ffhquv import logs

    logs.setup("text", level=config.log_level("WARNING"))
    photos = collect_inputs(args.inputs)
    out = Path(args.output)
    check_output_writable(out)
    if args.remote and args.landmark_model:
        raise UsageError("--landmark-model applies to local fits; with --remote set "
                         "FFHQUV_LANDMARK_MODEL on the detector service")
    if args.remote and args.workers > 1:
        raise UsageError("--workers applies to local fits; with --remote the gateway spreads "
                         "the photos over its services (--in-flight: how many at once)")
    if args.in_flight < 1:
        raise UsageError(f"--in-flight must be 1 or more, got {args.in_flight}")
    if args.workers < 0:
        raise UsageError(f"--workers must be 0 (the default) or more, got {args.workers}")
    _check_landmark_model(args.landmark_model)
    _options(args)  # option errors before any work
    stems = _unique_stems(photos)
    worker = bool(args.worker_stems)  # one of a --workers parent's processes
    if worker:
        from ffhquv.supervisor import die_with_parent
        from ffhquv_cli.workers import read_stems

        die_with_parent(signal.SIGINT)  # stops cleanly (no half-written folder) with it
        stems = read_stems(args.worker_stems, len(photos))
    rep = FitReporter(json_lines=args.json or worker, results=not worker,
                      progress=not args.no_progress)
    todo = _todo(photos, stems, out, args.overwrite, rep)
    if not todo:
        return rep.summary()
    rep.begin(len(todo))  # a folder's bar on a terminal (not in a worker: its parent's)
    if args.remote:
        return _fit_remote(args, todo, out, rep)
    if not worker:
        from ffhquv_cli.workers import fit_with_workers, fit_workers

        n = fit_workers(args.workers, args.device, len(todo))
        if n > 1:
            return fit_with_workers(args, todo, out, rep, n)
    return asyncio.run(_fit_local(args, todo, out, rep))


# -- serve -------------------------------------------------------------------------------
def _addr(flag: str | None, service: str) -> str | None:
    return flag or config.service_addr(service)


def _serve_service(args: argparse.Namespace) -> int:
    from ffhquv.server import build_server, serve_forever
    from ffhquv.supervisor import die_with_parent, stop_signals
    from gateway.security import BearerAuth, internal_token, server_credentials

    die_with_parent()
    signals = stop_signals()  # a child of serve all: SIGTERM only (it stops them in order)
    name = args.service
    if name == "detector":
        from services.detector.servicer import register
    elif name == "fitter":
        from services.fitter.servicer import make_register

        # warm before serving (health says SERVING only once warm); on CPU only when asked,
        # a throw-away fit there costs as much as a real one
        warm = config.fitter_warm()
        if warm is None:
            from services.fitter.core import resolve_device

            warm = resolve_device(args.device).type == "cuda"
        register = make_register(device=args.device, warm=warm)
    elif name == "eyeball":
        from services.eyeball.servicer import register
    else:
        from functools import partial

        from services.exporter.servicer import register

        register = partial(register, device=args.device)  # the previews' renderer
    ca, cert, key = _tls_paths(args)
    creds = server_credentials(cert, key, ca)
    # CPU services: a worker per core; the fitter's workers mostly wait in its batcher (one
    # per request of a batch, and more queued)
    cores = os.cpu_count() or 4
    workers = args.workers or {"detector": max(4, cores), "fitter": 64, "eyeball": max(4, cores),
                               "exporter": max(4, cores)}[name]
    token = internal_token()
    running = build_server(register, port=args.port, host=args.host, max_workers=workers,
                           metrics_port=_metrics_port(args), credentials=creds,
                           interceptors=[BearerAuth(token)] if token else ())
    if not token and creds is None:
        log.warning("no internal credentials: this service answers any caller that reaches "
                    "its port (set FFHQUV_INTERNAL_TOKEN[_FILE] or FFHQUV_TLS_CA for mTLS)")
    if args.port_file:
        Path(args.port_file).write_text(str(running.port))
    print(f"ffhquv {name} serving on {args.host}:{running.port}", file=sys.stderr, flush=True)
    serve_forever(running, signals=signals)
    return 0


def _metrics_port(args: argparse.Namespace) -> int | None:
    if args.metrics_port is None:
        return args.port + 1000 if args.port else 0
    return None if args.metrics_port < 0 else args.metrics_port


def _gateway(args: argparse.Namespace, addrs: dict[str, str]):
    from gateway.backends import GrpcBackends
    from gateway.orchestrator import Orchestrator
    from gateway.security import (
        channel_credentials,
        internal_token,
        server_credentials,
    )
    from gateway.server import GatewayLimits, GatewayServer
    from gateway.storage import LocalArtifactStore

    ca, cert, key = _tls_paths(args)
    backends = GrpcBackends(**addrs, credentials=channel_credentials(ca, cert, key),
                            token=internal_token())
    storage = Path(args.storage_dir) if args.storage_dir else config.storage_dir()
    store = LocalArtifactStore(storage, config.storage_max_bytes())
    max_queue, max_concurrent = gateway_admission(args)
    # several reconstructions at once, so the fitter's batcher has photos to batch and
    # detection / eyeballs / export of some overlap the fit of others
    limits = GatewayLimits(max_queue=max_queue, max_concurrent=max_concurrent)
    return GatewayServer(Orchestrator(backends), store, port=args.port, host=args.host,
                         limits=limits, token=read_token_of(args),
                         credentials=server_credentials(cert, key, ca),
                         metrics_port=_metrics_port(args), close_backends=backends.close,
                         reuse_port=bool(getattr(args, "reuse_port", False)))


def _tls_paths(args: argparse.Namespace) -> tuple[str | None, str | None, str | None]:
    """``(ca, cert, key)`` from the flags, else ``FFHQUV_TLS_CA/CERT/KEY``."""
    cert, key, ca = config.tls_files()
    return args.tls_ca or ca, args.tls_cert or cert, args.tls_key or key


def _run_gateway_forever(server, on_signal=None, port_file: str | None = None,
                         signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
                         told: EarlyStop | None = None) -> None:
    """Serve until one of ``signals`` (``on_signal()`` then), then drain the in-flight calls
    for ``FFHQUV_DRAIN_SECONDS``. ``told``: a stop signal caught before this loop handles
    them (:class:`EarlyStop`) stops it as soon as it serves."""
    async def main() -> None:
        await server.start_async()
        if port_file:
            Path(port_file).write_text(str(server.port))
        print(f"ffhquv gateway serving on {server.host}:{server.port}", file=sys.stderr,
              flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopping() -> None:
            if on_signal is not None:
                on_signal()
            stop.set()

        for sig in signals:
            loop.add_signal_handler(sig, stopping)
        if told is not None and told.caught:
            stopping()
        await stop.wait()
        await server.stop_async(config.drain_seconds())

    asyncio.run(main())


class EarlyStop:
    """SIGTERM and SIGINT caught from :meth:`catch` until the gateway's loop takes them over
    (:func:`_run_gateway_forever`'s ``told``).

    ``serve all``'s gateway replicas serve its port before its own gateway's loop handles
    the signals: a signal in between (a caller saw the port answer and stopped it) ended
    ``serve all`` at once, its children not stopped in order (SIGTERM: exit status -15;
    Ctrl-C: KeyboardInterrupt, 130). Seen in a fresh clone's suite, where that window holds
    the first import of the gateway's modules. The handler only notes the signal (no lock,
    no I/O in a signal handler); the loop then stops in order. Caught only for that window:
    the replicas' start, which has its own time limit, and the gateway's construction."""

    def __init__(self) -> None:
        self.caught = False

    def catch(self) -> None:
        def note(_signum, _frame) -> None:
            self.caught = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, note)


def wait_healthy(address: str, timeout: float = 120.0, credentials=None) -> None:
    """Block until ``address`` answers grpc.health.v1 SERVING (over TLS with
    ``credentials``: the same transport the callers use)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    end = time.monotonic() + timeout
    with (grpc.secure_channel(address, credentials) if credentials is not None
          else grpc.insecure_channel(address)) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"{address} not healthy after {timeout:.0f} s")
            time.sleep(0.2)


def spawn_service(name: str, extra: list[str] | None = None,
                  env: dict[str, str | None] | None = None,
                  port: int = 0, credentials=None) -> tuple[subprocess.Popen, str]:
    """Start ``ffhquv serve NAME`` in a child process on loopback ``port`` (0 = a free one);
    returns the process and its address once it is healthy (checked with ``credentials`` when
    the child serves TLS). ``env`` entries set to None are removed from the child's
    environment."""
    return await_service(name, *launch_service(name, extra, env, port),
                         credentials=credentials)


def launch_service(name: str, extra: list[str] | None = None,
                   env: dict[str, str | None] | None = None,
                   port: int = 0) -> tuple[subprocess.Popen, Path]:
    """The first half of :func:`spawn_service`: start the process, return it and the file
    where it will write its port."""
    port_file = Path(tempfile.mkstemp(prefix=f"ffhquv-{name}-", suffix=".port")[1])
    port_file.unlink()
    cmd = [sys.executable, "-m", "ffhquv_cli", "serve", name, "--port", str(port),
           "--metrics-port", "0", "--port-file", str(port_file), *(extra or [])]
    child_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(cmd, env={k: v for k, v in child_env.items() if v is not None})
    return proc, port_file


def await_service(name: str, proc: subprocess.Popen, port_file: Path,
                  credentials=None) -> tuple[subprocess.Popen, str]:
    """The second half of :func:`spawn_service`: wait for the port and for health."""
    end = time.monotonic() + 300
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} before serving")
        if time.monotonic() > end:
            proc.kill()
            raise TimeoutError(f"{name} did not start")
        time.sleep(0.1)
    address = f"127.0.0.1:{int(port_file.read_text())}"
    port_file.unlink(missing_ok=True)
    try:
        wait_healthy(address, credentials=credentials)
    except TimeoutError:
        proc.kill()
        proc.wait(timeout=10)
        raise
    return proc, address


def gateway_replicas() -> int:
    """Gateway processes of ``serve all`` (all on its public port): ``FFHQUV_GATEWAY_REPLICAS``,
    else one per 4 cores, 1 to 4. One process's event loop and GIL carry every request's
    orchestration and artifact downloads: about a core at 4 photos/s, where 32 clients
    waited 1.6 s for their downloads (BENCHMARKS.md, eighteenth session: 1 gateway 3.86
    photos/s, 2 gateways 4.91, 4 gateways 5.01)."""
    return _one_per_4_cores(config.gateway_replicas())


def _one_per_4_cores(n: int | None) -> int:
    """``n``, else one process per 4 cores, 1 to 4 (``serve all``'s CPU services and
    gateways)."""
    return n if n is not None else max(1, min(4, (os.cpu_count() or 1) // 4))


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port_free(host: str, port: int) -> None:
    """Refuse a public port another process holds (the replicas bind it with SO_REUSEPORT,
    which would otherwise share it with a stranger that set it too)."""
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise SystemExit(f"ffhquv serve all: cannot bind {host}:{port}: {e}") from None


def launch_gateway(args: argparse.Namespace, addrs: dict[str, str], port: int,
                   env: dict[str, str | None]) -> tuple[subprocess.Popen, Path]:
    """Start one more gateway process of ``serve all`` on ``port`` (shared, SO_REUSEPORT),
    calling the services at ``addrs``, with the parent's storage, limits, token and TLS;
    returns it and the file where it writes its port (:func:`await_service`)."""
    port_file = Path(tempfile.mkstemp(prefix="ffhquv-gateway-", suffix=".port")[1])
    port_file.unlink()
    cmd = [sys.executable, "-m", "ffhquv_cli", "serve", "gateway", "--port", str(port),
           "--host", args.host, "--reuse-port", "--metrics-port", "-1",
           "--port-file", str(port_file),
           "--max-queue", str(args.max_queue), "--max-concurrent", str(args.max_concurrent)]
    if args.storage_dir:
        cmd += ["--storage-dir", args.storage_dir]
    ca, cert, key = _tls_paths(args)
    token = read_token_of(args)
    child_env = {**os.environ, **env,
                 **{f"FFHQUV_{k.upper()}_ADDR": v for k, v in addrs.items()},
                 "FFHQUV_TLS_CA": ca and str(Path(ca).resolve()),
                 "FFHQUV_TLS_CERT": cert and str(Path(cert).resolve()),
                 "FFHQUV_TLS_KEY": key and str(Path(key).resolve()),
                 # the public token by the environment, never on a command line
                 "FFHQUV_AUTH_TOKEN": token, "FFHQUV_AUTH_TOKEN_FILE": None}
    proc = subprocess.Popen(cmd, env={k: v for k, v in child_env.items() if v is not None})
    return proc, port_file


def gateway_admission(args: argparse.Namespace) -> tuple[int, int]:
    """The gateway's ``(max_queue, max_concurrent)``: ``--max-queue`` / ``--max-concurrent``,
    else ``FFHQUV_MAX_QUEUE`` / ``FFHQUV_MAX_CONCURRENT`` (:mod:`ffhquv.config`)."""
    return (args.max_queue or config.max_queue(),
            args.max_concurrent or config.max_concurrent())


def read_token_of(args: argparse.Namespace) -> str | None:
    """The gateway's public bearer token from ``--token`` / ``--token-file``, else the
    environment (``serve``'s and ``fit --remote``'s)."""
    from gateway.security import read_token

    return read_token(args.token, getattr(args, "token_file", None))


def cpu_service_replicas() -> int:
    """Processes per CPU service (detector, eyeball, exporter) in ``serve all``:
    ``FFHQUV_SERVE_REPLICAS``, else one per 4 cores, 1 to 4."""
    return _one_per_4_cores(config.serve_replicas())


def fitter_replicas(device: str) -> int:
    """Fitter processes in ``serve all``: ``FFHQUV_FITTER_REPLICAS``, else one on the CPU and,
    on CUDA, 3 per 8 cores (1 to 6; at most one per :data:`FITTER_GPU_GB` of GPU memory)
    sharing the GPU: a fit's host work (texture completion,
    solves, numpy) holds one process's GIL while the GPU waits, so replicas on one device
    overlap it (BENCHMARKS.md, serve all rows: 4 fitters on 16 cores 2.5 photos/s, 2 fitters
    1.9, 1 fitter 0.9; eighteenth session, under MPS with 4 gateways: 4 fitters 5.0, 6 fitters
    6.0, 8 fitters 5.9)."""
    n = config.fitter_replicas()
    if n is not None:
        return n
    if device == "cpu" or (device == "auto" and not cuda_available()):
        return 1
    n = max(1, min(6, (os.cpu_count() or 1) * 3 // 8))
    gpu_gb = gpu_memory_gb()
    if gpu_gb is not None:  # each keeps its recorded steps and their memory (FITTER_GPU_GB)
        n = max(1, min(n, int(gpu_gb // FITTER_GPU_GB)))
    return n


#: GPU memory a ``serve all`` fitter may come to hold: batches up to 8 and the recorded steps
#: of each batch size kept (``FFHQUV_CUDA_GRAPH_PROGRAMS``); a smaller GPU gets fewer fitters
FITTER_GPU_GB = 8.0


#: ``serve all`` children given its ``--device``: the fitter, and the exporter for its previews
GPU_CHILDREN = ("fitter", "exporter")


def serve_all_compile_env(device: str) -> dict[str, str]:
    """The fitters' ``FFHQUV_COMPILE`` in ``serve all`` on CUDA when the user set none: on.
    A server pays the compile once at its start (ready after 26-45 s with torch's on-disk
    caches filled, 70 s without, against 10 s) and holds more host memory (the process tree's
    RSS 75-77 GB against 29 GB on a 16-core H100 host; by its growth Inductor's compile
    workers, a pool per fitter that ``TORCHINDUCTOR_COMPILE_THREADS`` sizes) for fused steps
    every photo after: 32 clients 10.3 photos/s against 8.85 (the fitter's host CPU 0.69 s a
    photo against 0.78), one client p50 1.10 s against 1.22 (BENCHMARKS.md, thirty-sixth
    session). ``ffhquv fit`` and ``serve fitter`` keep it off unless asked (a new process's
    first photo would wait for the compile); ``FFHQUV_COMPILE=0`` turns it off here too."""
    if config.env("FFHQUV_COMPILE") is not None:
        return {}
    if device == "cpu" or (device == "auto" and not cuda_available()):
        return {}
    return {"FFHQUV_COMPILE": "1"}


def serve_all_max_concurrent(n_fit: int) -> int:
    """The gateway's running reconstructions in ``serve all`` unless set: 16, or 8 per fitter
    process when there are more (each fitter batches what arrives; BENCHMARKS.md's serve rows
    with 4 fitters ran 32)."""
    return max(16, 8 * n_fit)


def service_threads(name: str, n_fit: int) -> int:
    """torch / OpenMP and OpenCV threads of one ``serve all`` child: the fitters share the
    cores, and the CPU services' replicas share a third of them each (their parallelism is
    the replicas; 16 threads in each of 4 exporter replicas spun 3 CPU seconds a photo on
    previews)."""
    cores = os.cpu_count() or 1
    if name == "fitter":
        return max(1, cores // max(1, n_fit))
    return max(1, cores // (3 * cpu_service_replicas()))


def thread_env(name: str, n_fit: int) -> dict[str, str]:
    """The environment of a ``serve all`` child: :func:`threads_env` of
    :func:`service_threads`."""
    return threads_env(service_threads(name, n_fit))


def cmd_serve(args: argparse.Namespace) -> int:
    from ffhquv import logs, tracing

    logs.setup("json")
    tracing.setup(args.service)  # on only when OTEL_TRACES_EXPORTER asks for it
    try:
        config.drain_seconds()  # a bad value fails the start, not the stop
    except ValueError as e:
        raise UsageError(str(e)) from e
    _check_landmark_model(args.landmark_model)
    if args.service != "fitter":
        from ffhquv.server import tune_allocator

        tune_allocator()  # flat RSS under load (the fitter keeps large freed arrays)
    if args.service in ("detector", "fitter", "eyeball", "exporter"):
        return _serve_service(args)
    if args.service == "gateway":
        addrs = {k: _addr(getattr(args, f"{k}_addr"), k)
                 for k in ("detector", "fitter", "eyeball", "exporter")}
        missing = [k for k, v in addrs.items() if not v]
        if missing:
            raise SystemExit("ffhquv serve gateway: set the addresses of "
                             + ", ".join(f"--{k}-addr / FFHQUV_{k.upper()}_ADDR"
                                         for k in missing))
        from ffhquv.supervisor import die_with_parent, stop_signals

        die_with_parent()  # a gateway replica of serve all goes with it
        _run_gateway_forever(_gateway(args, addrs), port_file=args.port_file,
                             signals=stop_signals())
        return 0
    return _serve_all(args)


def _serve_all(args: argparse.Namespace) -> int:
    """The four services as supervised child processes on free loopback ports, the gateway in
    this process.

    Inside the stack: with a CA (``--tls-ca``) every child serves mutual TLS with the same
    certificate and key, and the gateway and the health checks call them with it; without one
    the children serve plaintext on loopback. Either way every internal call carries the
    internal token (``FFHQUV_INTERNAL_TOKEN[_FILE]``, else a random one per start), passed to
    the children in their environment, never on a command line.
    """
    import secrets

    from ffhquv.supervisor import PARENT_PID_ENV, Supervisor
    from gateway.security import channel_credentials, internal_token

    ca, cert, key = _tls_paths(args)
    token = internal_token() or secrets.token_urlsafe(32)
    os.environ["FFHQUV_INTERNAL_TOKEN"] = token  # the gateway here reads it too
    os.environ.pop("FFHQUV_INTERNAL_TOKEN_FILE", None)
    env: dict[str, str | None] = {
        PARENT_PID_ENV: str(os.getpid()), "FFHQUV_INTERNAL_TOKEN": token,
        "FFHQUV_AUTH_TOKEN": None, "FFHQUV_AUTH_TOKEN_FILE": None}
    if ca:
        if not (cert and key):
            raise SystemExit("ffhquv serve all: --tls-ca needs --tls-cert and --tls-key")
        env.update({"FFHQUV_TLS_CA": str(Path(ca).resolve()),
                    "FFHQUV_TLS_CERT": str(Path(cert).resolve()),
                    "FFHQUV_TLS_KEY": str(Path(key).resolve())})
        creds = channel_credentials(ca, cert, key)
    else:
        env.update(dict.fromkeys(("FFHQUV_TLS_CA", "FFHQUV_TLS_CERT", "FFHQUV_TLS_KEY")))
        creds = None
    # The CPU services run as several processes on big machines (their Python work holds the
    # GIL, so threads of one process do not scale); the gateway balances calls over them.
    n_fit = fitter_replicas(args.device)
    names = [name for name in ("detector", "fitter", "eyeball", "exporter")
             for _ in range(n_fit if name == "fitter" else cpu_service_replicas())]
    # the processes share the cores: torch's intra-op threads (the exporter's and eyeball's
    # previews, the fitter's CPU work) split between them instead of each taking every core
    # and spinning (unless the user set OMP_NUM_THREADS)
    if not (args.max_concurrent or config.env("FFHQUV_MAX_CONCURRENT")):
        args.max_concurrent = serve_all_max_concurrent(n_fit)

    mps = _serve_all_mps(args.device)
    gpu_env = {} if mps is None else mps.env()
    fit_env = serve_all_compile_env(args.device)

    def env_of(name: str) -> dict[str, str | None]:
        return {**env, **thread_env(name, n_fit), **(gpu_env if name in GPU_CHILDREN else {}),
                **(fit_env if name == "fitter" else {})}
    sup = Supervisor()
    try:
        from concurrent.futures import ThreadPoolExecutor

        def start(port: int, name: str) -> tuple[subprocess.Popen, str]:
            extra = ["--device", args.device] if name in GPU_CHILDREN else []
            proc, port_file = launch_service(name, extra, env_of(name), port)
            sup.starting(proc)  # a stop meanwhile ends it
            try:
                return await_service(name, proc, port_file, credentials=creds)
            finally:
                sup.starting(proc, done=True)

        # Forked here, in the main thread (the parent-death signal follows the forking
        # thread), then they load and warm up side by side.
        launched = [launch_service(n, ["--device", args.device] if n in GPU_CHILDREN else [],
                                   env=env_of(n)) for n in names]
        with ThreadPoolExecutor(len(names)) as pool:
            started = list(pool.map(lambda ln: await_service(*ln, credentials=creds),
                                    [(n, *x) for n, x in zip(names, launched, strict=True)]))
        addrs: dict[str, str] = {}
        for i, (name, (proc, addr)) in enumerate(zip(names, started, strict=True)):
            key = name if names.count(name) == 1 else f"{name}-{names[:i].count(name)}"
            sup.add(key, lambda port, name=name: start(port, name), started=(proc, addr))
        for name in dict.fromkeys(names):
            found = [a for n, (_, a) in zip(names, started, strict=True) if n == name]
            addrs[name] = found[0] if len(found) == 1 else "ipv4:" + ",".join(found)
            print(f"ffhquv {name} on {addrs[name]}", file=sys.stderr, flush=True)
        # from here on the port may answer (the replicas): a stop signal is an orderly stop;
        # the gateway's modules imported first (the window short)
        import gateway.server  # noqa: F401
        told = EarlyStop()
        told.catch()
        _start_gateway_replicas(args, addrs, env, creds, sup)
        sup.start()
        # told to stop: every gateway drains at once (the replicas get SIGTERM now), the
        # services behind them are stopped only after (sup.stop)
        _run_gateway_forever(_gateway(args, addrs), on_signal=sup.begin_stop, told=told)
    finally:
        sup.stop(drain=config.drain_seconds())
        if mps is not None:
            mps.stop()
    return 0


def _start_gateway_replicas(args: argparse.Namespace, addrs: dict[str, str],
                            env: dict[str, str | None], creds, sup) -> int:
    """Start ``serve all``'s gateway processes beside the one in this process
    (:func:`gateway_replicas`), all on the public port with SO_REUSEPORT, each admitting its
    share of ``--max-concurrent`` / ``--max-queue``, under the supervisor. They share the
    artifact folder (a result stored by one is read by any); a replica has no metrics port.
    Returns how many were started."""
    n = gateway_replicas()
    if n <= 1:
        return 0
    if not args.port:
        args.port = _free_port(args.host)
    _check_port_free(args.host, args.port)
    args.reuse_port = True
    queue, running = gateway_admission(args)
    args.max_queue, args.max_concurrent = max(1, -(-queue // n)), max(1, -(-running // n))

    def start(_port: int) -> tuple[subprocess.Popen, str]:
        proc, port_file = launch_gateway(args, addrs, args.port, env)
        sup.starting(proc)  # a stop meanwhile ends it
        try:
            return await_service("gateway", proc, port_file, credentials=creds)
        finally:
            sup.starting(proc, done=True)

    for i in range(1, n):
        sup.add(f"gateway-{i}", start, started=start(args.port), stop_first=True)
    print(f"ffhquv gateway: {n} processes on port {args.port}", file=sys.stderr, flush=True)
    return n - 1


#: ``serve all``'s MPS folders: ``<tmp>/ffhquv-mps-<pid of serve all>-<random>``
MPS_FOLDER_PREFIX = "ffhquv-mps-"


def remove_stale_mps_folders(tmp: Path) -> list[Path]:
    """Remove the MPS folders of ``serve all`` processes that are gone (a killed ``serve all``
    cannot remove its own; its daemon ended with it). Returns the removed folders."""
    import shutil

    gone = []
    for d in tmp.glob(f"{MPS_FOLDER_PREFIX}*-*"):
        pid = d.name[len(MPS_FOLDER_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not d.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # that serve all still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's process
        shutil.rmtree(d, ignore_errors=True)
        gone.append(d)
    return gone


def _serve_all_mps(device: str):
    """The CUDA MPS daemon of ``serve all``'s GPU children (:func:`ffhquv.cuda.start_mps`), or
    None: ``FFHQUV_CUDA_MPS`` off, no GPU to serve on, a daemon already configured
    (``CUDA_MPS_PIPE_DIRECTORY`` set, e.g. a Kubernetes node's: used as it is), or, with
    ``auto``, the driver's MPS tools missing or failing (said on stderr; ``on`` exits)."""
    import shutil
    import tempfile

    from ffhquv.cuda import MPS_CONTROL, start_mps
    from ffhquv.errors import PreconditionFailed

    mode = config.cuda_mps()
    if mode == "off" or device == "cpu" or (device == "auto" and not cuda_available()):
        return None
    if os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        print("ffhquv serve all: using the MPS daemon of CUDA_MPS_PIPE_DIRECTORY",
              file=sys.stderr, flush=True)
        return None
    if mode == "auto" and shutil.which(MPS_CONTROL) is None:
        print(f"ffhquv serve all: no {MPS_CONTROL} on PATH: the GPU children share the GPU "
              "in time slices (FFHQUV_CUDA_MPS=off says so quietly)", file=sys.stderr,
              flush=True)
        return None
    remove_stale_mps_folders(Path(tempfile.gettempdir()))
    try:
        mps = start_mps(tempfile.mkdtemp(prefix=f"{MPS_FOLDER_PREFIX}{os.getpid()}-"))
        why = mps.probe()
        if why is not None:
            mps.stop()
            raise PreconditionFailed(f"a CUDA context under the MPS daemon failed: {why}")
    except PreconditionFailed as e:
        if mode == "on":
            raise SystemExit(f"ffhquv serve all: {e}") from e
        print(f"ffhquv serve all: no CUDA MPS ({e}); the GPU children share the GPU in time "
              "slices", file=sys.stderr, flush=True)
        return None
    print(f"ffhquv serve all: CUDA MPS daemon in {mps.folder}", file=sys.stderr, flush=True)
    return mps


# Top-level modules of the ``deploy`` extra (and the deploy package itself, which the service
# images leave out): when one is missing, ``ffhquv deploy`` says which extra to install.
DEPLOY_MODULES = ("ffhquv_deploy", "yaml", "kubernetes")
DEPLOY_EXTRA_HINT = ("ffhquv deploy needs the deploy tool and its 'deploy' extra (kubernetes, "
                     "kubernetes-validate, pyyaml): from a checkout, pip install -e '.[deploy]'")


def run_deploy(argv: list[str]) -> int:
    """``ffhquv deploy ARGS...``: the deploy tool (:mod:`ffhquv_deploy`), imported only now;
    exit code 2 with :data:`DEPLOY_EXTRA_HINT` when it or a module of its extra is missing."""
    try:
        from ffhquv_deploy import main

        return main(list(argv))
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in DEPLOY_MODULES:
            raise
        print(f"{DEPLOY_EXTRA_HINT} (missing module {e.name!r})", file=sys.stderr)
        return EXIT_USAGE


def cmd_deploy(args: argparse.Namespace) -> int:
    return run_deploy(args.deploy_args)


# -- clear -------------------------------------------------------------------------------
def cmd_clear(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if not out.is_dir():
        print(f"ffhquv clear: {out} is not a folder; nothing to do", file=sys.stderr)
        return 0
    targets = [d for d in sorted(out.iterdir()) if d.is_dir() and (
        d.name.startswith(".ffhquv-tmp") or any((d / m).exists() for m in OUTPUT_MARKERS))]
    if not targets:
        print(f"ffhquv clear: no ffhquv outputs in {out}", file=sys.stderr)
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise SystemExit(f"ffhquv clear: would remove {len(targets)} folders in {out}; "
                             "pass --yes to confirm")
        ans = input(f"remove {len(targets)} output folders in {out}? [y/N] ")
        if ans.strip().lower() not in ("y", "yes"):
            return 1
    for d in targets:
        shutil.rmtree(d)
    print(f"removed {len(targets)} output folders from {out}", file=sys.stderr)
    return 0


def cmd_build_model(args: argparse.Namespace) -> int:
    """``ffhquv build-model [--rebuild] [--preview DIR]``: build (or check) the cached default
    face model and say where it is and how long it took."""
    import time
    from pathlib import Path

    from services.fitter.facemodel.default import default_model_path, ensure_default_model

    path = default_model_path()
    cached = path.is_file() and not args.rebuild
    t0 = time.time()
    preview = Path(args.preview) if args.preview else None
    landmarker = None  # the builder falls back to dlib directly
    if not cached:
        try:
            from services.detector.core import Detector

            landmarker = Detector("hog").largest_face_landmarks
        except Exception as err:  # noqa: BLE001 - the detector is optional here
            log.warning("detector unavailable (%s); landmarks from dlib directly", err)
    path = ensure_default_model(rebuild=args.rebuild, progress=True, preview_dir=preview,
                                landmarker=landmarker)
    took = time.time() - t0
    state = "cached" if cached else f"built in {took:.1f} s"
    print(f"default face model: {path} ({state})")
    if preview is not None:
        print(f"previews: {preview}")
    return 0
