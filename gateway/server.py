"""The public gRPC API: ``ffhquv.gateway.v1.Reconstruction`` on an asyncio server.

Admission control: at most ``max_concurrent`` reconstructions run at once and at most
``max_queue`` wait; a request beyond that gets RESOURCE_EXHAUSTED at once, so memory stays
bounded. Requests carry an idempotency key (``request_id``): a stored result is returned as is,
and a request whose twin is still running waits for the same run. When every client of a run
goes away, the run is cancelled and the cancellation reaches the backend calls.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
import uuid
from dataclasses import dataclass

import grpc
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ffhquv import metrics, tracing
from ffhquv.errors import (
    Busy,
    FfhquvError,
    ImageTooLarge,
    InvalidImage,
    InvalidInput,
    details_trailer,
    image_error,
    rpc_status,
    status_of,
)
from ffhquv.pb import common_pb2, gateway_pb2, gateway_pb2_grpc
from ffhquv.server import SERVER_OPTIONS, gone_code
from gateway.backends import BACKEND_SERVICES
from gateway.orchestrator import Orchestrator, PipelineOutput, validate_request
from gateway.security import AsyncBearerAuth
from gateway.storage import ArtifactStore, StoredResult, check_id

log = logging.getLogger(__name__)
SERVICE_NAME = "ffhquv.gateway.v1.Reconstruction"
MAX_ARTIFACT_ID = 400
# Event loops of stopped in-thread gateways, kept open and referenced (see start_in_thread).
_STOPPED_LOOPS: list[asyncio.AbstractEventLoop] = []


def _check_image(data: bytes, max_bytes: int) -> None:
    """The detector's decode checks that need no pixel decode (format, header size, PNG CRCs,
    JPEG data against its header): a corrupt upload is refused here in milliseconds instead of
    waiting in the queue for the detector."""
    from services.detector.decode import check_structure

    try:
        check_structure(data, max_bytes=max_bytes)
    except InvalidInput as e:
        raise image_error(e) from None


@dataclass
class GatewayLimits:
    max_concurrent: int = 1
    max_queue: int = 8
    max_image_bytes: int = 30 * 1024 * 1024
    max_chunk_bytes: int = 4 * 1024 * 1024


class _Run:
    """One reconstruction shared by every request with its id."""

    def __init__(self, task: asyncio.Task):
        self.task = task
        self.waiters = 0
        self.listeners: list[asyncio.Queue] = []
        self.queued = True  # counted in the servicer's waiting total


def _result_from_stored(stored: StoredResult) -> gateway_pb2.ReconstructResult:
    res = gateway_pb2.ReconstructResult()
    res.ParseFromString(base64.b64decode(stored.meta["result"]))
    del res.artifacts[:]
    for a in stored.artifacts:
        res.artifacts.add(id=a.id, name=a.name, media_type=a.media_type,
                          size_bytes=a.size_bytes, sha256=a.sha256)
        if a.name.endswith(".zip"):
            res.bundle_artifact_id = a.id
    return res


def _status(err: BaseException) -> tuple[grpc.StatusCode, str, tuple]:
    """``(code, message, trailing metadata)`` a call ends with: for a typed error its status
    with google.rpc details (:func:`ffhquv.errors.status_of`); a failed backend call's code,
    message and details pass through unchanged (details are added when it had none)."""
    if isinstance(err, grpc.aio.AioRpcError):
        code, message = err.code(), err.details() or "backend error"
        trailer = details_trailer(err.trailing_metadata())
        if not trailer:
            trailer = rpc_status(code, message, reason=code.name).trailing_metadata
        return code, message, tuple(trailer)
    if not isinstance(err, FfhquvError):
        log.error("unhandled error", exc_info=err)
    st = status_of(err)
    return st.code, st.details, tuple(st.trailing_metadata)


class ReconstructionServicer(gateway_pb2_grpc.ReconstructionServicer):
    def __init__(self, orchestrator: Orchestrator, store: ArtifactStore,
                 limits: GatewayLimits | None = None):
        self.orchestrator = orchestrator
        self.store = store
        self.limits = limits or GatewayLimits()
        self._runs: dict[str, _Run] = {}
        self._sem: asyncio.Semaphore | None = None
        self._waiting = 0
        self._running = 0

    # -- admission and shared runs ----------------------------------------------------------------
    def _admit(self) -> None:
        if self._waiting + self._running >= self.limits.max_queue + self.limits.max_concurrent:
            raise Busy(f"server busy: {self._running} running and {self._waiting} queued "
                       f"(limit {self.limits.max_queue}); retry later")

    def _dequeue(self, run: _Run) -> None:
        if run.queued:
            run.queued = False
            self._waiting -= 1
            metrics.QUEUE_DEPTH.labels("gateway").set(self._waiting)

    async def _execute(self, rid: str, req: gateway_pb2.ReconstructRequest) -> StoredResult:
        """Run one admitted request (``_waiting`` was already counted by the caller)."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.limits.max_concurrent)
        run = self._runs[rid]

        async def progress(p: common_pb2.Progress) -> None:
            for q in run.listeners:
                q.put_nowait(p)

        entered = False
        try:
            await progress(common_pb2.Progress(stage=common_pb2.STAGE_QUEUED, fraction=0.0,
                                               message=f"{self._waiting} waiting"))
            async with self._sem:
                entered = True
                self._dequeue(run)
                self._running += 1
                metrics.INFLIGHT_FITS.inc()
                try:
                    out: PipelineOutput = await self.orchestrator.run(req, progress)
                finally:
                    self._running -= 1
                    metrics.INFLIGHT_FITS.dec()
        finally:
            if not entered:
                self._dequeue(run)
        res = gateway_pb2.ReconstructResult(
            request_id=rid, metrics=out.metrics, faces=out.faces,
            selected_face=out.selected_face, coefficients=out.coefficients,
            warnings=out.warnings)
        meta = {"result": base64.b64encode(res.SerializeToString()).decode(),
                "created": time.time()}
        return await asyncio.to_thread(self.store.put, rid, out.files, meta)

    async def _reconstruct(self, request: gateway_pb2.ReconstructRequest,
                           listener: asyncio.Queue | None) -> gateway_pb2.ReconstructResult:
        if not request.image.data:
            raise InvalidImage("image is empty: send the JPEG or PNG bytes in image.data",
                               field="image.data")
        if len(request.image.data) > self.limits.max_image_bytes:
            raise ImageTooLarge(f"image is {len(request.image.data)} bytes; the limit is "
                                f"{self.limits.max_image_bytes} bytes", field="image.data")
        validate_request(request)
        rid = check_id(request.request_id) if request.request_id else uuid.uuid4().hex
        tracing.tag_request(rid)
        stored = await asyncio.to_thread(self.store.get_result, rid)
        if stored is not None:
            return _result_from_stored(stored)
        run = self._runs.get(rid)
        if run is None:
            await asyncio.to_thread(_check_image, request.image.data, self.limits.max_image_bytes)
            self.orchestrator.preflight(request)
            self._admit()
            self._waiting += 1
            metrics.QUEUE_DEPTH.labels("gateway").set(self._waiting)
            req = gateway_pb2.ReconstructRequest()
            req.CopyFrom(request)
            req.request_id = rid
            run = _Run(asyncio.get_running_loop().create_task(self._execute_guarded(rid, req)))
            self._runs[rid] = run
            # A task cancelled before it ever ran skips _execute's own bookkeeping.
            run.task.add_done_callback(lambda t, r=run, k=rid: (
                self._dequeue(r), self._runs.pop(k, None),
                None if t.cancelled() else t.exception()))
        run.waiters += 1
        if listener is not None:
            run.listeners.append(listener)
        try:
            stored = await asyncio.shield(run.task)
            return _result_from_stored(stored)
        except asyncio.CancelledError:
            run.waiters -= 1
            if run.waiters == 0 and not run.task.done():
                log.info("client gone, cancelling run", extra={"request_id": rid})
                run.task.cancel()
            raise
        finally:
            if listener is not None and listener in run.listeners:
                run.listeners.remove(listener)

    async def _execute_guarded(self, rid: str, req) -> StoredResult:
        try:
            return await self._execute(rid, req)
        finally:
            self._runs.pop(rid, None)

    # -- RPCs ---------------------------------------------------------------------------------
    async def Reconstruct(self, request, context):
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await self._reconstruct(request, None)
        except asyncio.CancelledError:
            code = gone_code(context)
            raise
        except Exception as e:  # noqa: BLE001 - every failure ends with a detailed status
            code, message, trailer = _status(e)
            await context.abort(code, message, trailer)
        finally:
            metrics.REQUESTS.labels("Reconstruction", "Reconstruct", code.name).inc()
            metrics.LATENCY.labels("Reconstruction", "Reconstruct").observe(
                time.perf_counter() - t0)

    async def ReconstructStream(self, request, context):
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        listener: asyncio.Queue = asyncio.Queue()
        task = asyncio.get_running_loop().create_task(self._reconstruct(request, listener))
        getter: asyncio.Future | None = None
        try:
            while True:
                getter = asyncio.ensure_future(listener.get())
                try:
                    done, _ = await asyncio.wait({task, getter},
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not getter.done():
                        getter.cancel()
                if getter in done:
                    yield gateway_pb2.ReconstructEvent(progress=getter.result())
                    continue
                while not listener.empty():
                    yield gateway_pb2.ReconstructEvent(progress=listener.get_nowait())
                result = task.result()
                yield gateway_pb2.ReconstructEvent(progress=common_pb2.Progress(
                    stage=common_pb2.STAGE_DONE, fraction=1.0,
                    elapsed_s=time.perf_counter() - t0))
                yield gateway_pb2.ReconstructEvent(result=result)
                return
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: cancelled while grpc sent what this generator yielded (the
            # cancellation lands in grpc's send, and the generator is closed at its yield)
            code = gone_code(context)
            raise
        except Exception as e:  # noqa: BLE001 - every failure ends with a detailed status
            code, message, trailer = _status(e)
            await context.abort(code, message, trailer)
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            if not task.done():
                task.cancel()
                task.add_done_callback(lambda t: None if t.cancelled() else t.exception())
            metrics.REQUESTS.labels("Reconstruction", "ReconstructStream", code.name).inc()
            metrics.LATENCY.labels("Reconstruction", "ReconstructStream").observe(
                time.perf_counter() - t0)

    async def GetArtifact(self, request, context):
        code = grpc.StatusCode.OK
        try:
            size = request.chunk_size or (1 << 20)
            if size > self.limits.max_chunk_bytes:
                raise InvalidInput(f"chunk_size must be at most {self.limits.max_chunk_bytes}",
                                   field="chunk_size")
            if len(request.artifact_id) > MAX_ARTIFACT_ID:
                raise InvalidInput(f"artifact_id is {len(request.artifact_id)} characters; the "
                                   f"limit is {MAX_ARTIFACT_ID}", field="artifact_id")
            art, chunks = await asyncio.to_thread(self.store.open_artifact, request.artifact_id)
            it = chunks(size)
            offset = 0
            while True:
                data = await asyncio.to_thread(next, it, None)
                if data is None:
                    break
                yield common_pb2.ArtifactChunk(offset=offset, data=data,
                                               total_size=art.size_bytes)
                offset += len(data)
            if art.size_bytes == 0:
                yield common_pb2.ArtifactChunk(offset=0, data=b"", total_size=0)
        except (asyncio.CancelledError, GeneratorExit):  # as ReconstructStream's
            code = gone_code(context)
            raise
        except Exception as e:  # noqa: BLE001 - every failure ends with a detailed status
            code, message, trailer = _status(e)
            await context.abort(code, message, trailer)
        finally:
            metrics.REQUESTS.labels("Reconstruction", "GetArtifact", code.name).inc()


class GatewayServer:
    """An asyncio gRPC server for the gateway, runnable in its own thread (tests, ``serve all``)
    or in the foreground (:meth:`serve_forever`)."""

    def __init__(self, orchestrator: Orchestrator, store: ArtifactStore, *, port: int = 0,
                 host: str = "127.0.0.1", limits: GatewayLimits | None = None,
                 token: str | None = None,
                 credentials: grpc.ServerCredentials | None = None,
                 metrics_port: int | None = None, close_backends=None,
                 reuse_port: bool = False):
        self.orchestrator = orchestrator
        # share the port with other gateway processes (SO_REUSEPORT: the kernel spreads the
        # connections; serve all's gateway replicas); off, a taken port is an error
        self.reuse_port = reuse_port
        self.store = store
        self.host, self.port = host, port
        self.limits = limits or GatewayLimits()
        self.token = token
        self.credentials = credentials
        self.metrics_port = metrics_port
        self.close_backends = close_backends
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health_async.HealthServicer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._stop_event: asyncio.Event | None = None
        self._stop_grace = 5.0
        self._stop_event_set = False
        self._servicer: ReconstructionServicer | None = None

    async def start_async(self) -> int:
        options = [(k, int(self.reuse_port) if k == "grpc.so_reuseport" else v)
                   for k, v in SERVER_OPTIONS]
        self._server = grpc.aio.server(interceptors=[AsyncBearerAuth(self.token)],
                                       options=options)
        servicer = self._servicer = ReconstructionServicer(self.orchestrator, self.store,
                                                           self.limits)
        gateway_pb2_grpc.add_ReconstructionServicer_to_server(servicer, self._server)
        self._health = health_async.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        watch = getattr(self.orchestrator.backends, "watch_health", None)
        if watch is not None:
            self._backends_up: dict[str, bool] = {}
            for name in BACKEND_SERVICES.values():  # until the first answer
                await self._health.set(name, health_pb2.HealthCheckResponse.UNKNOWN)
            await watch(self._backend_changed)
        reflection.enable_server_reflection(
            [SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME], self._server)
        target = f"{self.host}:{self.port}"
        bound = (self._server.add_secure_port(target, self.credentials) if self.credentials
                 else self._server.add_insecure_port(target))
        if bound == 0:
            raise OSError(f"could not bind {target}")
        self.port = bound
        await self._server.start()
        if self.metrics_port is not None:
            metrics.serve_metrics(self.metrics_port, addr=self.host)
        log.info("gateway serving", extra={"port": bound, "auth": bool(self.token),
                                           "tls": self.credentials is not None})
        return bound

    async def _backend_changed(self, name: str, up: bool) -> None:
        """Health semantics: ``""`` (liveness) stays SERVING while the process runs; the
        gateway's service name (readiness) is SERVING only while every backend is; each backend's
        own service name mirrors that backend."""
        if self._health is None or self._stop_event_set:
            return
        self._backends_up[name] = up
        serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                                health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._health.set(BACKEND_SERVICES[name], serving if up else not_serving)
        ready = all(self._backends_up.get(n, True) for n in BACKEND_SERVICES)
        await self._health.set(SERVICE_NAME, serving if ready else not_serving)

    async def stop_async(self, grace: float = 10.0) -> None:
        self._stop_event_set = True
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        # Runs whose clients are gone by now: cancel them and wait, so that no task is left
        # pending when the loop closes.
        runs = [r.task for r in self._servicer._runs.values()] if self._servicer else []
        for t in runs:
            t.cancel()
        if runs:
            await asyncio.gather(*runs, return_exceptions=True)
        if self.close_backends is not None:
            await self.close_backends()

    # -- thread helpers -----------------------------------------------------------------------
    def start_in_thread(self) -> int:
        """Serve on a private event loop in a daemon thread; returns the bound port."""
        ready = threading.Event()
        err: list[BaseException] = []

        async def main() -> None:
            self._stop_event = asyncio.Event()
            try:
                await self.start_async()
            except BaseException as e:  # noqa: BLE001
                err.append(e)
                ready.set()
                return
            ready.set()
            await self._stop_event.wait()
            await self.stop_async(self._stop_grace)

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(main())
            pending = asyncio.all_tasks(self._loop)
            for t in pending:
                t.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            # The loop is left open, not closed: grpc's aio poller thread hands completion
            # events of this loop's calls (a cancelled fitter call, a closing channel) to the
            # loop with call_soon_threadsafe, possibly after it stopped; on a closed loop that
            # raises "Event loop is closed" inside whichever live loop drains the queue next
            # (another gateway of the process), logged there at error level. On a stopped,
            # open loop the late callback is queued and never runs.
            _STOPPED_LOOPS.append(self._loop)
            self._stopped.set()

        self._thread = threading.Thread(target=run, name="gateway", daemon=True)
        self._thread.start()
        ready.wait()
        if err:
            raise err[0]
        return self.port

    def stop(self, grace: float = 5.0) -> None:
        if self._loop is None or self._stopped.is_set():
            return
        self._stop_grace = grace
        self._loop.call_soon_threadsafe(self._stop_event.set)
        self._stopped.wait(timeout=grace + 15)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"
