"""gRPC servicer of ``ffhquv.eyeball.v1.Eyeball`` (thin: proto <-> :mod:`services.eyeball.core`)."""

from __future__ import annotations

import grpc
import numpy as np

from ffhquv import vocab
from ffhquv.errors import InvalidInput
from ffhquv.imaging import from_raw, png_bytes
from ffhquv.mesh import MeshData
from ffhquv.pb import common_pb2, eyeball_pb2, eyeball_pb2_grpc
from services.eyeball import texture
from services.eyeball.core import place_eyeballs

SERVICE_NAME = "ffhquv.eyeball.v1.Eyeball"


def _fit(mesh: MeshData, centre: np.ndarray, radius: float):
    return eyeball_pb2.EyeFit(
        center=common_pb2.Point3(x=float(centre[0]), y=float(centre[1]), z=float(centre[2])),
        radius=float(radius), mesh=mesh.to_proto())


class EyeballServicer(eyeball_pb2_grpc.EyeballServicer):
    def Place(self, request, context: grpc.ServicerContext):  # noqa: N802 - gRPC name
        return self.handle(request)

    @staticmethod
    def warm(texture_size: int = vocab.TEXTURE_SIZE_DEFAULT) -> None:
        """Build the texture's photo-independent layers before the first request."""
        texture.warm(texture_size)

    def handle(self, request) -> eyeball_pb2.PlaceResponse:
        """``PlaceRequest`` -> ``PlaceResponse`` without gRPC (the in-process gateway path);
        raises :class:`ffhquv.errors.InvalidInput` for bad geometry or images."""
        head = MeshData.from_request(request.head, "head")
        photo = None
        if request.photo.width or request.photo.height or request.photo.pixels:
            photo = from_raw(request.photo)
            if photo.ndim != 3:
                raise InvalidInput("photo must be a 3-channel RGB image")
        lms = None
        if len(request.photo_landmarks.points):
            lms = np.array([[p.x, p.y] for p in request.photo_landmarks.points], np.float64)
            if lms.shape != (68, 2):
                raise InvalidInput(f"photo_landmarks must have 68 points, got {len(lms)}")
        res = place_eyeballs(
            head,
            np.asarray(request.left_eye_ring, np.int64),
            np.asarray(request.right_eye_ring, np.int64),
            photo=photo,
            photo_landmarks=lms,
            texture_size=request.texture_size or vocab.TEXTURE_SIZE_DEFAULT,
        )
        return eyeball_pb2.PlaceResponse(
            left=_fit(res.left, res.left_center, res.radius[0]),
            right=_fit(res.right, res.right_center, res.radius[1]),
            texture_png=png_bytes(res.texture),
            iris_rgb=list(res.iris_rgb),
            iris_source=res.iris_source)


def register(server: grpc.Server) -> list[str]:
    """Add the Eyeball servicer to ``server``; returns its full service name."""
    servicer = EyeballServicer()
    servicer.warm()  # before the server reports SERVING
    eyeball_pb2_grpc.add_EyeballServicer_to_server(servicer, server)
    return [SERVICE_NAME]
