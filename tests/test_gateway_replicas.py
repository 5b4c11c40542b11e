"""``serve all`` on big machines runs several processes of each CPU service; the gateway reaches
them through one ``ipv4:a,b`` target and balances calls over them (real loopback servers)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from ffhquv.pb import exporter_pb2, exporter_pb2_grpc
from ffhquv.server import build_server
from ffhquv_cli import commands
from ffhquv_cli.commands import (
    cpu_service_replicas,
    fitter_replicas,
    serve_all_compile_env,
    serve_all_max_concurrent,
    service_threads,
    thread_env,
)
from gateway.backends import GrpcBackends, RetryPolicy
from services.exporter.servicer import ExporterServicer


class CountingExporter(ExporterServicer):
    def __init__(self):
        self.calls = 0

    def Export(self, request, context):  # noqa: N802 - gRPC name
        self.calls += 1
        return super().Export(request, context)


def test_calls_are_balanced_over_replicas():
    servicers = [CountingExporter(), CountingExporter()]
    servers = [build_server(lambda s, x=x: (exporter_pb2_grpc.add_ExporterServicer_to_server(
        x, s), ["ffhquv.exporter.v1.Exporter"])[1], port=0) for x in servicers]
    target = "ipv4:" + ",".join(s.address for s in servers)
    backends = GrpcBackends(detector="unused", fitter="unused", eyeball="unused",
                            exporter=target, retry=RetryPolicy(attempts=1))

    async def main() -> list[grpc.StatusCode]:
        # an empty request is refused by the exporter, after it was counted; round robin uses
        # a replica once its connection is up, so call until both served (bounded)
        codes = []
        for _ in range(200):
            try:
                await backends.export(exporter_pb2.ExportRequest(name="x"), timeout=30)
            except grpc.aio.AioRpcError as e:
                codes.append(e.code())
            if all(x.calls >= 2 for x in servicers):
                break
            await asyncio.sleep(0.02)
        await backends.close()
        return codes

    try:
        codes = asyncio.run(main())
    finally:
        for s in servers:
            s.stop(0)
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}
    assert all(x.calls >= 2 for x in servicers), [x.calls for x in servicers]


@pytest.mark.parametrize(("env", "want"), [("3", 3), ("0", 1)])
def test_replicas_from_environment(monkeypatch, env, want):
    monkeypatch.setenv("FFHQUV_SERVE_REPLICAS", env)
    assert cpu_service_replicas() == want


def test_fitter_replicas(monkeypatch):
    """One fitter on the CPU; on CUDA 3 per 8 cores (1 to 6), at most one per 8 GB of GPU
    memory; the variable wins."""
    monkeypatch.delenv("FFHQUV_FITTER_REPLICAS", raising=False)
    monkeypatch.setattr(commands, "gpu_memory_gb", lambda: 141.0)
    monkeypatch.setattr(commands.os, "cpu_count", lambda: 16)
    assert fitter_replicas("cpu") == 1
    assert fitter_replicas("cuda") == 6
    monkeypatch.setattr(commands, "gpu_memory_gb", lambda: 24.0)  # a smaller GPU: fewer
    assert fitter_replicas("cuda") == 3
    monkeypatch.setattr(commands, "gpu_memory_gb", lambda: 6.0)
    assert fitter_replicas("cuda") == 1
    monkeypatch.setattr(commands, "gpu_memory_gb", lambda: None)  # unknown: by the cores
    assert fitter_replicas("cuda") == 6
    monkeypatch.setattr(commands.os, "cpu_count", lambda: 8)
    assert fitter_replicas("cuda") == 3
    monkeypatch.setattr(commands.os, "cpu_count", lambda: 2)
    assert fitter_replicas("cuda") == 1
    monkeypatch.setattr(commands.os, "cpu_count", lambda: 128)
    assert fitter_replicas("cuda") == 6
    monkeypatch.setattr(commands, "cuda_available", lambda: False)
    assert fitter_replicas("auto") == 1
    monkeypatch.setenv("FFHQUV_FITTER_REPLICAS", "3")
    assert fitter_replicas("cpu") == 3


def test_gateway_replicas(monkeypatch):
    """``serve all``'s gateway processes: one per 4 cores (1 to 4); the variable wins."""
    from ffhquv_cli.commands import gateway_replicas

    monkeypatch.delenv("FFHQUV_GATEWAY_REPLICAS", raising=False)
    for cores, want in ((2, 1), (8, 2), (16, 4), (128, 4)):
        monkeypatch.setattr(commands.os, "cpu_count", lambda c=cores: c)
        assert gateway_replicas() == want
    monkeypatch.setenv("FFHQUV_GATEWAY_REPLICAS", "3")
    assert gateway_replicas() == 3


def test_service_threads_share_the_cores(monkeypatch):
    monkeypatch.delenv("FFHQUV_SERVE_REPLICAS", raising=False)
    monkeypatch.setattr(commands.os, "cpu_count", lambda: 16)
    assert service_threads("fitter", 2) == 8
    assert service_threads("exporter", 2) == 1  # 4 replicas of each CPU service
    monkeypatch.setattr(commands.os, "cpu_count", lambda: 2)
    assert service_threads("fitter", 1) == 2 and service_threads("detector", 1) == 1


def test_children_size_torch_and_opencv_pools_unless_the_user_did(monkeypatch):
    monkeypatch.delenv("FFHQUV_SERVE_REPLICAS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OPENCV_FOR_THREADS_NUM", raising=False)
    monkeypatch.setattr(commands.os, "cpu_count", lambda: 16)
    assert thread_env("fitter", 4) == {"OMP_NUM_THREADS": "4", "OPENCV_FOR_THREADS_NUM": "4"}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_env("exporter", 4) == {"OPENCV_FOR_THREADS_NUM": "1"}


def test_the_command_line_keeps_numpy_blas_to_one_thread():
    """numpy's OpenBLAS would spin a thread per core after every small product: the
    ``ffhquv`` package sets one thread before numpy loads (a user's value wins)."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; import ffhquv_cli; "
            "print(os.environ['OPENBLAS_NUM_THREADS'], 'numpy' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["1", "False"]
    env["OPENBLAS_NUM_THREADS"] = "3"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "3"


def test_serve_all_compiles_its_cuda_fitters_unless_told(monkeypatch):
    """serve all's fitters on CUDA fuse their steps (FFHQUV_COMPILE=1: a server pays the
    compile once at its start); not on the CPU, not when the user set the variable either way
    (0 turns it off)."""
    monkeypatch.delenv("FFHQUV_COMPILE", raising=False)
    monkeypatch.setattr(commands, "cuda_available", lambda: True)
    assert serve_all_compile_env("cuda") == {"FFHQUV_COMPILE": "1"}
    assert serve_all_compile_env("auto") == {"FFHQUV_COMPILE": "1"}
    assert serve_all_compile_env("cpu") == {}
    monkeypatch.setattr(commands, "cuda_available", lambda: False)
    assert serve_all_compile_env("auto") == {}
    for told in ("0", "1"):
        monkeypatch.setenv("FFHQUV_COMPILE", told)
        assert serve_all_compile_env("cuda") == {}


def test_serve_all_runs_enough_at_once_for_its_fitters():
    assert serve_all_max_concurrent(1) == 16 and serve_all_max_concurrent(4) == 32


def test_local_calls_leave_no_threads_behind():
    """The in-process backends run the exporter calls and the CLI's
    warm-ups on threads that end with the call (``in_own_thread``): a thread that ran a
    parallel torch op keeps an OpenMP team while it lives, and more OpenMP threads than cores
    stop libgomp's spinning in every team (the fitter's stage 3 ran 2x slower on 2 cores).
    After a call whose torch op runs in parallel, the process's thread count returns to what
    it was (polled, no timing assumed)."""
    import os
    import threading
    import time

    import torch

    from gateway.backends import in_own_thread

    def tasks() -> int:
        return len(os.listdir("/proc/self/task"))

    def work() -> tuple[str, float]:
        return threading.current_thread().name, float(torch.ones(1 << 22).sin().sum())

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.ones(1 << 22).sin().sum()  # this thread's own team, before counting

        async def main() -> tuple[int, int, str]:  # one loop: its executor threads live on
            before = tasks()
            name, _ = await in_own_thread(work)
            end = time.monotonic() + 60
            while tasks() > before and time.monotonic() < end:
                await asyncio.sleep(0.05)
            return before, tasks(), name

        before, after, name = asyncio.run(main())
        assert name != threading.current_thread().name
        assert after <= before
        with pytest.raises(ZeroDivisionError):
            asyncio.run(in_own_thread(lambda: 1 / 0))
    finally:
        torch.set_num_threads(old)


def test_gateway_admission_from_flags_else_environment(monkeypatch):
    """The gateway's queue and running limits: the flags, else FFHQUV_MAX_QUEUE /
    FFHQUV_MAX_CONCURRENT (what serve all splits between its gateway processes)."""
    import argparse

    from ffhquv_cli.commands import gateway_admission

    monkeypatch.delenv("FFHQUV_MAX_QUEUE", raising=False)
    monkeypatch.setenv("FFHQUV_MAX_CONCURRENT", "8")
    assert gateway_admission(argparse.Namespace(max_queue=None, max_concurrent=None)) == (64, 8)
    assert gateway_admission(argparse.Namespace(max_queue=10, max_concurrent=3)) == (10, 3)
