"""Building blocks shared by every gRPC server: options, health, reflection, error mapping,
metrics, logging and graceful shutdown (after grpc's own examples).

A service module provides a ``register(server) -> list[str]`` that adds its servicer and
returns its full service names; :func:`build_server` does the rest.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ffhquv import config, metrics, tracing
from ffhquv.allocator import tune_allocator  # noqa: F401  (re-exported for the services)
from ffhquv.errors import FfhquvError, status_of

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


def _split(method: str) -> tuple[str, str]:
    parts = method.strip("/").split("/")
    return (parts[0].split(".")[-1], parts[-1]) if len(parts) == 2 else ("?", method)


def _abort_for(exc: BaseException, context: grpc.ServicerContext) -> None:
    """End the call with the status of ``exc``, google.rpc details included."""
    if not isinstance(exc, FfhquvError):
        log.exception("unhandled error")
    context.abort_with_status(status_of(exc))


# a client resets its stream at its own clock's deadline, which the server may see up to a
# transit time early: less than this left counts as the deadline
DEADLINE_SLACK_S = 1.0


def gone_code(context) -> grpc.StatusCode:
    """The code to count for a call whose client went away before it ended (its handler
    cancelled, or its response stream closed while grpc sent an item: ``GeneratorExit`` at
    the generator's ``yield``): DEADLINE_EXCEEDED when the client's deadline has (about)
    passed (:data:`DEADLINE_SLACK_S`), else CANCELLED."""
    try:
        left = context.time_remaining()
    except Exception:  # noqa: BLE001 - a context without deadline support
        left = None
    return (grpc.StatusCode.DEADLINE_EXCEEDED if left is not None and left < DEADLINE_SLACK_S
            else grpc.StatusCode.CANCELLED)


class ServiceInterceptor(grpc.ServerInterceptor):
    """Maps :class:`FfhquvError` to status codes, records metrics and logs each call."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, method = _split(handler_call_details.method)
        if service in ("Health", "ServerReflection"):
            return handler
        request_id = tracing.request_id_from(handler_call_details.invocation_metadata)

        def record(code: grpc.StatusCode, t0: float) -> None:
            dt = time.perf_counter() - t0
            metrics.REQUESTS.labels(service, method, code.name).inc()
            metrics.LATENCY.labels(service, method).observe(dt)
            log.info("rpc", extra={"service": service, "method": method, "code": code.name,
                                   "seconds": round(dt, 4)})

        def code_of(context, exc: BaseException | None) -> grpc.StatusCode:
            if isinstance(exc, FfhquvError):
                return exc.code
            c = context.code() if hasattr(context, "code") else None
            if c is not None and c != grpc.StatusCode.OK:
                return c
            return grpc.StatusCode.OK if exc is None else grpc.StatusCode.INTERNAL

        if handler.unary_unary:
            inner = handler.unary_unary

            def unary_unary(request, context):
                t0 = time.perf_counter()
                gauge = metrics.INFLIGHT.labels(service, method)
                gauge.inc()
                exc = None
                token = tracing.REQUEST_ID.set(request_id)
                try:
                    return inner(request, context)
                except Exception as e:  # noqa: BLE001 - mapped to a status below
                    exc = e
                    if context.code() is None:
                        _abort_for(e, context)
                    raise
                finally:
                    gauge.dec()
                    record(code_of(context, exc), t0)
                    tracing.REQUEST_ID.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer)

        if handler.unary_stream:
            inner_s = handler.unary_stream

            def unary_stream(request, context):
                t0 = time.perf_counter()
                gauge = metrics.INFLIGHT.labels(service, method)
                gauge.inc()
                exc = None
                gone = False
                token = tracing.REQUEST_ID.set(request_id)
                try:
                    yield from inner_s(request, context)
                except GeneratorExit:  # the client went away while an item was sent
                    gone = True
                    raise
                except Exception as e:  # noqa: BLE001
                    exc = e
                    if context.code() is None:
                        _abort_for(e, context)
                    raise
                finally:
                    gauge.dec()
                    record(gone_code(context) if gone else code_of(context, exc), t0)
                    tracing.REQUEST_ID.reset(token)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer)
        return handler


class RunningServer:
    """A started server with its health servicer, bound port and metrics port."""

    def __init__(self, server: grpc.Server, port: int, health_servicer: health.HealthServicer,
                 service_names: list[str], metrics_port: int | None):
        self.server = server
        self.port = port
        self.health = health_servicer
        self.service_names = service_names
        self.metrics_port = metrics_port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        """Mark NOT_SERVING, then finish in-flight calls for up to ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        flush = getattr(self.health, "flush", None)
        if flush is not None:  # watchers hear NOT_SERVING before their streams end
            flush(timeout=min(1.0, grace))
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


class HealthServicer(health.HealthServicer):
    """grpc's ``HealthServicer`` whose Watch updates are sent by a thread of its own, never
    by the caller of ``set`` nor under its lock.

    grpc's own (grpcio-health-checking 1.85) sends each update while holding its lock, and a
    non-blocking send waits for the server's event thread to finish the write; that thread
    runs a closing Watch's callback, which takes the same lock: a Watch starting (or
    ``set``) while another Watch closes hangs the server for good, ``stop`` included (seen
    in CI: four gateway watchers on one two-worker server). Sending after the lock (as
    grpc/grpc#43403 proposes) still left the caller of ``set`` waiting on each write, and a
    write to a Watch cancelled at that moment was seen never to complete (the fresh-clone run
    of 2026-12-03: ``set`` waited for good). Here every send (a Watch's first status, each
    update, the close) is queued under the lock, so the watchers see the statuses in order,
    and a daemon thread sends them; :meth:`flush` waits until the queue is empty. A watcher
    removed in between may get one update more; grpc drops a send on a finished call."""

    #: the sender thread ends after this many idle seconds (a new one starts with the next send)
    IDLE_S = 5.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._outbox: list[tuple[Callable, object]] = []
        self._outbox_cv = threading.Condition()
        self._sending = 0  # queued and not yet sent
        self._sender: threading.Thread | None = None

    def _post(self, send: Callable, response) -> None:
        """Queue one send (callers hold ``self._lock``: the order of the statuses)."""
        with self._outbox_cv:
            self._outbox.append((send, response))
            self._sending += 1
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_loop, name="health-send",
                                                 daemon=True)
                self._sender.start()
            self._outbox_cv.notify_all()

    def _send_loop(self) -> None:
        while True:
            with self._outbox_cv:
                if not self._outbox and not self._outbox_cv.wait_for(
                        lambda: self._outbox, timeout=self.IDLE_S):
                    self._sender = None
                    return
                send, response = self._outbox.pop(0)
            try:
                send(response)
            except Exception:  # noqa: BLE001 - one watcher's failure is not the others'
                log.debug("health update not sent", exc_info=True)
            finally:
                with self._outbox_cv:
                    self._sending -= 1
                    self._outbox_cv.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued update was sent; False when ``timeout`` passed first."""
        with self._outbox_cv:
            return self._outbox_cv.wait_for(lambda: self._sending == 0, timeout=timeout)

    def Watch(self, request, context, send_response_callback=None):  # noqa: N802 - grpc's name
        if send_response_callback is None:  # a server without non-blocking streams
            return super().Watch(request, context, send_response_callback)
        service = request.service
        with self._lock:
            status = self._server_status.get(
                service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            self._send_response_callbacks.setdefault(service, set()).add(send_response_callback)
            context.add_callback(self._on_close_callback(send_response_callback, service))
            self._post(send_response_callback, health_pb2.HealthCheckResponse(status=status))
        return None

    def _on_close_callback(self, send_response_callback, service):
        def callback():
            with self._lock:
                self._send_response_callbacks[service].discard(send_response_callback)
                self._post(send_response_callback, None)

        return callback

    def set(self, service: str, status: int) -> None:
        with self._lock:
            if self._gracefully_shutting_down:
                return
            self._server_status[service] = status
            for send in self._send_response_callbacks.get(service, ()):
                self._post(send, health_pb2.HealthCheckResponse(status=status))

    def enter_graceful_shutdown(self) -> None:
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        with self._lock:
            if self._gracefully_shutting_down:
                return
            self._gracefully_shutting_down = True
            for service in self._server_status:
                self._server_status[service] = not_serving
                for send in self._send_response_callbacks.get(service, ()):
                    self._post(send, health_pb2.HealthCheckResponse(status=not_serving))


def build_server(
    register: Callable[[grpc.Server], Iterable[str]],
    port: int = 0,
    host: str = "127.0.0.1",
    max_workers: int = 8,
    metrics_port: int | None = None,
    credentials: grpc.ServerCredentials | None = None,
    max_concurrent_rpcs: int | None = None,
    interceptors: Iterable[grpc.ServerInterceptor] = (),
) -> RunningServer:
    """Create, register and start a sync gRPC server; ``port=0`` picks a free port.
    ``interceptors`` (e.g. authentication) run before the project's own."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[*interceptors, ServiceInterceptor()],
        options=SERVER_OPTIONS,
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    names = list(register(server))
    health_servicer = HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    target = f"{host}:{port}"
    bound = (server.add_secure_port(target, credentials) if credentials
             else server.add_insecure_port(target))
    if bound == 0:
        raise OSError(f"could not bind {target}")
    server.start()
    mport = (metrics.serve_metrics(metrics_port, addr=host) if metrics_port is not None
             else None)
    log.info("serving", extra={"services": ",".join(names), "port": bound,
                               "metrics_port": mport})
    return RunningServer(server, bound, health_servicer, names, mport)


def serve_forever(running: RunningServer, grace: float | None = None,
                  signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Block until one of ``signals``, then shut down gracefully: in-flight calls get
    ``grace`` seconds (default ``FFHQUV_DRAIN_SECONDS``, 10)."""
    done = threading.Event()

    def handle(signum, _frame):
        log.info("shutting down", extra={"signal": signum})
        done.set()

    for sig in signals:
        signal.signal(sig, handle)
    done.wait()
    running.stop(config.drain_seconds() if grace is None else grace)


def channel(address: str, credentials: grpc.ChannelCredentials | None = None, *,
            own_connection: bool = False) -> grpc.Channel:
    """A client channel with the project's message-size and keepalive options.

    ``own_connection``: a TCP connection of its own. gRPC's channels of one process to one
    target otherwise share a connection (its global subchannel pool), so that many clients
    simulated by the threads of one process (``bench/``) look to the server like one: one
    HTTP/2 connection, and one of ``serve all``'s gateway processes."""
    opts = [*CHANNEL_OPTIONS, *([("grpc.use_local_subchannel_pool", 1)]
                                if own_connection else [])]
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=opts)
    return grpc.insecure_channel(address, options=opts)
