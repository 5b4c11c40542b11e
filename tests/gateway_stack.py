"""A real stack for gateway tests: the four services as child processes on loopback ports and
the gateway in this process, each a real gRPC server."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from ffhquv.commands import spawn_service
from ffhquv.pb import gateway_pb2_grpc
from ffhquv.server import channel
from gateway.backends import GrpcBackends, RetryPolicy
from gateway.orchestrator import Deadlines, Orchestrator
from gateway.server import GatewayLimits, GatewayServer
from gateway.storage import LocalArtifactStore

SERVICES = ("detector", "fitter", "eyeball", "exporter")


@dataclass
class Stack:
    storage: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    addrs: dict[str, str] = field(default_factory=dict)
    gateway: GatewayServer | None = None
    _channel: grpc.Channel | None = None

    def stub(self) -> gateway_pb2_grpc.ReconstructionStub:
        if self._channel is None:
            self._channel = channel(self.gateway.address)
        return gateway_pb2_grpc.ReconstructionStub(self._channel)

    def start_service(self, name: str, port: int = 0) -> None:
        extra = ["--device", "cpu"] if name == "fitter" else []
        proc, addr = spawn_service(name, extra, env={"FFHQUV_LOG_LEVEL": "WARNING",
                                                     "OMP_NUM_THREADS": "2"}, port=port)
        self.procs[name] = proc
        self.addrs[name] = addr

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def start_gateway(self, limits: GatewayLimits | None = None, token: str | None = None,
                      retry: RetryPolicy | None = None, deadlines: Deadlines | None = None):
        backends = GrpcBackends(**self.addrs, retry=retry or RetryPolicy())
        self.gateway = GatewayServer(Orchestrator(backends, deadlines),
                                     LocalArtifactStore(self.storage), limits=limits,
                                     token=token, close_backends=backends.close)
        self.gateway.start_in_thread()
        return self.gateway

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self.gateway is not None:
            self.gateway.stop(1.0)
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
