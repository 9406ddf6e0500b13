"""Log lines as text or as JSON (GENSERVE_LOG_FORMAT), and the request id that the lines of a request carry.

A JSON line is one object: {"timestamp", "level", "logger", "message"}, plus "request_id" inside a REST request
or gRPC call, "exception" (the traceback) and "stack" where the record has them. A text line is
"<time> <LEVEL> <logger>: <message>", with " request_id=<id>" inside a request. Both formats cover the API process
(uvicorn's lines too) and the engine workers; what a native library writes to stderr itself stays as it is.

The request id is the caller's (REST header X-Request-ID, gRPC metadata x-request-id) when it is 1 to
MAX_REQUEST_ID_CHARS printable ASCII characters; otherwise, given or not, the server makes one (a uuid4 in hex)
and answers with it. The protocol adapters (service.api.request_id, service.grpc.request_id) set REQUEST_ID
for the time of the request.
"""

import json
import logging
import os
from contextvars import ContextVar
from datetime import UTC, datetime

MAX_REQUEST_ID_CHARS = 128
REQUEST_ID: ContextVar[str | None] = ContextVar("genserve_request_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def request_id(given: str | None) -> str:
    """`given` if it is a usable request id (1 to 128 printable ASCII characters), else a fresh one."""
    if given and len(given) <= MAX_REQUEST_ID_CHARS and given.isascii() and given.isprintable():
        return given
    return new_request_id()


def new_request_id() -> str:
    """A random uuid4 in hex, as uuid.uuid4().hex gives, in a third of its time (no UUID object on the hot path)."""
    value = bytearray(os.urandom(16))
    value[6] = value[6] & 0x0F | 0x40  # version 4
    value[8] = value[8] & 0x3F | 0x80  # variant RFC 9562
    return value.hex()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (ASCII: anything else is escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request = REQUEST_ID.get()
        if request is not None:
            entry["request_id"] = request
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    """A %-style format (TEXT_FORMAT), with " request_id=<id>" after the message inside a request (before any
    traceback)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        request = REQUEST_ID.get()
        return line if request is None else f"{line} request_id={request}"


def configure(log_format: str, text_format: str = TEXT_FORMAT) -> None:
    """Log INFO and above to stderr in `log_format` ("text": `text_format`, or "json"), unless logging is
    configured already."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(text_format))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    if log_format == "json":
        logging.captureWarnings(True)  # a Python warning is a JSON line too (logger py.warnings), not raw text


def uvicorn_log_config(log_format: str) -> dict | None:
    """uvicorn's `log_config`: its own (text) for "text"; for "json" none, so that its loggers (uvicorn.error,
    uvicorn.access) reach the root handler and write JSON lines too, access lines with their request id."""
    if log_format == "json":
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG
