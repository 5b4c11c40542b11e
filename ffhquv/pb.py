"""One import point for the generated protobuf / gRPC modules.

``from ffhquv.pb import detector_pb2, detector_pb2_grpc`` works from a fresh checkout: the
stubs are (re)generated first if they are missing or older than the ``.proto`` sources.
"""

from ffhquv.protogen import ensure_stubs

ensure_stubs()

from ffhquv.common.v1 import common_pb2  # noqa: E402
from ffhquv.detector.v1 import detector_pb2, detector_pb2_grpc  # noqa: E402
from ffhquv.exporter.v1 import exporter_pb2, exporter_pb2_grpc  # noqa: E402
from ffhquv.eyeball.v1 import eyeball_pb2, eyeball_pb2_grpc  # noqa: E402
from ffhquv.fitter.v1 import fitter_pb2, fitter_pb2_grpc  # noqa: E402
from ffhquv.gateway.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402

__all__ = [
    "common_pb2",
    "detector_pb2",
    "detector_pb2_grpc",
    "exporter_pb2",
    "exporter_pb2_grpc",
    "eyeball_pb2",
    "eyeball_pb2_grpc",
    "fitter_pb2",
    "fitter_pb2_grpc",
    "gateway_pb2",
    "gateway_pb2_grpc",
]
