"""``FFHQUV_CUDA_MPS``: ``serve all``'s CUDA MPS daemon (``ffhquv.cuda.start_mps``).

This machine has no NVIDIA driver, so ``nvidia-cuda-mps-control`` is a stand-in script on
``PATH`` that records how it was called (arguments, standard input, the MPS folders in its
environment); the H200 runs of ``bench/gpu_users.sh mpsserve`` use the real one."""

from __future__ import annotations

import os
import stat

import pytest

from ffhquv import config
from ffhquv.cuda import MPS_CONTROL, start_mps
from ffhquv.errors import PreconditionFailed
from ffhquv_cli.commands import _serve_all_mps


@pytest.fixture
def fake_control(tmp_path, monkeypatch):
    """A recording ``nvidia-cuda-mps-control`` first on PATH; returns its log file."""
    bindir, record = tmp_path / "bin", tmp_path / "calls.txt"
    bindir.mkdir()
    script = bindir / MPS_CONTROL
    script.write_text(
        "#!/bin/sh\n"
        f'echo "args=$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY" >> {record}\n'
        f'if [ $# -eq 0 ]; then echo "stdin=$(cat)" >> {record}; fi\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_start_and_stop_a_private_daemon(tmp_path, fake_control):
    d = start_mps(tmp_path / "mps")
    env = d.env()
    assert env == {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "mps" / "pipe"),
                   "CUDA_MPS_LOG_DIRECTORY": str(tmp_path / "mps" / "log")}
    assert (tmp_path / "mps" / "pipe").is_dir() and (tmp_path / "mps" / "log").is_dir()
    d.stop()
    calls = fake_control.read_text().splitlines()
    assert calls[0] == f"args=-d pipe={env['CUDA_MPS_PIPE_DIRECTORY']} " \
                       f"log={env['CUDA_MPS_LOG_DIRECTORY']}"
    assert calls[2] == "stdin=quit"  # the daemon asked to quit through the same pipe
    assert not (tmp_path / "mps").exists()


def test_missing_control_program_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PreconditionFailed, match=MPS_CONTROL):
        start_mps(tmp_path / "mps")
    assert not (tmp_path / "mps").exists()


def test_failing_control_program_leaves_nothing(tmp_path, fake_control):
    script = fake_control.parent / "bin" / MPS_CONTROL
    script.write_text("#!/bin/sh\necho 'An instance of this daemon is already running' >&2\n"
                      "exit 1\n")
    with pytest.raises(PreconditionFailed, match="already running"):
        start_mps(tmp_path / "mps")
    assert not (tmp_path / "mps").exists()


def test_serve_all_starts_one_only_when_asked_and_on_a_gpu(monkeypatch, fake_control):
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.delenv("FFHQUV_CUDA_MPS", raising=False)
    assert config.cuda_mps() is False
    assert _serve_all_mps("cuda") is None  # off by default
    monkeypatch.setenv("FFHQUV_CUDA_MPS", "on")
    assert _serve_all_mps("cpu") is None  # the CPU stack has no GPU children
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", "/run/nvidia-mps")
    assert _serve_all_mps("cuda") is None  # a node's daemon is used as it is
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY")
    mps = _serve_all_mps("cuda")
    try:
        assert mps is not None and "args=-d" in fake_control.read_text()
    finally:
        mps.stop()
    monkeypatch.setenv("FFHQUV_CUDA_MPS", "sometimes")
    with pytest.raises(ValueError, match="FFHQUV_CUDA_MPS"):
        config.cuda_mps()
