"""Prometheus metrics shared by all services (one registry per process, side HTTP port)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "ffhquv_requests_total", "gRPC requests handled", ["service", "method", "code"]
)
LATENCY = Histogram(
    "ffhquv_request_seconds",
    "gRPC request latency",
    ["service", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320),
)
INFLIGHT = Gauge("ffhquv_inflight_requests", "gRPC requests in progress", ["service", "method"])
STAGE_SECONDS = Histogram(
    "ffhquv_stage_seconds",
    "Seconds per pipeline stage",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
)
QUEUE_DEPTH = Gauge("ffhquv_queue_depth", "Requests waiting for a pipeline slot", ["service"])
INFLIGHT_FITS = Gauge("ffhquv_inflight_fits", "Fits running in this process")
FIT_BATCH_SIZE = Histogram(
    "ffhquv_fit_batch_size",
    "Photos per batched fit (the fitter's dynamic batcher)",
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
)
FIT_QUEUE_SECONDS = Histogram(
    "ffhquv_fit_queue_seconds",
    "Seconds a fit request waited in the batcher's queue before its batch started",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40),
)
CHILD_RESTARTS = Counter(
    "ffhquv_child_restarts_total", "Services restarted by serve all after they died", ["child"]
)
CHILD_UP = Gauge("ffhquv_child_up", "1 while serve all's child process is running", ["child"])
BACKEND_UP = Gauge(
    "ffhquv_backend_up", "1 while the gateway sees the backend SERVING (grpc.health.v1)",
    ["backend"]
)

_started: dict[int, int] = {}


def serve_metrics(port: int | None, addr: str = "127.0.0.1") -> int | None:
    """Expose /metrics on ``port`` (0 = any free port). Returns the bound port, or None."""
    if port is None or port < 0:
        return None
    if port in _started and port != 0:
        return _started[port]
    server, _thread = start_http_server(port, addr=addr)
    bound = server.server_port
    _started[port] = bound
    log.info("metrics on http://%s:%d/metrics", addr, bound)
    return bound
