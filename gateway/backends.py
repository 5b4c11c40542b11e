"""How the orchestrator reaches the four services: over gRPC, or in this process."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from ffhquv import tracing
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


class GrpcBackends:
    """The services at their addresses (``host:port`` or ``dns:///name:port``)."""

    def __init__(self, detector: str, fitter: str, eyeball: str, exporter: str,
                 credentials: grpc.ChannelCredentials | None = None,
                 retry: RetryPolicy | None = None):
        self.addresses = {"detector": detector, "fitter": fitter, "eyeball": eyeball,
                          "exporter": exporter}
        self.retry = retry or RetryPolicy()
        self.credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}

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
                return await call(req, timeout=left, wait_for_ready=False)
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
            call = self._fitter.Fit(req, timeout=left)
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


async def iterate_in_thread(make: Callable[[threading.Event], Iterator[Any]]) -> AsyncIterator[Any]:
    """Run a blocking generator in a worker thread and yield its items here.

    ``make(cancel)`` builds the generator; ``cancel`` is set when the consumer stops early
    (client gone, task cancelled), and the generator should stop at its next check.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    done = object()

    def worker() -> None:
        try:
            for item in make(cancel):
                loop.call_soon_threadsafe(queue.put_nowait, (item, None))
                if cancel.is_set():
                    break
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            loop.call_soon_threadsafe(queue.put_nowait, (done, e))
            return
        loop.call_soon_threadsafe(queue.put_nowait, (done, None))

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
        self.exporter = ExporterServicer()

    async def detect(self, req, timeout):
        return await asyncio.to_thread(self.detector.handle, req)

    async def place_eyeballs(self, req, timeout):
        return await asyncio.to_thread(self.eyeball.handle, req)

    async def export(self, req, timeout):
        return await asyncio.to_thread(self.exporter.handle, req)

    async def fit(self, req, timeout):
        async for ev in iterate_in_thread(lambda cancel: self.fitter.events(req, cancel)):
            yield ev

    async def close(self) -> None:
        self.fitter.close()
