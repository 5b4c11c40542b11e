"""Paths and settings shared by every service, read from the environment: every ``FFHQUV_*``
variable is listed here (:data:`VARIABLES`) and in the README's configuration table, and read
through this module (``tests/test_config.py`` checks both).

| variable | default | meaning (read by) |
|---|---|---|
| ``FFHQUV_CACHE_DIR`` | ``<repo>/.cache`` (checkout), ``~/.cache/ffhquv`` | built models, caches |
| ``FFHQUV_CHECKPOINTS_DIR`` | unset | the paper's ``checkpoints/`` folder (optional) |
| ``FFHQUV_TOPO_DIR`` | unset | the paper's ``topo_assets/`` folder (optional, for ``hifi3dpp``) |
| ``FFHQUV_LANDMARK_MODEL`` | the copy in ``face_recognition_models`` | dlib 68-point model file |
| ``FFHQUV_DETECT_QUICK_SIDE`` | ``640`` | detector: quick look at a copy this long first (0: off) |
| ``FFHQUV_REFERENCE_DIR`` | ``../shared/data/ffhq-uv-reference`` | reference data (tests) |
| ``FFHQUV_LOG_FORMAT`` | ``json`` for services, ``text`` for the CLI | log line format |
| ``FFHQUV_LOG_LEVEL`` | ``INFO`` (``WARNING`` for ``ffhquv fit``) | log level |
| ``FFHQUV_CUDA_GRAPHS`` | ``1`` | ``0`` / ``false`` / ``no`` / ``off``: eager steps on CUDA |
| ``FFHQUV_CUDA_GRAPH_PROGRAMS`` | ``16`` | recorded fitting steps kept per face model (LRU) |
| ``FFHQUV_COMPILE`` | ``0`` (``1``: ``serve all``'s CUDA fitters) | steps via ``torch.compile`` |
| ``FFHQUV_CUDA_WAIT`` | ``block`` | how threads wait for the GPU: ``block``, ``spin``, ``auto`` |
| ``FFHQUV_CUDA_MPS`` | ``auto`` | ``serve all``'s GPU children under its own MPS daemon |
| ``FFHQUV_FITTER_CONCURRENCY`` | ``1`` | batched fits at a time per device (fitter service) |
| ``FFHQUV_FITTER_MAX_BATCH`` | ``1`` on CPU, ``8`` on CUDA | photos per batched fit |
| ``FFHQUV_FITTER_MAX_DELAY_MS`` | ``20`` | longest wait of a request for batch-mates |
| ``FFHQUV_FITTER_WARM`` | ``auto`` (on CUDA only) | ``1`` / ``0``: warm up before serving |
| ``FFHQUV_SERVE_REPLICAS`` | one per 4 cores, 1 to 4 | ``serve all``: processes per CPU service |
| ``FFHQUV_FITTER_REPLICAS`` | CPU 1, CUDA 3 per 8 cores (1-6, 8 GB each) | ``serve all``: fitters |
| ``FFHQUV_GATEWAY_REPLICAS`` | one per 4 cores (1-4) | ``serve all``: gateway processes |
| ``FFHQUV_DETECTOR_ADDR`` ... ``FFHQUV_EXPORTER_ADDR`` | unset | gateway: where each service is |
| ``FFHQUV_STORAGE_DIR`` | ``<cache>/artifacts`` | gateway artifact folder |
| ``FFHQUV_STORAGE_MAX_BYTES`` | ``5 GiB`` | gateway artifact folder size cap |
| ``FFHQUV_MAX_QUEUE`` / ``FFHQUV_MAX_CONCURRENT`` | ``64`` / ``16`` | gateway admission |
| ``FFHQUV_AUTH_TOKEN`` / ``FFHQUV_AUTH_TOKEN_FILE`` | unset | gateway bearer token (or its file) |
| ``FFHQUV_INTERNAL_TOKEN`` / ``FFHQUV_INTERNAL_TOKEN_FILE`` | ``serve all`` makes one | ditto |
| ``FFHQUV_PARENT_PID`` | set by ``serve all`` | in its children: die with that parent |
| ``FFHQUV_DRAIN_SECONDS`` | ``10`` | a server's drain of in-flight calls once told to stop |
| ``FFHQUV_TLS_CERT`` / ``_KEY`` / ``_CA`` | unset | TLS; with a CA, mutual TLS |
| ``FFHQUV_SERVICE`` | set by the image | which service a container image serves (Dockerfiles) |
| ``FFHQUV_TORCH_SPEC`` | ``torch==2.13.0`` | torch requirement installed by ``./run`` |
| ``FFHQUV_SKIP_BLENDER`` | ``0`` | ``1``: ``./run`` skips the bpy install |

The last three are read by shell (``run``, ``docker/``), not by Python; they are listed so the
table is complete. A flag given on the command line wins over its variable.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    env = os.environ.get("FFHQUV_CACHE_DIR")
    if env:
        p = Path(env)
    elif (REPO_ROOT / "pyproject.toml").is_file():
        p = REPO_ROOT / ".cache"
    else:
        p = Path.home() / ".cache" / "ffhquv"
    p.mkdir(parents=True, exist_ok=True)
    return p


def checkpoints_dir() -> Path | None:
    env = os.environ.get("FFHQUV_CHECKPOINTS_DIR")
    return Path(env) if env else None


def topo_dir() -> Path | None:
    env = os.environ.get("FFHQUV_TOPO_DIR")
    return Path(env) if env else None


def landmark_model() -> Path | None:
    """The dlib 68-point shape predictor file to use instead of the one shipped in
    ``face_recognition_models`` (``FFHQUV_LANDMARK_MODEL``; e.g. a commercially licensed
    model: the shipped one was trained on iBUG 300-W, non-commercial terms)."""
    env = os.environ.get("FFHQUV_LANDMARK_MODEL")
    return Path(env).expanduser() if env else None


#: the detector's quick look by default: the largest face on a copy at most 640 px long,
#: not upsampled (2.4x less detection work than FFHQ-UV's full scan, and as good heads over
#: 24 test photos: BENCHMARKS.md, twenty-ninth session)
DETECT_QUICK_SIDE = 640


def detect_quick_side() -> int:
    """``FFHQUV_DETECT_QUICK_SIDE``: the longest side of the copy on which the detector looks
    for the largest face first (:data:`DETECT_QUICK_SIDE`, the default; 0: FFHQ-UV's full
    scan only; see ``services.detector.core.Detector``)."""
    raw = env("FFHQUV_DETECT_QUICK_SIDE") or str(DETECT_QUICK_SIDE)
    try:
        side = int(raw)
    except ValueError:
        side = -1
    if side < 0:
        raise ValueError(f"FFHQUV_DETECT_QUICK_SIDE must be a whole number of pixels >= 0, got "
                         f"{raw!r}")
    return side


def reference_data_dir() -> Path:
    """The developers' shared FFHQ-UV reference data (may be absent)."""
    env = os.environ.get("FFHQUV_REFERENCE_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "ffhq-uv-reference"


# ---- the table, for code and tests ------------------------------------------------------------
SERVICES = ("detector", "fitter", "eyeball", "exporter")

#: every FFHQUV_* variable -> one line of what it does (the module docstring has the defaults)
VARIABLES: dict[str, str] = {
    "FFHQUV_CACHE_DIR": "built models and other caches",
    "FFHQUV_CHECKPOINTS_DIR": "the paper's checkpoints/ folder (optional)",
    "FFHQUV_TOPO_DIR": "the paper's topo_assets/ folder (for the hifi3dpp face model)",
    "FFHQUV_LANDMARK_MODEL": "dlib 68-point shape predictor file instead of the shipped one",
    "FFHQUV_DETECT_QUICK_SIDE": "detector: HOG looks for the largest face on a copy this long "
                                "first (default 640; 0: off, FFHQ-UV's full scan only)",
    "FFHQUV_REFERENCE_DIR": "the developers' FFHQ-UV reference data (tests)",
    "FFHQUV_LOG_FORMAT": "log line format: json or text",
    "FFHQUV_LOG_LEVEL": "log level",
    "FFHQUV_CUDA_GRAPHS": "0 turns off the CUDA-graph replay of the fitting steps",
    "FFHQUV_CUDA_GRAPH_PROGRAMS": "recorded fitting steps a process keeps per face model (LRU)",
    "FFHQUV_COMPILE": "1: the fitting steps' arithmetic fused by torch.compile on CUDA (default 0; "
                      "serve all's CUDA fitters: 1)",
    "FFHQUV_CUDA_WAIT": "block / spin / auto: how a thread waits for the GPU (ffhquv.cuda)",
    "FFHQUV_CUDA_MPS": "auto / on / off: serve all's GPU children under a CUDA MPS daemon of its "
                       "own (ffhquv.cuda)",
    "FFHQUV_FITTER_CONCURRENCY": "batched fits at a time per device in the fitter service",
    "FFHQUV_FITTER_MAX_BATCH": "photos per batched fit (default 1 on CPU, 8 on CUDA)",
    "FFHQUV_FITTER_MAX_DELAY_MS": "longest wait of a fit request for batch-mates",
    "FFHQUV_FITTER_WARM": "1 / 0: warm the fitter up before serving (default: on CUDA only)",
    "FFHQUV_SERVE_REPLICAS": "serve all: processes of each CPU service",
    "FFHQUV_FITTER_REPLICAS": "serve all: fitter processes (sharing the GPU on CUDA)",
    "FFHQUV_GATEWAY_REPLICAS": "serve all: gateway processes on the public port",
    **{f"FFHQUV_{s.upper()}_ADDR": f"gateway: address of the {s} service" for s in SERVICES},
    "FFHQUV_STORAGE_DIR": "gateway artifact folder",
    "FFHQUV_STORAGE_MAX_BYTES": "gateway artifact folder size cap",
    "FFHQUV_MAX_QUEUE": "gateway admission: queued reconstructions",
    "FFHQUV_MAX_CONCURRENT": "gateway admission: running reconstructions",
    "FFHQUV_AUTH_TOKEN": "bearer token the gateway requires",
    "FFHQUV_AUTH_TOKEN_FILE": "file holding the gateway's bearer token",
    "FFHQUV_INTERNAL_TOKEN": "token the backends require of their callers (serve all sets one)",
    "FFHQUV_INTERNAL_TOKEN_FILE": "file holding the internal token",
    "FFHQUV_PARENT_PID": "set by serve all in its children: die with that parent",
    "FFHQUV_DRAIN_SECONDS": "seconds a server (and serve all's gateways) finishes in-flight "
                            "calls after SIGTERM / Ctrl-C before it cancels them",
    "FFHQUV_TLS_CERT": "TLS certificate (PEM)",
    "FFHQUV_TLS_KEY": "TLS private key (PEM)",
    "FFHQUV_TLS_CA": "TLS CA (PEM); with it, mutual TLS between services",
    "FFHQUV_SERVICE": "which service a container image serves (Dockerfiles)",
    "FFHQUV_TORCH_SPEC": "torch requirement installed by ./run",
    "FFHQUV_SKIP_BLENDER": "1: ./run skips the bpy install",
}

_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")


def env(name: str, default: str | None = None) -> str | None:
    """The value of a listed ``FFHQUV_*`` variable (``default`` when unset or empty).

    Raises:
        KeyError: ``name`` is not in :data:`VARIABLES` (document it there first).
    """
    if name not in VARIABLES:
        raise KeyError(f"{name} is not a documented FFHQUV_* variable (add it to "
                       "ffhquv.config.VARIABLES and the README)")
    return os.environ.get(name) or default


def _int(name: str, default: int) -> int:
    return int(env(name) or default)


def log_format(default: str) -> str:
    """``FFHQUV_LOG_FORMAT``, else ``default`` (``json`` for services, ``text`` for the CLI)."""
    return os.environ.get("FFHQUV_LOG_FORMAT", default)


def log_level(default: str = "INFO") -> str:
    """``FFHQUV_LOG_LEVEL``, else ``default``."""
    return os.environ.get("FFHQUV_LOG_LEVEL", default)


def cuda_graphs() -> bool:
    """False when ``FFHQUV_CUDA_GRAPHS`` is ``0`` / ``false`` / ``no`` / ``off`` (default on)."""
    return os.environ.get("FFHQUV_CUDA_GRAPHS", "1").strip().lower() not in _FALSE


def cuda_graph_programs() -> int:
    """``FFHQUV_CUDA_GRAPH_PROGRAMS`` (default 16): how many recorded fitting steps (one per
    stage, setting and batch size, each with its graph's memory) a process keeps per face
    model (:func:`services.fitter.graphs.cached_program`)."""
    return _int("FFHQUV_CUDA_GRAPH_PROGRAMS", 16)


def compile_steps() -> bool:
    """``FFHQUV_COMPILE``: True for ``1`` / ``true`` / ``yes`` / ``on`` (default off; ``serve
    all`` sets it for its CUDA fitters: ``ffhquv_cli.commands.serve_all_compile_env``): the
    fitter's optimisation steps on CUDA run their arithmetic through ``torch.compile``
    (:func:`services.fitter.graphs.compiled`)."""
    return os.environ.get("FFHQUV_COMPILE", "0").strip().lower() in _TRUE


def cuda_wait() -> str:
    """``FFHQUV_CUDA_WAIT``: ``block`` (default), ``spin`` or ``auto`` (:mod:`ffhquv.cuda`)."""
    return (env("FFHQUV_CUDA_WAIT") or "block").strip().lower()


def cuda_mps() -> str:
    """``FFHQUV_CUDA_MPS``: ``auto`` (default), ``on`` (also ``1`` / ``true`` / ``yes``) or
    ``off`` (also ``0`` / ``false`` / ``no``): whether ``serve all`` runs its GPU children
    under a CUDA MPS daemon of its own (:func:`ffhquv.cuda.start_mps`); ``auto`` does when it
    serves on a GPU and the driver's MPS tools are installed, ``on`` requires them.

    Raises:
        ValueError: another value.
    """
    v = (env("FFHQUV_CUDA_MPS") or "auto").strip().lower()
    if v in _FALSE:
        return "off"
    if v in _TRUE:
        return "on"
    if v == "auto":
        return "auto"
    raise ValueError(f"FFHQUV_CUDA_MPS={v!r}: expected auto, on or off")


def fitter_warm() -> bool | None:
    """``FFHQUV_FITTER_WARM``: True for ``1`` / ``true`` / ``yes`` / ``on``, False for ``0`` /
    ``false`` / ``no`` / ``off``, None for ``auto`` or unset (the fitter service warms up
    before serving on CUDA only).

    Raises:
        ValueError: another value.
    """
    v = (env("FFHQUV_FITTER_WARM") or "auto").strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    if v == "auto":
        return None
    raise ValueError(f"FFHQUV_FITTER_WARM={v!r}: expected auto, 1 or 0")


def fitter_concurrency() -> int:
    """``FFHQUV_FITTER_CONCURRENCY``: batched fits at a time per device (default 1)."""
    return int(os.environ.get("FFHQUV_FITTER_CONCURRENCY", "1"))


def fitter_max_batch() -> int | None:
    """``FFHQUV_FITTER_MAX_BATCH``, None when unset (the servicer picks by device)."""
    v = os.environ.get("FFHQUV_FITTER_MAX_BATCH", "").strip()
    return int(v) if v else None


def _replicas(name: str) -> int | None:
    v = (env(name) or "").strip()
    return max(1, int(v)) if v else None


def fitter_replicas() -> int | None:
    """``FFHQUV_FITTER_REPLICAS`` (at least 1), None when unset (``serve all`` picks by
    device and cores)."""
    return _replicas("FFHQUV_FITTER_REPLICAS")


def serve_replicas() -> int | None:
    """``FFHQUV_SERVE_REPLICAS`` (at least 1): ``serve all``'s processes of each CPU service,
    None when unset (it picks by cores)."""
    return _replicas("FFHQUV_SERVE_REPLICAS")


def gateway_replicas() -> int | None:
    """``FFHQUV_GATEWAY_REPLICAS`` (at least 1): ``serve all``'s gateway processes, None when
    unset (it picks by cores)."""
    return _replicas("FFHQUV_GATEWAY_REPLICAS")


def fitter_max_delay_s() -> float:
    """``FFHQUV_FITTER_MAX_DELAY_MS`` in seconds (default 0.02)."""
    return float(os.environ.get("FFHQUV_FITTER_MAX_DELAY_MS", "20")) / 1000


def drain_seconds() -> float:
    """``FFHQUV_DRAIN_SECONDS``: how long a stopping server finishes its in-flight calls
    (default 10; the k8s pods' ``terminationGracePeriodSeconds`` leave room for it)."""
    raw = env("FFHQUV_DRAIN_SECONDS") or "10"
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not v >= 0:  # (NaN too)
        raise ValueError(f"FFHQUV_DRAIN_SECONDS must be a number of seconds, 0 or more, "
                         f"got {raw!r}")
    return v


def service_addr(service: str) -> str | None:
    """``FFHQUV_<SERVICE>_ADDR`` (``host:port`` or ``dns:///name:port``), None when unset."""
    return env(f"FFHQUV_{service.upper()}_ADDR")


def storage_dir() -> Path:
    """``FFHQUV_STORAGE_DIR``, else ``<cache>/artifacts``."""
    v = env("FFHQUV_STORAGE_DIR")
    return Path(v) if v else cache_dir() / "artifacts"


def storage_max_bytes() -> int:
    """``FFHQUV_STORAGE_MAX_BYTES`` (default 5 GiB)."""
    return int(os.environ.get("FFHQUV_STORAGE_MAX_BYTES", str(5 * 1024 ** 3)))


def max_queue() -> int:
    """``FFHQUV_MAX_QUEUE``: queued reconstructions the gateway admits (default 64)."""
    return int(os.environ.get("FFHQUV_MAX_QUEUE", "64"))


def max_concurrent() -> int:
    """``FFHQUV_MAX_CONCURRENT``: reconstructions the gateway runs at once (default 16)."""
    return int(os.environ.get("FFHQUV_MAX_CONCURRENT", "16"))


def auth_token() -> str | None:
    """``FFHQUV_AUTH_TOKEN``, None when unset."""
    return env("FFHQUV_AUTH_TOKEN")


def tls_files() -> tuple[str | None, str | None, str | None]:
    """``(FFHQUV_TLS_CERT, FFHQUV_TLS_KEY, FFHQUV_TLS_CA)``, None for each unset one."""
    return env("FFHQUV_TLS_CERT"), env("FFHQUV_TLS_KEY"), env("FFHQUV_TLS_CA")
