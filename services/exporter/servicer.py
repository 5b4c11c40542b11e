"""gRPC servicer of ``ffhquv.exporter.v1.Exporter`` (thin: proto <-> the exporter core)."""

from __future__ import annotations

import grpc

from ffhquv import vocab
from ffhquv.errors import InvalidInput
from ffhquv.imaging import read_png_bytes
from ffhquv.mesh import MeshData
from ffhquv.pb import common_pb2, exporter_pb2, exporter_pb2_grpc
from services.exporter import core

SERVICE_NAME = "ffhquv.exporter.v1.Exporter"

FORMAT_NAMES = vocab.format_by_proto()


def formats_from_proto(values) -> set[str] | None:
    """Repeated ``ExportFormat`` to format names (None = defaults); INVALID_ARGUMENT for
    unknown or UNSPECIFIED values."""
    out = set()
    for v in values:
        if v not in FORMAT_NAMES:
            raise InvalidInput(f"unsupported export format value {v}")
        out.add(FORMAT_NAMES[v])
    return out or None


def preview_device(device: str | None) -> str:
    """Where the previews render: "cuda" when asked ("cuda", or "auto" on a machine with a
    GPU torch can use), else "cpu" (the exporter's pods have no GPU; ``serve all`` on a GPU
    machine gives its exporters the GPU for the previews)."""
    if device in (None, "", "cpu"):
        return "cpu"
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            return device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"exporter: device {device!r} asked for, but torch sees no CUDA device")
    from ffhquv.cuda import configure_waits

    configure_waits()  # before the context: waiting threads free their cores
    return device


class ExporterServicer(exporter_pb2_grpc.ExporterServicer):
    """Args: device: where the previews render (:func:`preview_device`)."""

    def __init__(self, device: str | None = "cpu"):
        self.device = preview_device(device)

    def Export(self, request, context: grpc.ServicerContext):  # noqa: N802 - gRPC name
        return self.handle(request)

    def warm(self) -> float:
        """Export a small textured square once, before the first request: the previews'
        rasteriser on its device (on a GPU nvdiffrast's import, its plugin and the CUDA
        context: ~2 s of a process's first photo, BENCHMARKS.md, thirtieth session) and the
        writers' first use. Returns the seconds it took."""
        import time

        import numpy as np

        t0 = time.perf_counter()
        tri = np.array([[0, 1, 2], [0, 2, 3]], np.int64)
        square = MeshData(vertices=np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]],
                                            np.float32),
                          faces=tri, uvs=np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32),
                          uv_faces=tri)
        tex = np.full((8, 8, 3), 128, np.uint8)
        core.export(name="warm", head_neutral=square, head_expression=None, head_texture=tex,
                    left_eye=square, right_eye=square, eye_texture=tex,
                    formats={"obj", "glb", "preview", "zip"}, preview_size=64,
                    preview_device=self.device)
        return time.perf_counter() - t0

    def handle(self, request) -> exporter_pb2.ExportResponse:
        """``ExportRequest`` -> ``ExportResponse`` without gRPC (the in-process gateway path);
        raises :class:`ffhquv.errors.InvalidInput` for malformed input."""
        head = MeshData.from_request(request.head_neutral, "head_neutral")
        head_exp = (MeshData.from_request(request.head_expression, "head_expression")
                    if len(request.head_expression.vertices) else None)
        res = core.export(
            name=request.name or "head",
            head_neutral=head,
            head_expression=head_exp,
            head_texture=read_png_bytes(request.head_texture_png),
            left_eye=MeshData.from_request(request.left_eye, "left_eye"),
            right_eye=MeshData.from_request(request.right_eye, "right_eye"),
            eye_texture=read_png_bytes(request.eye_texture_png),
            formats=formats_from_proto(request.formats),
            extra_files={f.name: f.data for f in request.extra_files},
            # the PNGs go out as they came in: decoded only to check them and for previews
            head_texture_png=request.head_texture_png,
            eye_texture_png=request.eye_texture_png,
            metres_per_unit=request.metres_per_unit,
            units=request.units,
            preview_device=self.device,
            hair=(MeshData.from_request(request.hair, "hair")
                  if len(request.hair.vertices) else None),
            subdivision=request.subdivision,
        )
        return exporter_pb2.ExportResponse(
            files=[common_pb2.NamedFile(name=n, media_type=core.media_type(n), data=d)
                   for n, d in res.files.items()],
            warnings=res.warnings)


def register(server: grpc.Server, device: str | None = "cpu") -> list[str]:
    """Add the Exporter servicer to ``server``; returns its full service name."""
    servicer = ExporterServicer(device)
    servicer.warm()  # before the server reports SERVING
    exporter_pb2_grpc.add_ExporterServicer_to_server(servicer, server)
    return [SERVICE_NAME]
