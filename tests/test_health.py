"""The services' health servicer (``ffhquv.server.HealthServicer``) tells its watchers from a
thread of its own, outside its lock: grpc's own sends while holding it, and a send waits for
the server's event thread, which may be waiting for that lock to close another Watch (a hang
that CI met once, in ``test_stopped_gateway_keeps_its_loop_open_for_late_grpc_events``); and
a caller of ``set`` waited for good on a write to a Watch cancelled at that moment (this
file's churn test, once in a fresh clone)."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ffhquv.server import HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Context:
    def __init__(self) -> None:
        self.callbacks = []

    def add_callback(self, callback) -> None:
        self.callbacks.append(callback)


def _watch(servicer: HealthServicer, service: str = ""):
    """A watcher that records what it is told and whether the servicer's lock was held."""
    told: list[tuple[int | None, bool]] = []

    def send(response) -> None:
        told.append((None if response is None else response.status, servicer._lock._is_owned()))

    context = _Context()
    servicer.Watch(health_pb2.HealthCheckRequest(service=service), context, send)
    return told, context


def test_watchers_are_told_outside_the_lock():
    servicer = HealthServicer()
    told, context = _watch(servicer)
    other, _ = _watch(servicer, "svc")
    servicer.set("", NOT_SERVING)
    servicer.set("svc", SERVING)
    servicer.enter_graceful_shutdown()
    servicer.set("", SERVING)  # ignored after the shutdown began
    for callback in context.callbacks:  # the stream closes
        callback()
    assert servicer.flush(timeout=30)
    assert told == [(SERVING, False), (NOT_SERVING, False), (NOT_SERVING, False), (None, False)]
    assert other == [(health_pb2.HealthCheckResponse.SERVICE_UNKNOWN, False),
                     (SERVING, False), (NOT_SERVING, False)]
    assert servicer._send_response_callbacks[""] == set()


def test_server_with_churning_watches_stops():
    """Watches opened and cancelled on a two-worker server while the status flips: the server
    still stops (``stop`` waits on nothing that a Watch holds)."""
    servicer = HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for round_ in range(20):
            calls = [stub.Watch(health_pb2.HealthCheckRequest()) for _ in range(4)]
            assert next(calls[0]).status in (SERVING, NOT_SERVING)
            servicer.set("", NOT_SERVING if round_ % 2 else SERVING)
            for call in calls:
                call.cancel()
    assert server.stop(None).wait(timeout=60)


def test_set_never_waits_for_a_watcher():
    """A watcher whose write does not complete holds neither ``set`` nor the other watchers'
    order: the caller returns at once, the statuses arrive in order once it is released."""
    import threading

    servicer = HealthServicer()
    release = threading.Event()
    got: list[int | None] = []

    def stuck(response) -> None:
        release.wait(timeout=30)
        got.append(None if response is None else response.status)

    servicer.Watch(health_pb2.HealthCheckRequest(), _Context(), stuck)
    for status in (NOT_SERVING, SERVING, NOT_SERVING):
        servicer.set("", status)  # returns although the first write is still waiting
    assert not servicer.flush(timeout=0.05)
    release.set()
    assert servicer.flush(timeout=30)
    assert got == [SERVING, NOT_SERVING, SERVING,  # the first: the status when it began
                   NOT_SERVING]
