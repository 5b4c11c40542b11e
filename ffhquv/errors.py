"""Typed errors raised by the plain-Python cores and mapped to gRPC status codes in one place.

Cores raise these; servicers never build status codes by hand (the server interceptor in
:mod:`ffhquv.server` and the gateway map them through :func:`rpc_status`), and the CLI prints
``str(err)``.

Every error status carries ``google.rpc.Status`` details in the ``grpc-status-details-bin``
trailer, so that clients in any language can switch on them:

* ``google.rpc.ErrorInfo``: a stable ``reason`` (domain ``ffhquv``), one per error class
  below (``INVALID_ARGUMENT``, ``INVALID_IMAGE``, ``IMAGE_TOO_LARGE``, ``IMAGE_TOO_SMALL``,
  ``NO_FACE``, ``FAILED_PRECONDITION``, ``CHECKPOINT_UNUSABLE``, ``NOT_FOUND``, ``QUEUE_FULL``,
  ``CANCELLED``, ``BACKEND_UNAVAILABLE``; ``INTERNAL`` for anything unexpected);
* ``google.rpc.BadRequest``: one field violation naming the offending request field, when
  the error names one (``field=``);
* ``google.rpc.RetryInfo``: how long to wait, on RESOURCE_EXHAUSTED and UNAVAILABLE.

:func:`status_details` reads them back from a failed call (Python clients, the CLI, tests).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

DOMAIN = "ffhquv"
DETAILS_KEY = "grpc-status-details-bin"


class FfhquvError(Exception):
    """Base class: a failure with a precise, user-facing message and a gRPC status code.

    Args:
        message: the status message.
        reason: ErrorInfo reason (default: the class's ``reason``).
        field: the offending request field (e.g. ``"options.texture_size"``, ``"image.data"``)
            for a BadRequest field violation.
        retry_after: seconds a client should wait before retrying (RetryInfo; default: the
            class's ``retry_after``).
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"
    retry_after: float | None = None

    def __init__(self, message: str = "", *, reason: str | None = None,
                 field: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.field = field
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidInput(FfhquvError):
    """The request is malformed: undecodable image, unsupported format, bad option values."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class InvalidImage(InvalidInput):
    """The image bytes are not a decodable JPEG / PNG (empty, truncated, other format)."""

    reason = "INVALID_IMAGE"


class ImageTooLarge(InvalidImage):
    """The image exceeds the byte or pixel limit."""

    reason = "IMAGE_TOO_LARGE"


class ImageTooSmall(InvalidImage):
    """The image is below the minimum side length."""

    reason = "IMAGE_TOO_SMALL"


class NoFace(FfhquvError):
    """The image is valid but holds no usable face ("no face detected")."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "NO_FACE"


class PreconditionFailed(FfhquvError):
    """The request is valid but cannot be served in the current state (e.g. no CUDA)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class NotFound(FfhquvError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class Busy(FfhquvError):
    """A bounded queue is full."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "QUEUE_FULL"
    retry_after = 2.0


class Cancelled(FfhquvError):
    code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class BackendUnavailable(FfhquvError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "BACKEND_UNAVAILABLE"
    retry_after = 1.0


def image_error(err: InvalidInput) -> InvalidInput:
    """The image-decoding error ``err`` as its precise class (reason) with field
    ``image.data``; errors that already name a field or have a specific class pass through."""
    if isinstance(err, InvalidImage) or err.field is not None:
        return err
    msg = str(err)
    cls = (ImageTooLarge if ("too large" in msg or "too many pixels" in msg)
           else ImageTooSmall if "too small" in msg else InvalidImage)
    return cls(msg, field="image.data")


# -- google.rpc.Status details ---------------------------------------------------------------
_RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


def rpc_status(code: grpc.StatusCode, message: str, *, reason: str | None = None,
               field: str | None = None, retry_after: float | None = None,
               metadata: dict[str, str] | None = None) -> grpc.Status:
    """A ``grpc.Status`` with ErrorInfo (+ BadRequest, + RetryInfo) details packed into its
    trailing metadata; pass ``status.trailing_metadata`` to ``context.abort``."""
    from google.protobuf import duration_pb2
    from google.rpc import error_details_pb2, status_pb2
    from grpc_status import rpc_status as grpc_rpc_status

    st = status_pb2.Status(code=code.value[0], message=message)
    st.details.add().Pack(error_details_pb2.ErrorInfo(
        reason=reason or code.name, domain=DOMAIN, metadata=metadata or {}))
    if field:
        st.details.add().Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]))
    if code in _RETRYABLE:
        delay = 1.0 if retry_after is None else max(0.0, float(retry_after))
        d = duration_pb2.Duration()
        d.FromNanoseconds(int(delay * 1e9))
        st.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=d))
    return grpc_rpc_status.to_status(st)


def status_of(exc: BaseException) -> grpc.Status:
    """The status (with details) a call ends with for ``exc``; INTERNAL for untyped errors."""
    if isinstance(exc, FfhquvError):
        return rpc_status(exc.code, str(exc), reason=exc.reason, field=exc.field,
                          retry_after=exc.retry_after)
    return rpc_status(grpc.StatusCode.INTERNAL,
                      f"internal error: {type(exc).__name__}: {exc}", reason="INTERNAL")


def details_trailer(metadata: Iterable | None) -> list[tuple[str, bytes]]:
    """The ``grpc-status-details-bin`` entry of a call's trailing metadata (to pass a backend's
    details through unchanged), as a list of zero or one ``(key, value)``."""
    out = []
    for item in metadata or ():
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key == DETAILS_KEY:
            out.append((key, value))
    return out


@dataclass
class StatusDetails:
    """What a client reads from a failed call's ``google.rpc.Status``."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    retry_after: float | None = None


def status_details(err: grpc.RpcError) -> StatusDetails:
    """Parse the ErrorInfo / BadRequest / RetryInfo details of a failed call (sync or aio)."""
    from google.rpc import error_details_pb2, status_pb2

    code = err.code()
    out = StatusDetails(code=code, message=err.details() or "")
    trailer = details_trailer(err.trailing_metadata())
    if not trailer:
        return out
    st = status_pb2.Status.FromString(trailer[0][1])
    for any_ in st.details:
        if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_.Unpack(info)
            out.reason, out.domain, out.metadata = info.reason, info.domain, dict(info.metadata)
        elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            any_.Unpack(br)
            out.field_violations += [(v.field, v.description) for v in br.field_violations]
        elif any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            any_.Unpack(ri)
            out.retry_after = ri.retry_delay.ToNanoseconds() / 1e9
    return out


ECHO_CHARS = 40


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr`` of user input for an error message, cut to ``limit`` characters (plus the full
    length when cut): messages stay short and never carry a client's whole payload back."""
    s = value if isinstance(value, str) else str(value)
    if len(s) <= limit:
        return repr(s)
    return f"{s[:limit]!r}... ({len(s)} characters)"
