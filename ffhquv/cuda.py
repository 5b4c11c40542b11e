"""How a process's host threads wait for its GPU: one setting, made before the CUDA context.

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
import threading

from ffhquv.config import cuda_wait

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


__all__ = ["configure_waits", "wait_mode_now"]
