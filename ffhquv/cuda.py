"""How a process's host threads wait for its GPU: one setting, made before the CUDA context;
and a CUDA MPS daemon for ``serve all``'s GPU children (:func:`start_mps`).

By default CUDA lets a thread that waits for the device (a ``.cpu()``, ``.item()``, a stream
synchronisation) spin on its core while there are more cores than CUDA contexts, which is
always so on a GPU host. The fitter waits like that many times a photo, and several fitter
and CLI worker processes share one host: each spinning waiter took a core from another
process's texture, detection or export work. :func:`configure_waits` asks CUDA to block the
thread on an interrupt instead (``cudaDeviceScheduleBlockingSync``), unless
``FFHQUV_CUDA_WAIT`` says ``spin`` (or ``auto``: CUDA's own choice).

torch has no call for this (pytorch/pytorch#28224): the flag is set through the CUDA runtime
that torch loaded, before torch creates the device's context. Called later (the context
exists) it changes nothing, and says so in its result.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ffhquv.config import cuda_wait
from ffhquv.errors import PreconditionFailed

log = logging.getLogger(__name__)

# cudaDeviceSchedule* flags (cuda_runtime_api.h)
_SCHEDULE = {"auto": 0, "spin": 1, "block": 4}
_lock = threading.Lock()
_done: str | None = None


def _runtime() -> ctypes.CDLL | None:
    """The CUDA runtime library torch loaded (``libcudart.so.*``), or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libcudart.so" in line}
    except OSError:
        return None
    for p in sorted(paths):
        try:
            return ctypes.CDLL(p)
        except OSError:
            continue
    return None


def configure_waits() -> str:
    """Set how this process's threads wait for CUDA work (once; later calls return the first
    result). Call before the first CUDA tensor of the process.

    Returns:
        ``"block"`` / ``"spin"`` / ``"auto"``: the mode set; ``"unchanged"`` when the runtime
        refused (the context existed already) or no CUDA runtime is loaded.
    """
    global _done
    with _lock:
        if _done is not None:
            return _done
        mode = cuda_wait()
        if mode not in _SCHEDULE:
            raise ValueError(f"FFHQUV_CUDA_WAIT={mode!r}: expected one of {sorted(_SCHEDULE)}")
        import torch  # noqa: F401  (loads the CUDA runtime)

        rt = _runtime()
        rc = -1 if rt is None else rt.cudaSetDeviceFlags(ctypes.c_uint(_SCHEDULE[mode]))
        _done = mode if rc == 0 else "unchanged"
        if _done == "unchanged":
            log.info("CUDA wait mode not set (runtime %s, rc %s)",
                     "absent" if rt is None else "present", rc)
        return _done


def wait_mode_now() -> int | None:
    """The flags CUDA reports for the current device (``cudaGetDeviceFlags``), or None."""
    rt = _runtime()
    if rt is None:
        return None
    flags = ctypes.c_uint()
    return int(flags.value) if rt.cudaGetDeviceFlags(ctypes.byref(flags)) == 0 else None


__all__ = ["MPS_CONTROL", "MpsDaemon", "configure_waits", "start_mps", "wait_mode_now"]


#: the driver's MPS control program (its daemon starts the MPS server on a client's demand)
MPS_CONTROL = "nvidia-cuda-mps-control"


@dataclass
class MpsDaemon:
    """A CUDA MPS control daemon private to one folder (:func:`start_mps`).

    Attributes:
        folder: holds its pipe (``pipe/``) and log (``log/``) folders; removed by :meth:`stop`.
        control: path of ``nvidia-cuda-mps-control``.
        proc: the daemon, run in the foreground as a child of the process that started it.
    """

    folder: Path
    control: str
    proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """The environment that makes a process's CUDA contexts clients of this daemon."""
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.folder / "pipe"),
                "CUDA_MPS_LOG_DIRECTORY": str(self.folder / "log")}

    def probe(self, timeout: float = 60.0) -> str | None:
        """Create a CUDA context as a client of this daemon, in a new process (the driver API
        through ctypes, no torch): None when it works, else why not. The first client starts
        the MPS server, so this also finds a server that cannot start (a GPU in a compute
        mode or a container that does not allow MPS) before the GPU children would."""
        try:
            r = subprocess.run([sys.executable, "-c", _MPS_PROBE], env={**os.environ,
                                                                        **self.env()},
                               capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"the probe did not finish: {e}"
        if r.returncode == 0:
            return None
        return (r.stdout + r.stderr).strip()[-500:] or f"the probe exited {r.returncode}"

    def stop(self) -> None:
        """Ask the daemon to quit (after its clients exit), end it if it does not, and remove
        its folder."""
        try:
            subprocess.run([self.control], input=b"quit\n", env={**os.environ, **self.env()},
                           timeout=30, check=False, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("MPS daemon did not take quit: %s", e)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log.warning("MPS daemon still running after quit; terminating it")
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


#: a CUDA context on device 0 through the driver API (``MpsDaemon.probe``); prints the failing
#: call's name and CUDA error code
_MPS_PROBE = """
import ctypes, sys
try:
    cu = ctypes.CDLL("libcuda.so.1")
except OSError as e:
    sys.exit(f"libcuda.so.1: {e}")
dev, ctx = ctypes.c_int(), ctypes.c_void_p()
for name, call in (("cuInit", lambda: cu.cuInit(0)),
                   ("cuDeviceGet", lambda: cu.cuDeviceGet(ctypes.byref(dev), 0)),
                   ("cuCtxCreate_v2", lambda: cu.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev)),
                   ("cuCtxDestroy_v2", lambda: cu.cuCtxDestroy_v2(ctx))):
    rc = call()
    if rc != 0:
        sys.exit(f"{name} failed with CUDA error {rc}")
"""

#: seconds :func:`start_mps` waits for the daemon's control pipe
MPS_START_TIMEOUT_S = 30.0


def _die_with_starter() -> None:
    """``preexec_fn`` of the daemon: SIGTERM when the thread that started it ends, so that a
    killed ``serve all`` (even SIGKILL) leaves no daemon behind."""
    from ffhquv.supervisor import parent_death_signal

    parent_death_signal(signal.SIGTERM)


def start_mps(folder: str | Path) -> MpsDaemon:
    """Start a CUDA MPS control daemon whose pipe and log folders lie in ``folder``.

    Processes started with :meth:`MpsDaemon.env` share one MPS server: their kernels run on
    the GPU at the same time instead of in turns (time slices) as separate contexts do.
    ``serve all`` starts one for its fitters and exporter (``FFHQUV_CUDA_MPS``). Only those
    processes use it (its pipe folder is private); a system-wide MPS daemon (a Kubernetes
    node's, ``CUDA_MPS_PIPE_DIRECTORY`` set) is used as it is instead. The daemon runs in the
    foreground (``-f``) as a child of the calling thread, which must live as long as the
    daemon is needed: the kernel sends it SIGTERM when that thread ends.

    Raises:
        PreconditionFailed: ``nvidia-cuda-mps-control`` is not on ``PATH``, or it exited, or
            its control pipe did not appear within :data:`MPS_START_TIMEOUT_S`; ``folder`` is
            removed then, whatever the failure.
    """
    control = shutil.which(MPS_CONTROL)
    if control is None:
        shutil.rmtree(folder, ignore_errors=True)  # (serve all made it beforehand)
        raise PreconditionFailed(
            f"FFHQUV_CUDA_MPS=on needs {MPS_CONTROL} on PATH (the NVIDIA driver's MPS tools); "
            "install them or set FFHQUV_CUDA_MPS=off")
    d = MpsDaemon(folder=Path(folder), control=control)
    for sub in ("pipe", "log"):
        (d.folder / sub).mkdir(parents=True, exist_ok=True)
    out = d.folder / "daemon.out"
    try:
        with open(out, "wb") as sink:
            # a session of its own: a terminal's Ctrl-C (to serve all's process group) must
            # not end it while the fitters finish their calls; serve all stops it last
            d.proc = subprocess.Popen([control, "-f"], env={**os.environ, **d.env()},
                                      stdin=subprocess.DEVNULL, stdout=sink,
                                      stderr=subprocess.STDOUT, preexec_fn=_die_with_starter,
                                      start_new_session=True)
    except OSError as e:
        shutil.rmtree(d.folder, ignore_errors=True)
        raise PreconditionFailed(f"{MPS_CONTROL} -f did not start: {e}") from e
    deadline = time.monotonic() + MPS_START_TIMEOUT_S
    while not (d.folder / "pipe" / "control").exists():
        rc = d.proc.poll()
        if rc is not None or time.monotonic() > deadline:
            if rc is None:
                d.proc.kill()
                d.proc.wait()
            text = out.read_text(errors="replace").strip() if out.exists() else ""
            shutil.rmtree(d.folder, ignore_errors=True)
            why = f"exit {rc}" if rc is not None else f"no control pipe after " \
                f"{MPS_START_TIMEOUT_S:.0f} s"
            raise PreconditionFailed(f"{MPS_CONTROL} -f failed ({why}): {text}")
        time.sleep(0.05)
    log.info("CUDA MPS daemon started", extra={"folder": str(d.folder), "pid": d.proc.pid})
    return d
