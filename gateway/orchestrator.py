"""The pipeline, written once: detect -> fit -> eyeballs -> export.

The eyeballs need only the fitted shape: they start on the fit stream's geometry event and
are placed while the fitter finishes the texture and its outputs (:class:`EarlyEyeballs`).

The orchestrator talks to the four services through :class:`Backends`, whose methods take and
return the services' protobuf messages. :class:`gateway.backends.GrpcBackends` sends them to
remote servers (the gateway); :class:`gateway.backends.LocalBackends` calls the service cores in
this process (``ffhquv fit`` without ``--remote``). Both run the same steps below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ffhquv import metrics, vocab
from ffhquv.aligned import eye_photo
from ffhquv.errors import BackendUnavailable, InvalidInput, PreconditionFailed, echo
from ffhquv.pb import (
    common_pb2,
    detector_pb2,
    exporter_pb2,
    eyeball_pb2,
    fitter_pb2,
    gateway_pb2,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[common_pb2.Progress], Awaitable[None]]
FACE_MODELS = vocab.FACE_MODELS
PIPELINE_BACKENDS = ("detector", "fitter", "eyeball", "exporter")


class Backends(Protocol):
    """The four services, as async calls on their protobuf messages."""

    async def detect(self, req: detector_pb2.DetectRequest,
                     timeout: float | None) -> detector_pb2.DetectResponse: ...

    def fit(self, req: fitter_pb2.FitRequest,
            timeout: float | None) -> AsyncIterator[fitter_pb2.FitEvent]: ...

    async def place_eyeballs(self, req: eyeball_pb2.PlaceRequest,
                             timeout: float | None) -> eyeball_pb2.PlaceResponse: ...

    async def export(self, req: exporter_pb2.ExportRequest,
                     timeout: float | None) -> exporter_pb2.ExportResponse: ...


@dataclass
class Deadlines:
    """Per-step time limits in seconds (``None`` = no limit)."""

    detect: float | None = 60.0
    fit: float | None = 900.0
    eyeball: float | None = 60.0
    export: float | None = 300.0


@dataclass
class PipelineOutput:
    """Everything one reconstruction produced, before storage."""

    files: dict[str, bytes]
    metrics: dict[str, float]
    faces: list[detector_pb2.Face]
    selected_face: int
    coefficients: common_pb2.Coefficients
    warnings: list[str] = field(default_factory=list)


# Longest accepted string fields (checked before anything else looks at them).
MAX_LENGTHS = {"request_id": 128, "image.filename": 1024, "options.face_model": 32}
MAX_FORMATS = 16


def _enum_ok(enum, value: int) -> bool:
    return value in enum.values()


def validate_request(req: gateway_pb2.ReconstructRequest) -> None:
    """Raise InvalidInput for a request no service would accept: string lengths first, then
    every option (so a bad option fails before any work, not after a fit)."""
    for path, limit in MAX_LENGTHS.items():
        obj = req
        for part in path.split("."):
            obj = getattr(obj, part)
        if len(obj) > limit:
            raise InvalidInput(f"{path} is {len(obj)} characters; the limit is {limit}",
                               field=path)
    validate_options(req.options)


def validate_options(opts: gateway_pb2.Options) -> None:
    """Raise InvalidInput for option values no service would accept."""
    if len(opts.face_model) > MAX_LENGTHS["options.face_model"]:
        raise InvalidInput(f"face_model is {len(opts.face_model)} characters; the limit is "
                           f"{MAX_LENGTHS['options.face_model']}", field="options.face_model")
    if opts.face_model and opts.face_model not in FACE_MODELS:
        raise InvalidInput(f"unknown face_model {echo(opts.face_model)}; use one of "
                           f"{FACE_MODELS}", field="options.face_model")
    checks = (("preset", common_pb2.Preset, opts.preset),
              ("device_hint", common_pb2.Device, opts.device_hint),
              ("face_selection", detector_pb2.FaceSelection, opts.face_selection),
              ("detector_backend", detector_pb2.DetectorBackend, opts.detector_backend))
    for name, enum, value in checks:
        if not _enum_ok(enum, value):
            raise InvalidInput(f"unknown {name} value {value}; use one of "
                               f"{', '.join(enum.keys())}", field=f"options.{name}")
    if len(opts.formats) > MAX_FORMATS:
        raise InvalidInput(f"{len(opts.formats)} export formats given; at most {MAX_FORMATS}",
                           field="options.formats")
    for f in opts.formats:
        if f == exporter_pb2.EXPORT_FORMAT_UNSPECIFIED or not _enum_ok(exporter_pb2.ExportFormat,
                                                                       f):
            raise InvalidInput(f"unknown export format value {f}; use one of "
                               f"{', '.join(exporter_pb2.ExportFormat.keys()[1:])}",
                               field="options.formats")
    if opts.texture_size and not 256 <= opts.texture_size <= 2048:
        raise InvalidInput(f"texture_size must be within 256..2048, got {opts.texture_size}",
                           field="options.texture_size")
    if opts.units and opts.units not in vocab.EXPORT_UNITS:
        raise InvalidInput(f"unknown units {opts.units!r}; use 'm', 'cm' or 'model'",
                           field="options.units")
    if opts.subdivision not in vocab.SUBDIVISION_LEVELS:
        raise InvalidInput(f"subdivision must be one of {list(vocab.SUBDIVISION_LEVELS)}, got "
                           f"{opts.subdivision}", field="options.subdivision")
    if opts.texture_size and opts.texture_size & (opts.texture_size - 1):
        raise InvalidInput(f"texture_size must be a power of two, got {opts.texture_size}",
                           field="options.texture_size")


def requested_formats(opts: gateway_pb2.Options) -> frozenset[str]:
    """The export format names a request asks for (its ``formats``; none = the default set,
    :data:`ffhquv.vocab.DEFAULT_EXPORT_FORMATS`). Call after :func:`validate_options`."""
    names = vocab.format_by_proto()
    return frozenset(names[f] for f in opts.formats) or vocab.DEFAULT_EXPORT_FORMATS


def output_stem(filename: str) -> str:
    """``photos/IMG_0001.JPG`` -> ``IMG_0001``; a safe name for output folders and files."""
    import re
    from pathlib import PurePath

    stem = PurePath(filename.replace("\\", "/")).stem if filename else ""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "face"
    return stem[:100]


class EarlyEyeballs:
    """The eyeballs placed from a fit's geometry event while the fit finishes.

    :meth:`start` (re)starts the placement for the latest geometry; :meth:`result_for` gives
    its response when that geometry is the result's shape (same vertices and eye rings), else
    None (a fitter that sent none, or a stream restarted on another replica); :meth:`drop`
    cancels it when the fit failed.
    """

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None
        self._geometry: fitter_pb2.FitGeometry | None = None

    def start(self, geometry: fitter_pb2.FitGeometry,
              place: Callable[[fitter_pb2.FitGeometry], Awaitable[Any]]) -> None:
        if self._task is not None:  # an earlier geometry's placement: superseded
            self._task.cancel()
        self._geometry = geometry
        self._task = asyncio.ensure_future(place(geometry))

    async def result_for(self, result: fitter_pb2.FitResult) -> Any:
        g, task = self._geometry, self._task
        if task is None or g is None:
            return None
        if (g.mesh_neutral.vertices != result.mesh_neutral.vertices
                or g.left_eye_ring != result.left_eye_ring
                or g.right_eye_ring != result.right_eye_ring):
            await self.drop()
            return None
        self._task = None
        return await task  # its own error (bad eye ring, eyeball service down) is the request's

    async def drop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class Orchestrator:
    def __init__(self, backends: Backends, deadlines: Deadlines | None = None):
        self.backends = backends
        self.deadlines = deadlines or Deadlines()

    def preflight(self, req: gateway_pb2.ReconstructRequest) -> None:
        """Everything that can be refused before any work: the request's fields and options,
        the device asked of the fitter (FAILED_PRECONDITION when the fitter said it has no such
        device, see :meth:`GrpcBackends.fitter_devices`), and the backends this request needs
        (UNAVAILABLE at once when one is known to be down, with backends that follow their
        health, see :meth:`GrpcBackends.down`)."""
        validate_request(req)
        hint = req.options.device_hint
        devices_of = getattr(self.backends, "fitter_devices", None)
        devices = devices_of() if devices_of is not None else None
        if hint != common_pb2.DEVICE_UNSPECIFIED and devices and hint not in devices:
            name = vocab.device_by_proto()[hint]
            have = ", ".join(vocab.device_by_proto()[d] for d in sorted(devices))
            raise PreconditionFailed(
                f"device {name!r} was requested but the fitter has no {name.upper()} device "
                f"(it fits on: {have}); use device_hint {have.split(', ')[0]!r} or leave it "
                "unset", field="options.device_hint")
        down = getattr(self.backends, "down", None)
        if down is not None:
            dead = down(PIPELINE_BACKENDS)
            if dead:
                raise BackendUnavailable(
                    f"{', '.join(dead)} service{'s are' if len(dead) > 1 else ' is'} down "
                    "(health check failing); retry later")

    async def run(self, req: gateway_pb2.ReconstructRequest,
                  progress: ProgressFn | None = None) -> PipelineOutput:
        opts = req.options
        self.preflight(req)
        t0 = time.perf_counter()
        name = output_stem(req.image.filename)

        async def report(stage: int, fraction: float, message: str = "") -> None:
            if progress is not None:
                await progress(common_pb2.Progress(
                    stage=stage, fraction=fraction, message=message,
                    elapsed_s=time.perf_counter() - t0))

        timings: dict[str, float] = {}

        # 1. detect
        t = time.perf_counter()
        det = await self.backends.detect(detector_pb2.DetectRequest(
            image=req.image, backend=opts.detector_backend, selection=opts.face_selection,
            face_index=opts.face_index, unwrap_size=1024, want_visualization=True),
            self.deadlines.detect)
        timings["detect_s"] = time.perf_counter() - t
        metrics.STAGE_SECONDS.labels("detect").observe(timings["detect_s"])
        await report(common_pb2.STAGE_DETECTED, 1.0,
                     f"{len(det.faces)} face(s); using #{det.selected_index}")

        # 2. fit (streams progress); its geometry event starts 3. at once, beside the fit's end
        t = time.perf_counter()
        fit_req = fitter_pb2.FitRequest(
            request_id=req.request_id, face=det.aligned, preset=opts.preset,
            face_model=opts.face_model or vocab.DEFAULT_FACE_MODEL, device=opts.device_hint,
            texture_size=opts.texture_size or 1024,
            want_intermediates=vocab.FORMAT_INTERMEDIATES in requested_formats(opts),
            seed=opts.seed)
        eye_img, eye_lm = eye_photo(det.aligned)

        async def eyeballs(shape: fitter_pb2.FitGeometry | fitter_pb2.FitResult
                           ) -> eyeball_pb2.PlaceResponse:
            # 3. eyeballs: sample the iris colour from the eye region of the hi-res crop
            t_eye = time.perf_counter()
            resp = await self.backends.place_eyeballs(eyeball_pb2.PlaceRequest(
                head=shape.mesh_neutral, left_eye_ring=shape.left_eye_ring,
                right_eye_ring=shape.right_eye_ring, photo=eye_img, photo_landmarks=eye_lm,
                texture_size=1024), self.deadlines.eyeball)
            timings["eyeballs_s"] = time.perf_counter() - t_eye
            return resp

        result: fitter_pb2.FitResult | None = None
        early = EarlyEyeballs()
        try:
            async for ev in self.backends.fit(fit_req, self.deadlines.fit):
                kind = ev.WhichOneof("event")
                if kind == "progress":
                    if progress is not None:
                        p = common_pb2.Progress()
                        p.CopyFrom(ev.progress)
                        p.elapsed_s = time.perf_counter() - t0
                        await progress(p)
                elif kind == "geometry":
                    early.start(ev.geometry, eyeballs)
                elif kind == "result":
                    result = ev.result
        except BaseException:
            await early.drop()
            raise
        if result is None:
            await early.drop()
            raise BackendUnavailable("fitter stream ended without a result")
        timings["fit_s"] = time.perf_counter() - t
        metrics.STAGE_SECONDS.labels("fit").observe(timings["fit_s"])

        # 3. the eyeballs: those placed from the geometry event when it is the result's shape,
        # else placed now
        t = time.perf_counter()
        eyes = await early.result_for(result)
        if eyes is None:
            eyes = await eyeballs(result)
        # the eyeballs' own time is eyeballs_s; what the request waited for them after the fit
        timings["eyeballs_wait_s"] = time.perf_counter() - t
        metrics.STAGE_SECONDS.labels("eyeballs").observe(timings["eyeballs_s"])
        await report(common_pb2.STAGE_EYEBALLS, 1.0,
                     f"iris colour from {eyes.iris_source or 'default'}")

        # 4. export
        t = time.perf_counter()
        extra = [common_pb2.NamedFile(name=f.name, media_type=f.media_type, data=f.data)
                 for f in result.files]
        if result.report_json:
            extra.append(common_pb2.NamedFile(name="report.json", media_type="application/json",
                                              data=result.report_json.encode()))
        if result.preview_png:
            extra.append(common_pb2.NamedFile(name="preview.png", media_type="image/png",
                                              data=result.preview_png))
        if det.visualization_png:
            extra.append(common_pb2.NamedFile(name="detection.png", media_type="image/png",
                                              data=det.visualization_png))
        exp = await self.backends.export(exporter_pb2.ExportRequest(
            name=name, head_neutral=result.mesh_neutral, head_expression=result.mesh_expression,
            head_texture_png=result.uv_texture_png, left_eye=eyes.left.mesh,
            right_eye=eyes.right.mesh, eye_texture_png=eyes.texture_png,
            formats=list(opts.formats), extra_files=extra,
            metres_per_unit=result.metres_per_unit, units=opts.units,
            hair=result.hair if result.HasField("hair") else None,
            subdivision=opts.subdivision), self.deadlines.export)
        timings["export_s"] = time.perf_counter() - t
        metrics.STAGE_SECONDS.labels("export").observe(timings["export_s"])
        await report(common_pb2.STAGE_EXPORTED, 1.0, f"{len(exp.files)} files")

        files = {f.name: f.data for f in exp.files}
        m = dict(result.metrics)
        m.update(timings)
        m["total_s"] = time.perf_counter() - t0
        return PipelineOutput(files=files, metrics=m, faces=list(det.faces),
                              selected_face=det.selected_index,
                              coefficients=result.coefficients,
                              warnings=list(det.notes) + list(exp.warnings))
