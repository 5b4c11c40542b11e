"""How the orchestrator reaches the four services: over gRPC, or in this process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ffhquv import metrics, tracing
from ffhquv.errors import BackendUnavailable
from ffhquv.pb import (
    detector_pb2,
    detector_pb2_grpc,
    exporter_pb2,
    exporter_pb2_grpc,
    eyeball_pb2,
    eyeball_pb2_grpc,
    fitter_pb2,
    fitter_pb2_grpc,
)
from ffhquv.server import CHANNEL_OPTIONS

log = logging.getLogger(__name__)


@dataclass
class RetryPolicy:
    """Retries on UNAVAILABLE with exponential backoff and full jitter."""

    attempts: int = 5
    initial_backoff: float = 0.3
    max_backoff: float = 3.0

    def backoff(self, attempt: int) -> float:
        cap = min(self.max_backoff, self.initial_backoff * 2 ** attempt)
        return random.uniform(cap / 2, cap)


def _aio_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    # Internal services: reconnect quickly after a restart instead of gRPC's default
    # exponential backoff up to two minutes.
    opts = [*CHANNEL_OPTIONS, ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]
    if target.startswith(("dns:", "ipv4:")):
        # Headless Services (one address per pod) or `serve all`'s replicas
        # ("ipv4:127.0.0.1:a,127.0.0.1:b"): balance calls, not connections.
        opts.append(("grpc.lb_policy_name", "round_robin"))
    # The request id travels to the services as x-request-id (their log lines carry it).
    icpt = tracing.client_interceptors()
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=opts, interceptors=icpt)
    return grpc.aio.insecure_channel(target, options=opts, interceptors=icpt)


BACKEND_SERVICES = {
    "detector": detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name,
    "fitter": fitter_pb2.DESCRIPTOR.services_by_name["Fitter"].full_name,
    "eyeball": eyeball_pb2.DESCRIPTOR.services_by_name["Eyeball"].full_name,
    "exporter": exporter_pb2.DESCRIPTOR.services_by_name["Exporter"].full_name,
}
HealthCallback = Callable[[str, bool], Awaitable[None]]


class GrpcBackends:
    """The services at their addresses (``host:port`` or ``dns:///name:port``).

    ``token`` (the internal token) is sent as ``authorization: Bearer`` on every call. After
    :meth:`watch_health` each backend's grpc.health.v1 state is followed by a Watch stream (over
    the same channel, so the same transport and credentials); :meth:`down` names the backends
    that are known to be down, so that the gateway refuses new work at once instead of queueing
    it behind a dead service.
    """

    def __init__(self, detector: str, fitter: str, eyeball: str, exporter: str,
                 credentials: grpc.ChannelCredentials | None = None,
                 retry: RetryPolicy | None = None, token: str | None = None):
        self.addresses = {"detector": detector, "fitter": fitter, "eyeball": eyeball,
                          "exporter": exporter}
        self.retry = retry or RetryPolicy()
        self.credentials = credentials
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._up: dict[str, bool | None] = dict.fromkeys(self.addresses)
        self._since: dict[str, float] = dict.fromkeys(self.addresses, time.monotonic())
        self._watchers: list[asyncio.Task] = []
        self._fitter_devices: frozenset[int] | None = None

    # -- health ---------------------------------------------------------------------------------
    def down(self, names: Iterable[str] | None = None) -> list[str]:
        """The backends among ``names`` (default: all) whose last health state was not SERVING
        (unknown counts as up: the call itself will tell)."""
        return [n for n in (names or self.addresses) if self._up.get(n) is False]

    def fitter_devices(self) -> frozenset[int] | None:
        """The ``common.v1.Device`` values the fitter said it can fit on (``DescribeModel``,
        asked each time it comes up, before it counts as up); None while unknown."""
        return self._fitter_devices

    async def _describe_fitter(self, timeout: float = 30.0) -> None:
        try:
            resp = await self._fitter.DescribeModel(fitter_pb2.DescribeModelRequest(),
                                                    timeout=timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as e:
            self._fitter_devices = None
            log.warning("fitter did not describe itself", extra={
                "address": self.addresses["fitter"], "why": f"{e.code().name}: {e.details()}"})
            return
        # an older fitter lists no devices: unknown, the fitter itself will tell
        self._fitter_devices = frozenset(resp.devices) or None

    def down_for(self, name: str) -> float:
        """Seconds since ``name`` changed state."""
        return time.monotonic() - self._since[name]

    async def watch_health(self, on_change: HealthCallback | None = None,
                           retry_s: float = 0.5) -> None:
        """Follow every backend's health on this event loop until :meth:`close`."""
        loop = asyncio.get_running_loop()
        for name in self.addresses:
            self._watchers.append(loop.create_task(self._watch(name, on_change, retry_s),
                                                   name=f"health-{name}"))

    async def _set(self, name: str, up: bool, on_change: HealthCallback | None,
                   why: str = "") -> None:
        if self._up.get(name) is up:
            return
        first = self._up.get(name) is None
        self._up[name] = up
        if name == "fitter" and not up:
            self._fitter_devices = None  # a new fitter may have other devices
        self._since[name] = time.monotonic()
        metrics.BACKEND_UP.labels(name).set(1 if up else 0)
        if not (first and up):
            (log.info if up else log.warning)(
                "backend up" if up else "backend down",
                extra={"backend": name, "address": self.addresses[name], "why": why[:200]})
        if on_change is not None:
            await on_change(name, up)

    async def _watch(self, name: str, on_change: HealthCallback | None, retry_s: float) -> None:
        while True:
            stub = health_pb2_grpc.HealthStub(self._channel(name))
            why = "health stream ended"
            try:
                call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
                async for resp in call:
                    serving = resp.status == health_pb2.HealthCheckResponse.SERVING
                    if serving and name == "fitter" and self._up.get(name) is not True:
                        await self._describe_fitter()
                    await self._set(name, serving, on_change,
                                    health_pb2.HealthCheckResponse.ServingStatus.Name(
                                        resp.status))
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                why = f"{e.code().name}: {e.details()}"
            except Exception as e:  # noqa: BLE001 - a watcher must not die
                why = f"{type(e).__name__}: {e}"
            await self._set(name, False, on_change, why)
            await asyncio.sleep(retry_s)

    def _channel(self, service: str) -> grpc.aio.Channel:
        # aio channels belong to the event loop that creates them: make them lazily, on the
        # server's loop.
        ch = self._channels.get(service)
        if ch is None:
            ch = self._channels[service] = _aio_channel(self.addresses[service], self.credentials)
        return ch

    @property
    def _detector(self):
        return detector_pb2_grpc.DetectorStub(self._channel("detector"))

    @property
    def _fitter(self):
        return fitter_pb2_grpc.FitterStub(self._channel("fitter"))

    @property
    def _eyeball(self):
        return eyeball_pb2_grpc.EyeballStub(self._channel("eyeball"))

    @property
    def _exporter(self):
        return exporter_pb2_grpc.ExporterStub(self._channel("exporter"))

    async def close(self) -> None:
        for t in self._watchers:
            t.cancel()
        for t in self._watchers:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._watchers.clear()
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def _unary(self, service: str, call: Callable[..., Any], req: Any,
                     timeout: float | None) -> Any:
        end = None if timeout is None else time.monotonic() + timeout
        last: grpc.aio.AioRpcError | None = None
        for attempt in range(self.retry.attempts):
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                return await call(req, timeout=left, wait_for_ready=False,
                                  metadata=self.metadata)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                last = e
                log.warning("backend unavailable, retrying",
                            extra={"service": service, "attempt": attempt + 1,
                                   "details": e.details()})
                await asyncio.sleep(self.retry.backoff(attempt))
        raise BackendUnavailable(
            f"{service} service unavailable at {self.addresses[service]} after "
            f"{self.retry.attempts} attempts: {last.details() if last else 'deadline reached'}")

    async def detect(self, req: detector_pb2.DetectRequest,
                     timeout: float | None) -> detector_pb2.DetectResponse:
        return await self._unary("detector", self._detector.Detect, req, timeout)

    async def place_eyeballs(self, req: eyeball_pb2.PlaceRequest,
                             timeout: float | None) -> eyeball_pb2.PlaceResponse:
        return await self._unary("eyeball", self._eyeball.Place, req, timeout)

    async def export(self, req: exporter_pb2.ExportRequest,
                     timeout: float | None) -> exporter_pb2.ExportResponse:
        return await self._unary("exporter", self._exporter.Export, req, timeout)

    async def fit(self, req: fitter_pb2.FitRequest,
                  timeout: float | None) -> AsyncIterator[fitter_pb2.FitEvent]:
        """Streams the fit; a stream broken by UNAVAILABLE is restarted (a fit is idempotent),
        on another replica when the target resolves to several."""
        end = None if timeout is None else time.monotonic() + timeout
        last: grpc.aio.AioRpcError | None = None
        for attempt in range(self.retry.attempts):
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            call = self._fitter.Fit(req, timeout=left, metadata=self.metadata)
            try:
                async for ev in call:
                    yield ev
                return
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                last = e
                log.warning("fitter unavailable, retrying",
                            extra={"attempt": attempt + 1, "details": e.details()})
                await asyncio.sleep(self.retry.backoff(attempt))
            finally:
                call.cancel()
        raise BackendUnavailable(
            f"fitter service unavailable at {self.addresses['fitter']} after "
            f"{self.retry.attempts} attempts: {last.details() if last else 'deadline reached'}")


async def in_own_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``await fn(*args)`` run on a new thread that ends with the call.

    For work that may run parallel torch ops beside the fitter in one process (the CPU
    rasteriser of the exporter's previews, the warm-ups of ``ffhquv fit``): a thread that
    ran one keeps its own OpenMP team while it lives, and once a process's OpenMP threads
    outnumber its cores, libgomp stops spinning between parallel regions in every team. asyncio's
    long-lived executor threads did that: on 2 cores, every fit after the first export of an
    ``ffhquv fit`` folder run had a 9.7 s stage 3 instead of 4.3 s. A thread's team goes
    with the thread."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="local-call")
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    finally:
        pool.shutdown(wait=False)


async def iterate_in_thread(make: Callable[[threading.Event], Iterator[Any]]) -> AsyncIterator[Any]:
    """Run a blocking generator in a worker thread and yield its items here.

    ``make(cancel)`` builds the generator; ``cancel`` is set when the consumer stops early
    (client gone, task cancelled), and the generator should stop at its next check.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    done = object()

    def post(entry: tuple) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, entry)
            return True
        except RuntimeError:  # the consumer stopped early and its loop has closed since
            cancel.set()
            return False

    def worker() -> None:
        try:
            for item in make(cancel):
                if not post((item, None)) or cancel.is_set():
                    break
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            post((done, e))
            return
        post((done, None))

    thread = threading.Thread(target=worker, name="local-backend", daemon=True)
    thread.start()
    try:
        while True:
            item, err = await queue.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        cancel.set()


class LocalBackends:
    """The service cores in this process (the embedded single-machine default)."""

    def __init__(self, device: str = "auto", checkpoints_dir: str | None = None,
                 topo_dir: str | None = None, max_batch: int | None = None,
                 max_delay_s: float | None = None):
        from services.detector.servicer import DetectorServicer
        from services.exporter.servicer import ExporterServicer
        from services.eyeball.servicer import EyeballServicer
        from services.fitter.servicer import FitterServicer

        self.detector = DetectorServicer(checkpoints_dir=checkpoints_dir)
        self.fitter = FitterServicer(device=device, checkpoints_dir=checkpoints_dir,
                                     topo_dir=topo_dir, max_batch=max_batch,
                                     max_delay_s=max_delay_s)
        self.eyeball = EyeballServicer()
        self.exporter = ExporterServicer(device)  # previews on the GPU when there is one

    async def detect(self, req, timeout):
        return await asyncio.to_thread(self.detector.handle, req)

    async def place_eyeballs(self, req, timeout):
        return await asyncio.to_thread(self.eyeball.handle, req)

    async def export(self, req, timeout):
        # its previews may render with torch on the CPU: see in_own_thread (the detector and
        # the eyeballs run no torch and keep their per-thread dlib state in the pool's threads)
        return await in_own_thread(self.exporter.handle, req)

    async def fit(self, req, timeout):
        async for ev in iterate_in_thread(lambda cancel: self.fitter.events(req, cancel)):
            yield ev

    def fitter_devices(self) -> frozenset[int]:
        """The devices the in-process fitter can fit on."""
        return frozenset(self.fitter.devices())

    async def close(self) -> None:
        self.fitter.close()
