"""Typed errors raised by the plain-Python cores and mapped to gRPC status codes in one place.

Cores raise these; servicers never build status codes by hand (the server interceptor in
:mod:`ffhquv.server` maps them), and the CLI prints ``str(err)``.
"""

from __future__ import annotations

import grpc


class FfhquvError(Exception):
    """Base class: a failure with a precise, user-facing message and a gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(FfhquvError):
    """The request is malformed: undecodable image, unsupported format, bad option values."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NoFace(FfhquvError):
    """The image is valid but holds no usable face ("no face detected")."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PreconditionFailed(FfhquvError):
    """The request is valid but cannot be served in the current state (e.g. no CUDA)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(FfhquvError):
    code = grpc.StatusCode.NOT_FOUND


class Busy(FfhquvError):
    """A bounded queue is full."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Cancelled(FfhquvError):
    code = grpc.StatusCode.CANCELLED


class BackendUnavailable(FfhquvError):
    code = grpc.StatusCode.UNAVAILABLE
