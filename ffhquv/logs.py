"""Structured logging: one JSON object per line for services, plain text for the CLI."""

from __future__ import annotations

import json
import logging
import sys
import time

from ffhquv import config

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(default_format: str = "text", level: str | int | None = None) -> None:
    """Configure the root logger once. ``FFHQUV_LOG_FORMAT`` / ``FFHQUV_LOG_LEVEL`` override.
    Every record gets the current ``request_id`` and ``trace_id`` / ``span_id`` when known
    (:class:`ffhquv.tracing.CorrelationFilter`)."""
    from ffhquv.tracing import CorrelationFilter

    fmt = config.log_format(default_format)
    level = level or config.log_level()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(CorrelationFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
