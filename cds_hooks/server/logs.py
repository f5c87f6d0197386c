"""Logging without PHI: one structured line per request, never bodies, resources, names, ids or tokens.

Fields allowed in a log line are listed in `ALLOWED_FIELDS`; anything else passed as `extra` is dropped, so
a careless call cannot leak a resource into the log.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import orjson

ALLOWED_FIELDS = frozenset({
    "event", "route", "method", "status", "latency_ms", "hook_instance", "service_id", "issuer", "tenant",
    "jti", "cards", "indicator", "resources_seen", "resources_used", "skipped", "other_patient",
    "undeclared_keys", "null_keys", "fetched_keys", "prefetch_keys", "reason", "error_type", "host", "port",
    "workers", "auth", "queued_ms", "fetch_errors", "failed_keys", "docs", "database", "metrics_dir",
    "feedback_refused", "suppressed", "suppression",
})
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


_MAX_VALUE = 200  # a client-chosen string (hookInstance, a prefetch key name) never makes a long line
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def _safe(value: Any) -> Any:
    """Client-chosen strings: control characters escaped (no forged lines), length bounded (no flooding)."""
    if not isinstance(value, str):
        return value
    value = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), value)
    return value if len(value) <= _MAX_VALUE else value[:_MAX_VALUE] + "…"


def _text_value(value: Any) -> str:
    """`k=v` in text lines: a value with spaces, '=' or quotes is quoted, so it cannot pose as more fields."""
    text = str(value)
    return orjson.dumps(text).decode() if any(c in text for c in ' ="') else text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: _safe(v) for k, v in record.__dict__.items() if k in ALLOWED_FIELDS and k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {record.levelname} {record.name}: {record.getMessage()}"
        extra = " ".join(f"{k}={_text_value(v)}" for k, v in _fields(record).items())
        return f"{base} {extra}" if extra else base


# Libraries that log request URLs (which hold patient ids: `Condition?patient=...`) or request content.
_URL_LOGGERS = ("urllib3", "requests")


class LibraryDetail(logging.Filter):
    """A record from an HTTP client library keeps its level and logger but loses its text: urllib3 puts URLs
    in DEBUG lines ("GET /fhir/Condition?patient=..."), and in some warnings too ("Failed to parse headers
    (url=...)")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] in _URL_LOGGERS:
            record.msg, record.args = "(message withheld: may hold a URL)", ()
            record.exc_info = record.exc_text = None
        return True


def configure_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(LibraryDetail())
    for name in _URL_LOGGERS:  # their DEBUG lines are request lines: never worth a line, even at DEBUG
        logging.getLogger(name).setLevel(logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log prints the request line (path + query); ours replaces it.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("alembic").setLevel(logging.WARNING)
