"""OpenTelemetry tracing and log correlation across real gRPC servers (tests/tracing_probe.py
runs them in a child process with an in-memory span exporter: tracing instruments grpc
process-wide). Off by default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ffhquv import tracing

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("opentelemetry.instrumentation.grpc",
                    reason="the tracing extra is not installed (pip install 'ffhquv[tracing]')")


def probe(mode: str, photo: Path) -> tuple[list[dict], str, list[dict]]:
    r = subprocess.run([sys.executable, "-m", "tests.tracing_probe", mode, str(photo)], cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    logs = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    # the gateway's own watch of its backends' health (and its question to the fitter for its
    # devices when the fitter comes up) runs in traces of its own: left out
    spans = [s for s in rows[:-1] if not s["name"].startswith("/grpc.health.v1.Health/")
             and s["name"] != "/ffhquv.fitter.v1.Fitter/DescribeModel"]
    return spans, rows[-1]["call_code"], logs


def _server_spans(spans: list[dict]) -> dict[str, dict]:
    return {s["attributes"]["rpc.service"]: s for s in spans if s["kind"] == "SERVER"}


def _check_one_trace(spans: list[dict]) -> str:
    (trace_id,) = {s["trace_id"] for s in spans}
    by_id = {s["span_id"]: s for s in spans}
    roots = [s for s in spans if s["parent_id"] is None]
    assert [r["name"] for r in roots] == ["/ffhquv.gateway.v1.Reconstruction/Reconstruct"]
    for s in spans:  # every span hangs off the client's call
        while s["parent_id"] is not None:
            s = by_id[s["parent_id"]]
        assert s is roots[0]
    return trace_id


def test_off_by_default(monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert not tracing.enabled_by_env()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not tracing.enabled_by_env()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.enabled_by_env()


def test_trace_and_request_id_from_gateway_to_detector(astronaut_png):
    """Gateway -> detector in one trace (the fitter is a closed port, so the call ends
    UNAVAILABLE after the detection); the detector's log lines carry the request id and the
    trace id."""
    spans, code, logs = probe("detect-only", astronaut_png)
    assert code == "UNAVAILABLE"
    trace_id = _check_one_trace(spans)
    servers = _server_spans(spans)
    assert set(servers) == {"ffhquv.gateway.v1.Reconstruction", "ffhquv.detector.v1.Detector"}
    gw = servers["ffhquv.gateway.v1.Reconstruction"]
    assert gw["attributes"]["ffhquv.request_id"] == "trace-probe-1"
    clients = {s["attributes"]["rpc.service"] for s in spans if s["kind"] == "CLIENT"
               and s["parent_id"] == gw["span_id"]}
    assert clients == {"ffhquv.detector.v1.Detector", "ffhquv.fitter.v1.Fitter"}
    (rpc_line,) = [ln for ln in logs if ln["msg"] == "rpc" and ln.get("service") == "Detector"]
    assert rpc_line["request_id"] == "trace-probe-1" and rpc_line["trace_id"] == trace_id
    retry_lines = [ln for ln in logs if ln["logger"] == "gateway.backends"]
    assert retry_lines and all(ln["request_id"] == "trace-probe-1" for ln in retry_lines)


@pytest.mark.slow
def test_one_reconstruct_is_one_trace_over_five_services(astronaut_png):
    spans, code, logs = probe("full", astronaut_png)
    assert code == "OK"
    trace_id = _check_one_trace(spans)
    assert set(_server_spans(spans)) == {
        "ffhquv.gateway.v1.Reconstruction", "ffhquv.detector.v1.Detector",
        "ffhquv.fitter.v1.Fitter", "ffhquv.eyeball.v1.Eyeball", "ffhquv.exporter.v1.Exporter"}
    # (the gateway's DescribeModel when the fitter came up belongs to no request)
    rpc_lines = [ln for ln in logs if ln["msg"] == "rpc" and ln["method"] != "DescribeModel"]
    assert {ln["service"] for ln in rpc_lines} == {"Detector", "Fitter", "Eyeball", "Exporter"}
    assert all(ln["request_id"] == "trace-probe-1" and ln["trace_id"] == trace_id
               for ln in rpc_lines)
