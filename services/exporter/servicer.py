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


class ExporterServicer(exporter_pb2_grpc.ExporterServicer):
    def Export(self, request, context: grpc.ServicerContext):  # noqa: N802 - gRPC name
        return self.handle(request)

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
        )
        return exporter_pb2.ExportResponse(
            files=[common_pb2.NamedFile(name=n, media_type=core.media_type(n), data=d)
                   for n, d in res.files.items()],
            warnings=res.warnings)


def register(server: grpc.Server) -> list[str]:
    """Add the Exporter servicer to ``server``; returns its full service name."""
    exporter_pb2_grpc.add_ExporterServicer_to_server(ExporterServicer(), server)
    return [SERVICE_NAME]
