"""service.logs: the JSON and text formats, and GENSERVE_LOG_FORMAT."""

import json
import logging
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from service.logs import REQUEST_ID, TEXT_FORMAT, JsonFormatter, TextFormatter, uvicorn_log_config
from service.settings import Settings


def record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("genserve.test", logging.WARNING, __file__, 1, message, args, exc_info)


def failure() -> tuple:
    try:
        raise ValueError("bad value\nsecond line")
    except ValueError as e:
        return type(e), e, e.__traceback__


def test_a_json_line_is_one_object_with_the_fields_and_no_request_id_outside_a_request():
    r = record("served %d of %s", 3, "pixelcnn")
    line = JsonFormatter().format(r)
    entry = json.loads(line)
    assert set(entry) == {"timestamp", "level", "logger", "message"}
    assert entry["message"] == "served 3 of pixelcnn" and entry["level"] == "WARNING"
    assert entry["logger"] == "genserve.test"
    when = datetime.fromisoformat(entry["timestamp"])
    assert when.tzinfo == UTC and abs(when.timestamp() - r.created) < 1e-3


def test_a_json_line_carries_the_request_id_and_the_traceback_on_one_ascii_line():
    token = REQUEST_ID.set("req-1")
    try:
        line = JsonFormatter().format(record("caf\u00e9 \ud800 failed", exc_info=failure()))
    finally:
        REQUEST_ID.reset(token)
    assert "\n" not in line and line.isascii()
    entry = json.loads(line)
    assert entry["request_id"] == "req-1" and entry["message"] == "caf\u00e9 \ud800 failed"
    assert entry["exception"].startswith("Traceback") and "ValueError: bad value\nsecond line" in entry["exception"]


def test_a_text_line_names_the_request_before_the_traceback():
    formatter = TextFormatter(TEXT_FORMAT)
    assert formatter.format(record("outside")).endswith(" WARNING genserve.test: outside")
    token = REQUEST_ID.set("req-2")
    try:
        line = formatter.format(record("inside", exc_info=failure()))
    finally:
        REQUEST_ID.reset(token)
    first, *traceback = line.splitlines()
    assert first.endswith("genserve.test: inside request_id=req-2") and traceback[0].startswith("Traceback")


def test_log_format_is_a_setting_text_by_default(monkeypatch):
    monkeypatch.delenv("GENSERVE_LOG_FORMAT", raising=False)
    assert Settings().log_format == "text" and uvicorn_log_config("text") is not None
    monkeypatch.setenv("GENSERVE_LOG_FORMAT", "json")
    assert Settings().log_format == "json" and uvicorn_log_config("json") is None
    monkeypatch.setenv("GENSERVE_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError, match="log_format"):
        Settings()
