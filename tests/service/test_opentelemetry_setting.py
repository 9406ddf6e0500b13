"""GENSERVE_OPENTELEMETRY: FastAPI's native OpenTelemetry is off unless the setting turns it on."""

from service.api import create_app
from service.settings import Settings


class NoEngine:
    """create_app only keeps the engine; these tests send no request."""

    models: dict = {}


def test_fastapi_telemetry_is_off_by_default_and_on_when_set(monkeypatch):
    monkeypatch.delenv("GENSERVE_OPENTELEMETRY", raising=False)
    off = create_app(NoEngine(), Settings())
    assert not off._native_telemetry.enabled()  # no check of OpenTelemetry's providers per request
    assert {off._telemetry[part] for part in ("tracing", "metrics", "logs")} == {False}
    monkeypatch.setenv("GENSERVE_OPENTELEMETRY", "true")
    on = create_app(NoEngine(), Settings())
    assert {on._telemetry[part] for part in ("tracing", "metrics", "logs")} == {True}
