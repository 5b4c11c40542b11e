"""``FFHQUV_CUDA_MPS``: ``serve all``'s CUDA MPS daemon (``ffhquv.cuda.start_mps``).

This machine has no NVIDIA driver, so ``nvidia-cuda-mps-control`` is a stand-in script on
``PATH`` that records how it was called (arguments, standard input, the MPS folders in its
environment) and behaves as the real one does where it matters here: ``-f`` runs in the
foreground, creates the control pipe and stays until a client sends ``quit``. The H200 runs
(``FFHQUV_CUDA_MPS=on bash bench/gpu_users.sh serve``, BENCHMARKS.md) use the real one."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from ffhquv import config, cuda
from ffhquv.cuda import MPS_CONTROL, start_mps
from ffhquv.errors import PreconditionFailed
from ffhquv_cli.commands import _serve_all_mps

STAND_IN = """#!/bin/sh
echo "args=$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY" >> {record}
if [ "$1" = "-f" ]; then
  echo "pid=$$" >> {record}
  : > "$CUDA_MPS_PIPE_DIRECTORY/control"
  while [ ! -f "$CUDA_MPS_PIPE_DIRECTORY/quit" ]; do sleep 0.05; done
  echo "daemon quit" >> {record}
  exit 0
fi
if [ $# -eq 0 ]; then
  line=$(cat); echo "stdin=$line" >> {record}
  [ "$line" = quit ] && : > "$CUDA_MPS_PIPE_DIRECTORY/quit"
fi
exit 0
"""


def _install(tmp_path, monkeypatch, text: str):
    bindir, record = tmp_path / "bin", tmp_path / "calls.txt"
    bindir.mkdir(exist_ok=True)
    script = bindir / MPS_CONTROL
    script.write_text(text.format(record=record))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.fixture
def fake_control(tmp_path, monkeypatch):
    """A recording ``nvidia-cuda-mps-control`` first on PATH; returns its log file."""
    return _install(tmp_path, monkeypatch, STAND_IN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, limit: float = 60.0) -> bool:
    deadline = time.monotonic() + limit
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_start_and_stop_a_private_daemon(tmp_path, fake_control):
    d = start_mps(tmp_path / "mps")
    env = d.env()
    assert env == {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "mps" / "pipe"),
                   "CUDA_MPS_LOG_DIRECTORY": str(tmp_path / "mps" / "log")}
    assert (tmp_path / "mps" / "pipe" / "control").exists()
    assert d.proc is not None and d.proc.poll() is None  # in the foreground, our child
    d.stop()
    assert d.proc.returncode == 0  # it quit when asked, not killed
    calls = fake_control.read_text().splitlines()
    assert calls[0] == f"args=-f pipe={env['CUDA_MPS_PIPE_DIRECTORY']} " \
                       f"log={env['CUDA_MPS_LOG_DIRECTORY']}"
    assert "stdin=quit" in calls and calls[-1] == "daemon quit"
    assert not (tmp_path / "mps").exists()


def test_missing_control_program_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PreconditionFailed, match=MPS_CONTROL):
        start_mps(tmp_path / "mps")
    assert not (tmp_path / "mps").exists()


def test_failing_control_program_leaves_nothing(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch, "#!/bin/sh\necho 'An instance of this daemon is already "
                                    "running' >&2\nexit 1\n")
    with pytest.raises(PreconditionFailed, match="exit 1.*already running"):
        start_mps(tmp_path / "mps")
    assert not (tmp_path / "mps").exists()


def test_a_daemon_without_its_pipe_is_ended(tmp_path, monkeypatch):
    record = _install(tmp_path, monkeypatch, "#!/bin/sh\necho \"pid=$$\" >> {record}\n"
                                             "exec sleep 600\n")
    monkeypatch.setattr(cuda, "MPS_START_TIMEOUT_S", 0.5)
    with pytest.raises(PreconditionFailed, match="no control pipe"):
        start_mps(tmp_path / "mps")
    pid = int(record.read_text().split("pid=")[1].split()[0])
    assert _wait_gone(pid)
    assert not (tmp_path / "mps").exists()


def test_the_daemon_ends_with_the_thread_that_started_it(tmp_path, fake_control):
    """A starter killed with SIGKILL (no stop, no cleanup) leaves no daemon behind."""
    code = ("import os, signal, sys; from ffhquv.cuda import start_mps; "
            f"d = start_mps({str(tmp_path / 'mps')!r}); print(d.proc.pid, flush=True); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=os.getcwd())
    assert r.returncode == -signal.SIGKILL, r.stderr
    pid = int(r.stdout.split()[0])
    assert _wait_gone(pid), "the MPS daemon outlived the process that started it"


@pytest.fixture
def probe_ok(monkeypatch):
    """The CUDA context probe passes (this machine has no driver to run it)."""
    monkeypatch.setattr(cuda.MpsDaemon, "probe", lambda self, timeout=60.0: None)


def test_serve_all_chooses_by_setting_and_device(tmp_path, monkeypatch, fake_control, capsys,
                                                 probe_ok):
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.delenv("FFHQUV_CUDA_MPS", raising=False)
    assert config.cuda_mps() == "auto"
    mps = _serve_all_mps("cuda")  # auto, the tools there: started
    try:
        assert mps is not None and "args=-f" in fake_control.read_text()
    finally:
        mps.stop()
    assert _serve_all_mps("cpu") is None  # the CPU stack has no GPU children
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", "/run/nvidia-mps")
    assert _serve_all_mps("cuda") is None  # a node's daemon is used as it is
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY")
    monkeypatch.setenv("FFHQUV_CUDA_MPS", "off")
    assert _serve_all_mps("cuda") is None
    monkeypatch.setenv("FFHQUV_CUDA_MPS", "sometimes")
    with pytest.raises(ValueError, match="FFHQUV_CUDA_MPS"):
        config.cuda_mps()


def test_serve_all_without_working_mps_tools(tmp_path, monkeypatch, capsys):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its MPS folders go here
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no tools at all
    monkeypatch.setenv("FFHQUV_CUDA_MPS", "auto")
    assert _serve_all_mps("cuda") is None
    assert f"no {MPS_CONTROL} on PATH" in capsys.readouterr().err
    monkeypatch.setenv("FFHQUV_CUDA_MPS", "on")
    with pytest.raises(SystemExit, match=MPS_CONTROL):
        _serve_all_mps("cuda")
    _install(tmp_path, monkeypatch, "#!/bin/sh\necho 'MPS is not supported' >&2\nexit 3\n")
    with pytest.raises(SystemExit, match="not supported"):
        _serve_all_mps("cuda")
    monkeypatch.setenv("FFHQUV_CUDA_MPS", "auto")
    assert _serve_all_mps("cuda") is None  # auto: said, and served without
    assert "not supported" in capsys.readouterr().err
    assert not list(tmp_path.glob("ffhquv-mps-*"))  # no folder left by any of the failures


def test_folders_of_killed_serve_alls_are_removed(tmp_path):
    from ffhquv_cli.commands import MPS_FOLDER_PREFIX, remove_stale_mps_folders

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f"{MPS_FOLDER_PREFIX}{dead}-abc"
    live = tmp_path / f"{MPS_FOLDER_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{MPS_FOLDER_PREFIX}notapid-x"
    for d in (stale, live, other):
        (d / "pipe").mkdir(parents=True)
    assert remove_stale_mps_folders(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_a_daemon_whose_clients_cannot_connect_is_not_used(tmp_path, monkeypatch, fake_control,
                                                           capsys):
    """The daemon starts but a CUDA context under it fails (the probe): ``auto`` stops it and
    serves without MPS, saying why; ``on`` exits with the reason."""
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.setattr(cuda.MpsDaemon, "probe",
                        lambda self, timeout=60.0: "cuCtxCreate_v2 failed with CUDA error 805")
    monkeypatch.setenv("FFHQUV_CUDA_MPS", "auto")
    assert _serve_all_mps("cuda") is None
    assert "CUDA error 805" in capsys.readouterr().err
    assert fake_control.read_text().splitlines()[-1] == "daemon quit"  # stopped, not left
    monkeypatch.setenv("FFHQUV_CUDA_MPS", "on")
    with pytest.raises(SystemExit, match="CUDA error 805"):
        _serve_all_mps("cuda")


def test_the_probe_says_why_without_a_driver(tmp_path, fake_control):
    import ctypes.util

    if ctypes.util.find_library("cuda"):
        pytest.skip("this machine has a CUDA driver: the probe's failure path is not reachable")
    d = start_mps(tmp_path / "mps")
    try:
        why = d.probe()
    finally:
        d.stop()
    assert why is not None and "libcuda" in why
