"""Thin gRPC servicer of ``ffhquv.detector.v1.Detector`` over the detector core.

Errors are the typed exceptions of :mod:`ffhquv.errors` raised by the core; the interceptor
of :mod:`ffhquv.server` maps them to status codes.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from ffhquv.errors import InvalidInput
from ffhquv.imaging import png_bytes
from ffhquv.pb import common_pb2, detector_pb2, detector_pb2_grpc
from services.detector.core import Detector, load_parser
from services.detector.types import DetectionResult, landmarks_to_proto

SERVICE_NAME = "ffhquv.detector.v1.Detector"

_BACKENDS = {
    detector_pb2.DETECTOR_BACKEND_UNSPECIFIED: None,
    detector_pb2.DETECTOR_BACKEND_HOG: "hog",
    detector_pb2.DETECTOR_BACKEND_CNN: "cnn",
}


def selection_from_request(req: detector_pb2.DetectRequest) -> str | int:
    """``FaceSelection`` (+ ``face_index``) to the core's ``'largest' | 'only' | int``."""
    sel = req.selection
    if sel in (detector_pb2.FACE_SELECTION_UNSPECIFIED, detector_pb2.FACE_SELECTION_LARGEST):
        return "largest"
    if sel == detector_pb2.FACE_SELECTION_ONLY:
        return "only"
    if sel == detector_pb2.FACE_SELECTION_INDEX:
        return int(req.face_index)
    raise InvalidInput(f"unknown face selection value {sel}", field="selection")


def result_to_proto(res: DetectionResult) -> detector_pb2.DetectResponse:
    """:class:`DetectionResult` to ``DetectResponse`` (landmarks in original pixels)."""
    faces = [
        detector_pb2.Face(
            box=common_pb2.BoundingBox(left=f.box[0], top=f.box[1], right=f.box[2],
                                       bottom=f.box[3], score=f.score),
            landmarks=landmarks_to_proto(f.landmarks))
        for f in res.faces
    ]
    return detector_pb2.DetectResponse(
        faces=faces,
        selected_index=res.selected_index,
        image_width=res.image_size[0],
        image_height=res.image_size[1],
        exif_orientation=res.exif_orientation,
        aligned=res.aligned.to_proto(),
        visualization_png=png_bytes(res.visualization) if res.visualization is not None
        else b"",
        notes=res.notes,
    )


class DetectorServicer(detector_pb2_grpc.DetectorServicer):
    """Serves Detect with one shared (thread-safe) :class:`Detector`."""

    def __init__(self, detector: Detector | None = None,
                 checkpoints_dir: str | Path | None = None):
        """``detector``: a prebuilt :class:`Detector`; else one is built, with the BiSeNet
        parser when ``checkpoints_dir`` (None: ``FFHQUV_CHECKPOINTS_DIR``) holds
        ``parsing_model/79999_iter.pth`` (see :func:`services.detector.core.load_parser`)."""
        self.detector = detector or Detector(parser=load_parser(checkpoints_dir))

    def Detect(self, request: detector_pb2.DetectRequest, context: grpc.ServicerContext
               ) -> detector_pb2.DetectResponse:
        return self.handle(request)

    def handle(self, request: detector_pb2.DetectRequest) -> detector_pb2.DetectResponse:
        """The whole RPC without a gRPC context (also used in process by the CLI)."""
        if request.backend not in _BACKENDS:
            raise InvalidInput(f"unknown detector backend value {request.backend}",
                               field="backend")
        unwrap = request.unwrap_size or 1024
        res = self.detector.detect(
            request.image.data,
            selection=selection_from_request(request),
            unwrap_size=unwrap,
            want_visualization=request.want_visualization,
            backend=_BACKENDS[request.backend],
        )
        return result_to_proto(res)


def register(server: grpc.Server, detector: Detector | None = None) -> list[str]:
    """Add the Detector service to ``server`` (models load now); returns its full name."""
    detector_pb2_grpc.add_DetectorServicer_to_server(DetectorServicer(detector), server)
    return [SERVICE_NAME]
