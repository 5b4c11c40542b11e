"""What a CLI process learns of its machine and gives its children: whether an NVIDIA driver
is loaded (:func:`cuda_available`), the GPU's memory (:func:`gpu_memory_gb`) and the
environment that sizes a child's thread pools (:func:`threads_env`), for ``serve all``'s
children and ``ffhquv fit --workers``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# the thread pools a ``serve all`` child sizes to its share of the cores: torch's intra-op
# (OpenMP) threads and OpenCV's (by default one per core in every process)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")


def threads_env(threads: int) -> dict[str, str]:
    """The environment that sizes a child process's thread pools (:data:`THREAD_VARS`) to
    ``threads``; a variable the user set is left to the user."""
    return {v: str(threads) for v in THREAD_VARS if not os.environ.get(v)}


def cuda_available() -> bool:
    """An NVIDIA driver is loaded (the fitter children resolve "auto" with torch; the
    gateway process does not import it)."""
    return Path("/proc/driver/nvidia/version").exists()


def gpu_memory_gb() -> float | None:
    """Total memory of the first NVIDIA GPU (``nvidia-smi``), None when it cannot be read."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=memory.total",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True,
                           timeout=10)
        return float(r.stdout.split()[0]) / 1024 if r.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None
