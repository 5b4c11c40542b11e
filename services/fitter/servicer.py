"""gRPC servicer of ``ffhquv.fitter.v1.Fitter`` (thin: proto <-> :mod:`services.fitter.core`).

Concurrency: one :class:`FitterCore` per (face model, device), built on first use and reused.
Requests go through a :class:`~services.fitter.batcher.FitBatcher` per device: concurrent
requests with the same options are fitted as one batch (at most ``FFHQUV_FITTER_MAX_BATCH``
photos, default 1 on CPU and :data:`CUDA_MAX_BATCH` on CUDA; the first waits at most
``FFHQUV_FITTER_MAX_DELAY_MS`` for others, default 20). ``FFHQUV_FITTER_CONCURRENCY`` batches
run at a time per device (default 1): a fit uses all the CPU threads torch is given, or a good
part of the GPU, so running several at once only slows each down. Requests that find the
batcher busy get a ``STAGE_QUEUED`` progress event. Once a photo's shape is final its stream
gets a ``geometry`` event (the neutral head and the eye rings), ahead of the result, so that
the gateway places the eyeballs while the fit finishes. Batch sizes and queue waits are exported
(``ffhquv_fit_batch_size``, ``ffhquv_fit_queue_seconds``).

Cancellation: when the client goes away (or cancels), ``context.add_callback`` sets the fit's
cancel event; the core stops at its next optimisation step with ``CANCELLED``. The servicer
keeps serving.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from ffhquv import config, metrics, vocab
from ffhquv.aligned import AlignedFace
from ffhquv.errors import Cancelled, InvalidInput
from ffhquv.imaging import png_bytes
from ffhquv.pb import common_pb2, fitter_pb2, fitter_pb2_grpc
from services.fitter.batcher import BatchKey, FitBatcher, FitJob
from services.fitter.core import FitGeometry, FitOutput, FitterCore, resolve_device

log = logging.getLogger(__name__)

SERVICE_NAME = "ffhquv.fitter.v1.Fitter"
PRESETS = vocab.preset_by_proto()
DEVICES = vocab.device_by_proto()
STAGES = {"stage1": common_pb2.STAGE_FIT_STAGE1, "stage2": common_pb2.STAGE_FIT_STAGE2,
          "stage3": common_pb2.STAGE_FIT_STAGE3}
FACE_MODELS = vocab.FACE_MODELS
# photos per batched fit on CUDA by default (BENCHMARKS.md: the fitter's throughput on an H200
# stops growing past a batch of 8)
CUDA_MAX_BATCH = 8
MIN_EVENT_INTERVAL_S = 0.25  # at most ~4 progress events per second (plus stage ends)

MEDIA_TYPES = vocab.MEDIA_TYPES
media_type = vocab.media_type


def face_model_availability(topo_dir: str | None = None) -> dict[str, str]:
    """``name -> "available"`` or ``"unavailable: <why>"`` for the face models."""
    from ffhquv.config import topo_dir as env_topo

    out = {vocab.FACE_MODEL_DEFAULT: "available"}
    td = topo_dir or env_topo()
    if td is None:
        out[vocab.FACE_MODEL_HIFI3DPP] = ("unavailable: needs the paper's topo_assets folder "
                           "(set FFHQUV_TOPO_DIR to the folder holding hifi3dpp_model_info.mat)")
    else:
        f = os.path.join(str(td), "hifi3dpp_model_info.mat")
        out[vocab.FACE_MODEL_HIFI3DPP] = "available" if os.path.isfile(f) else (
            f"unavailable: {f} is missing")
    return out


def geometry_to_proto(geo: FitGeometry) -> fitter_pb2.FitGeometry:
    """A :class:`FitGeometry` as a ``FitGeometry`` message."""
    return fitter_pb2.FitGeometry(mesh_neutral=geo.mesh_neutral.to_proto(),
                                  left_eye_ring=[int(i) for i in geo.eye_ring_left],
                                  right_eye_ring=[int(i) for i in geo.eye_ring_right])


def result_to_proto(out: FitOutput, request_id: str, want_intermediates: bool
                    ) -> fitter_pb2.FitResult:
    """A :class:`FitOutput` as a ``FitResult`` message."""
    c = out.coefficients
    cam = out.camera
    res = fitter_pb2.FitResult(
        request_id=request_id,
        coefficients=common_pb2.Coefficients(
            face_model=out.face_model, identity=c["id"].tolist(), expression=c["exp"].tolist(),
            angles=c["angles"].tolist(), gamma=c["gamma"].tolist(),
            translation=c["trans"].tolist()),
        mesh_neutral=out.mesh_neutral.to_proto(),
        mesh_expression=out.mesh_expression.to_proto(),
        uv_texture_png=out.uv_texture_png or png_bytes(out.uv_texture),
        metrics={k: float(v) for k, v in out.metrics.items()},
        report_json=out.report_json,
        preview_png=out.preview_png or png_bytes(out.preview),
        left_eye_ring=[int(i) for i in out.eye_ring_left],
        right_eye_ring=[int(i) for i in out.eye_ring_right],
        camera=common_pb2.Camera(focal=cam.focal, center=cam.center,
                                 camera_distance=cam.distance, image_size=cam.size,
                                 znear=cam.znear, zfar=cam.zfar),
        metres_per_unit=out.metres_per_unit,
    )
    if out.hair is not None:
        res.hair.CopyFrom(out.hair.to_proto())
    if want_intermediates:
        res.files.extend(common_pb2.NamedFile(name=n, media_type=media_type(n), data=d)
                         for n, d in sorted(out.intermediates.items()))
    return res


def warm_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes a warming fitter fits a synthetic face at: 1, and with
    ``FFHQUV_COMPILE`` on also 2 when batches of several are allowed (torch.compile
    specialises a batch of one and compiles one program for every larger batch on the first
    of them: 12-160 s a program, which must not fall on a request)."""
    if config.compile_steps() and max_batch >= 2:
        return (1, 2)
    return (1,)


class FitterServicer(fitter_pb2_grpc.FitterServicer):
    """See the module docstring.

    Args:
        device: device of requests that leave it unspecified ("auto", "cpu", "cuda").
        checkpoints_dir / topo_dir: passed to each :class:`FitterCore`.
        concurrency: batches at a time per device (default ``FFHQUV_FITTER_CONCURRENCY`` or 1).
        threads: torch CPU threads per fit (None: torch's default).
        max_batch: photos per batched fit (None: ``FFHQUV_FITTER_MAX_BATCH``, else 1 on CPU
            and :data:`CUDA_MAX_BATCH` on CUDA).
        max_delay_s: longest wait of a request for batch-mates (None:
            ``FFHQUV_FITTER_MAX_DELAY_MS`` / 1000, else 0.02).
    """

    def __init__(self, device: str = "auto", checkpoints_dir: str | None = None,
                 topo_dir: str | None = None, concurrency: int | None = None,
                 threads: int | None = None, max_batch: int | None = None,
                 max_delay_s: float | None = None):
        from ffhquv.config import checkpoints_dir as env_ckpt
        from ffhquv.config import topo_dir as env_topo

        self.device = device or "auto"
        self.checkpoints_dir = checkpoints_dir or env_ckpt()
        self.topo_dir = topo_dir or env_topo()
        self.concurrency = concurrency or config.fitter_concurrency()
        self.threads = threads
        self._cores: dict[tuple[str, str], FitterCore] = {}
        self.max_batch = max_batch or config.fitter_max_batch()
        self.max_delay_s = (max_delay_s if max_delay_s is not None else
                            config.fitter_max_delay_s())
        self._batchers: dict[str, FitBatcher] = {}
        self._lock = threading.Lock()

    def core(self, face_model: str, device: str) -> FitterCore:
        """The cached core for (face model, resolved device); built on first use."""
        dev = str(resolve_device(device))
        name = face_model or vocab.DEFAULT_FACE_MODEL
        if name not in FACE_MODELS:
            raise InvalidInput(f"unknown face model {name!r}; expected one of {FACE_MODELS}")
        key = (name, dev)
        with self._lock:
            core = self._cores.get(key)
            if core is None:
                core = FitterCore(name, dev, checkpoints_dir=self.checkpoints_dir,
                                  topo_dir=self.topo_dir, threads=self.threads)
                self._cores[key] = core
            return core

    def add_core(self, core: FitterCore, face_model: str | None = None) -> None:
        """Register a prebuilt core (e.g. with a test model) for its (model, device)."""
        with self._lock:
            self._cores[(face_model or core.face_model, str(core.device))] = core

    def batcher(self, device: str) -> FitBatcher:
        """The batcher of a (resolved) device; built on first use."""
        with self._lock:
            b = self._batchers.get(device)
            if b is None:
                size = self.max_batch or (CUDA_MAX_BATCH if device.startswith("cuda") else 1)
                b = self._batchers[device] = FitBatcher(max_batch=size,
                                                        max_delay_s=self.max_delay_s,
                                                        workers=self.concurrency)
            return b

    def warm(self, face_model: str = vocab.DEFAULT_FACE_MODEL, device: str | None = None,
             preset: str = vocab.DEFAULT_PRESET, texture_size: int = vocab.TEXTURE_SIZE_DEFAULT,
             batch_sizes: tuple[int, ...] | None = None, fit: bool = True) -> float:
        """Build the core and its photo-independent tables (:meth:`FitterCore.prepare`) and,
        on CUDA with ``fit``, run a throw-away fit of a synthetic face per batch size (kernel
        loading, CUDA graphs), so that the first real request costs what later ones do: a
        service warms so before it reports ready. ``fit=False`` is for a run whose first real
        fit comes at once (``ffhquv fit``): a throw-away fit would only delay it. Requests that
        arrive meanwhile queue in the batcher. Returns the seconds it took. Safe to call from
        a thread."""
        t0 = time.perf_counter()
        dev = self.device if device is None else device
        batcher = self.batcher(str(resolve_device(dev)))
        batcher.set_ready(False)
        try:
            core = self.core(face_model, dev)
            core.prepare(preset, texture_size)
            if fit:
                self._warm(core, preset, texture_size,
                           batch_sizes or warm_batch_sizes(batcher.max_batch))
        finally:
            batcher.set_ready(True)
        log.info("fitter warm", extra={"device": str(core.device), "seconds":
                                       round(time.perf_counter() - t0, 2)})
        return time.perf_counter() - t0

    @staticmethod
    def _warm(core: FitterCore, preset: str, texture_size: int,
              sizes: tuple[int, ...]) -> None:
        import torch

        from services.fitter.synthetic import synthetic_face, synthetic_texture

        if core.device.type != "cuda":
            return  # a CPU fit has no one-time start-up worth a throw-away fit
        m = core.model
        c = m.zeros(1)
        c["angles"] = torch.tensor([[0.05, -0.2, 0.0]], device=m.device)
        face, _ = synthetic_face(m, c, synthetic_texture(128), hires=512)
        if config.compile_steps():
            # the wait a serve all on a GPU has before it serves, said where it is spent
            log.info("fitter compiling its fitting steps (FFHQUV_COMPILE=1) for batch sizes "
                     "%s: about a minute on a machine's first start, less from torch's cache",
                     ", ".join(map(str, sizes)))
        for b in sizes:
            core.fit_batch([face] * b, preset=preset, texture_size=texture_size,
                           want_intermediates=False)

    def close(self) -> None:
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for b in batchers:
            b.close()

    # -- RPCs ------------------------------------------------------------------------------------
    def Fit(self, request, context: grpc.ServicerContext):  # noqa: N802 - gRPC name
        cancel = threading.Event()
        context.add_callback(cancel.set)
        yield from self.events(request, cancel, context.is_active)

    def events(self, request, cancel: threading.Event,
               is_active: Callable[[], bool] | None = None) -> Iterator[fitter_pb2.FitEvent]:
        """The ``Fit`` stream without gRPC: progress events, then one result event.

        Args:
            request: a ``FitRequest``.
            cancel: set it to stop the fit (the iterator then raises ``Cancelled``).
            is_active: optional liveness probe of the consumer (False = gone, cancel).
        Raises:
            FfhquvError subclasses (InvalidInput, PreconditionFailed, Cancelled, ...).
        """
        t_start = time.perf_counter()
        alive = is_active or (lambda: True)
        if request.preset not in PRESETS:
            raise InvalidInput(f"unknown preset value {request.preset}", field="preset")
        if request.device not in DEVICES:
            raise InvalidInput(f"unknown device value {request.device}", field="device")
        if not request.HasField("face"):
            raise InvalidInput("FitRequest.face is required", field="face")
        face = AlignedFace.from_proto(request.face)
        dev = self.device if request.device == common_pb2.DEVICE_UNSPECIFIED else DEVICES[
            request.device]
        core = self.core(request.face_model or vocab.DEFAULT_FACE_MODEL, dev)
        tex_size = int(request.texture_size) or vocab.TEXTURE_SIZE_DEFAULT

        events: queue.Queue = queue.Queue()
        last_sent = {"t": 0.0, "stage": ""}

        def elapsed() -> float:
            return time.perf_counter() - t_start

        def progress(stage: str, frac: float, msg: str) -> None:
            now = time.perf_counter()
            edge = frac <= 0.0 or frac >= 1.0 or stage != last_sent["stage"]
            if not edge and now - last_sent["t"] < MIN_EVENT_INTERVAL_S:
                return
            last_sent["t"], last_sent["stage"] = now, stage
            events.put(("progress", common_pb2.Progress(
                stage=STAGES.get(stage, common_pb2.STAGE_UNSPECIFIED), fraction=frac,
                message=msg, elapsed_s=elapsed())))

        def geometry(geo: FitGeometry) -> None:  # the fit's thread: the message is built below
            events.put(("geometry", geo))

        batcher = self.batcher(str(core.device))
        job = FitJob(face=face, core=core, progress=progress, cancel=cancel, geometry=geometry,
                     key=BatchKey(core_id=id(core), preset=PRESETS[request.preset],
                                  texture_size=tex_size, seed=int(request.seed),
                                  want_intermediates=bool(request.want_intermediates)))
        if batcher.busy:
            yield fitter_pb2.FitEvent(progress=common_pb2.Progress(
                stage=common_pb2.STAGE_QUEUED, fraction=0.0,
                message=f"waiting for a free fitter slot on {core.device}", elapsed_s=elapsed()))
        fut = batcher.submit(job)
        fut.add_done_callback(lambda f: events.put(("done", f)))
        try:
            while True:
                try:
                    kind, item = events.get(timeout=0.5)
                except queue.Empty:
                    if not alive():
                        cancel.set()
                    if cancel.is_set():  # gone or past its deadline: do not wait for a batch
                        job.finish(error=Cancelled("fit cancelled"))
                    continue
                if kind == "progress":
                    yield fitter_pb2.FitEvent(progress=item)
                    continue
                if kind == "geometry":
                    yield fitter_pb2.FitEvent(geometry=geometry_to_proto(item))
                    continue
                out = item.result()  # raises the request's own error (Cancelled, ...)
                for st in ("stage1", "stage2", "stage3"):
                    metrics.STAGE_SECONDS.labels(f"fit_{st}").observe(
                        out.metrics.get(f"seconds_{st}", 0.0))
                yield fitter_pb2.FitEvent(result=result_to_proto(
                    out, request.request_id, request.want_intermediates))
                return
        finally:
            cancel.set()  # the request is over: leave the queue / the batch if still there

    @staticmethod
    def devices() -> list[int]:
        """The ``common.v1.Device`` values this server can fit on (CPU always, CUDA when a
        GPU is visible); what :meth:`DescribeModel` reports for the gateway's preflight."""
        import torch

        out = [common_pb2.DEVICE_CPU]
        if torch.cuda.is_available():
            out.append(common_pb2.DEVICE_CUDA)
        return out

    def DescribeModel(self, request, context: grpc.ServicerContext):  # noqa: N802
        name = request.face_model or vocab.DEFAULT_FACE_MODEL
        avail = face_model_availability(self.topo_dir)
        if name not in avail:
            raise InvalidInput(f"unknown face model {name!r}; expected one of {FACE_MODELS}")
        if avail[name] != "available":
            from ffhquv.errors import PreconditionFailed

            raise PreconditionFailed(f"face model {name!r} is {avail[name]}")
        model = self._cpu_model(name)
        return fitter_pb2.DescribeModelResponse(
            face_model=name, vertex_count=model.n_vertices,
            triangle_count=int(model.tri.shape[0]), identity_dim=model.id_dim,
            expression_dim=model.exp_dim, unit=model.unit, available=avail,
            devices=self.devices())

    def _cpu_model(self, name: str):
        with self._lock:
            for (n, _dev), core in self._cores.items():
                if n == name:
                    return core.model
        return self.core(name, "cpu").model


def register(server: grpc.Server, servicer: FitterServicer | None = None) -> list[str]:
    """Add the Fitter servicer to ``server``; returns its full service name."""
    fitter_pb2_grpc.add_FitterServicer_to_server(servicer or FitterServicer(), server)
    return [SERVICE_NAME]


def make_register(device: str = "auto", checkpoints_dir: str | None = None,
                  topo_dir: str | None = None, concurrency: int | None = None,
                  threads: int | None = None, warm: bool = False
                  ) -> Callable[[grpc.Server], list[str]]:
    """A ``register`` for :func:`ffhquv.server.build_server` with a configured servicer
    (``device`` is the default for requests that leave it unspecified). ``warm``: run
    :meth:`FitterServicer.warm` before registering, so the server reports ready only warm."""
    servicer = FitterServicer(device=device, checkpoints_dir=checkpoints_dir,
                              topo_dir=topo_dir, concurrency=concurrency, threads=threads)
    if warm:
        # on a thread that ends with it: a live thread that ran parallel torch ops keeps its
        # OpenMP team, and more OpenMP threads than cores slow every team's parallel regions
        # (gateway.backends.in_own_thread)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="warm") as pool:
            pool.submit(servicer.warm).result()
    return lambda server: register(server, servicer)
