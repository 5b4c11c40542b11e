"""Bearer-token auth and TLS / mTLS credentials, for the gateway and the internal services."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import grpc

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def check_bearer(metadata, token: str | None) -> bool:
    """True when no token is configured or ``authorization: Bearer <token>`` matches."""
    if not token:
        return True
    for key, value in metadata or ():
        if key.lower() == "authorization":
            scheme, _, given = str(value).partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)
    return False


class AsyncBearerAuth(grpc.aio.ServerInterceptor):
    """Rejects calls without the configured bearer token (health and reflection stay open)."""

    def __init__(self, token: str | None):
        self.token = token

    async def intercept_service(self, continuation, details):
        if self.token and not details.method.startswith(OPEN_SERVICES):
            if not check_bearer(details.invocation_metadata, self.token):
                return _deny_handler(details)
        return await continuation(details)


INTERNAL_TOKEN_ENV = "FFHQUV_INTERNAL_TOKEN"
UNAUTH_INTERNAL = ("missing or invalid internal credentials: the internal services answer only "
                   "the gateway (metadata 'authorization')")


class BearerAuth(grpc.ServerInterceptor):
    """Sync servers (the internal services): rejects calls without the configured bearer token
    with UNAUTHENTICATED; health and reflection stay open for probes."""

    def __init__(self, token: str | None):
        self.token = token

    def intercept_service(self, continuation, details):
        if self.token and not details.method.startswith(OPEN_SERVICES):
            if not check_bearer(details.invocation_metadata, self.token):
                handler = continuation(details)

                def deny(request, context):
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTH_INTERNAL)

                if handler is not None and handler.unary_stream:
                    def deny_stream(request, context):
                        deny(request, context)
                        yield  # pragma: no cover
                    return grpc.unary_stream_rpc_method_handler(
                        deny_stream, handler.request_deserializer, handler.response_serializer)
                return grpc.unary_unary_rpc_method_handler(
                    deny, getattr(handler, "request_deserializer", None),
                    getattr(handler, "response_serializer", None))
        return continuation(details)


def read_token(value: str | None = None, file: str | None = None, env: str = "FFHQUV_AUTH_TOKEN",
               file_env: str | None = None) -> str | None:
    """A secret from, in order: ``value`` (a flag), ``file`` (a flag naming a file), the
    variable ``env``, a file named by ``file_env`` (default ``<env>_FILE``). Whitespace around a
    file's content is dropped. None when none is set."""
    if value:
        return value
    path = file or os.environ.get(file_env or f"{env}_FILE")
    if path:
        token = Path(path).read_text().strip()
        if not token:
            raise ValueError(f"token file {path} is empty")
        return token
    return os.environ.get(env) or None


def internal_token() -> str | None:
    """The shared secret between the gateway and the internal services
    (``FFHQUV_INTERNAL_TOKEN`` or the file named by ``FFHQUV_INTERNAL_TOKEN_FILE``)."""
    return read_token(env=INTERNAL_TOKEN_ENV)


def _deny_handler(details):
    async def deny_unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or invalid bearer token (metadata 'authorization')")

    async def deny_stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or invalid bearer token (metadata 'authorization')")
        yield  # pragma: no cover

    if details.method.endswith(("Stream", "GetArtifact")):
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny_unary)


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def server_credentials(cert: str | None, key: str | None,
                       client_ca: str | None = None) -> grpc.ServerCredentials | None:
    """TLS when cert and key are given; mutual TLS (client certificates required) with a CA."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("TLS needs both a certificate and a key")
    ca = _read(client_ca)
    return grpc.ssl_server_credentials([(_read(key), _read(cert))], root_certificates=ca,
                                       require_client_auth=ca is not None)


def channel_credentials(ca: str | None, cert: str | None = None,
                        key: str | None = None) -> grpc.ChannelCredentials | None:
    """Client TLS trusting ``ca``; with ``cert``/``key`` also presents a client certificate."""
    if not ca:
        return None
    return grpc.ssl_channel_credentials(root_certificates=_read(ca), private_key=_read(key),
                                        certificate_chain=_read(cert))
