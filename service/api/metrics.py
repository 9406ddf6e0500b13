"""Prometheus metrics of the REST API, in a registry per app (tests build several apps).

genserve_http_requests_total{model, endpoint, code} and
genserve_http_request_duration_seconds{model, endpoint, code}. /metrics also renders
the engine's registry (service.engine.metrics) after this one.

`endpoint` is the route template (e.g. "/v1/models/{name}/sample"), never the raw
path, and `model` is set by a handler only once the engine knows the model, so a
client cannot blow up label cardinality with made-up names or paths.
"""

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "unmatched"
NO_MODEL = ""


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        labels = ("model", "endpoint", "code")
        self.requests = Counter("genserve_http_requests", "HTTP requests served", labels, registry=self.registry)
        self.latency = Histogram(
            "genserve_http_request_duration_seconds",
            "HTTP request latency, until the response is sent",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple] = {}  # labels -> (counter, histogram), bounded as above

    def observe(self, model: str, endpoint: str, code: int, seconds: float) -> None:
        key = (model, endpoint, code)
        children = self._children.get(key)
        if children is None:
            labels = (model, endpoint, str(code))
            children = self._children[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)

    def render(self, *extra: object) -> tuple[bytes, str]:
        """This registry's exposition, followed by that of each `extra` that is a registry (e.g. the engine's)."""
        registries = [self.registry, *(r for r in extra if isinstance(r, CollectorRegistry))]
        return b"".join(generate_latest(r) for r in registries), CONTENT_TYPE_LATEST


def _endpoint(scope: Scope, app: ASGIApp | None) -> str:
    route = scope.get("route")
    if route is None and app is not None:  # answered before routing (e.g. 413): match it ourselves
        for candidate in getattr(getattr(app, "router", None), "routes", []):
            if candidate.matches(scope)[0] != Match.NONE:
                route = candidate
                break
    return getattr(route, "path", None) or UNMATCHED


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP response and times it, errors included."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ApiMetrics,
        root: ASGIApp | None = None,
        known_model: Callable[[str], bool] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.root = root
        self.known_model = known_model

    def _model(self, scope: Scope, state: dict) -> str:
        """The handler's label; else, for a request refused before its handler ran, a known path {name}."""
        if "model" in state:
            return str(state["model"])
        name = scope.get("path_params", {}).get("name")
        if isinstance(name, str) and self.known_model is not None and self.known_model(name):
            return name
        return NO_MODEL

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(
                self._model(scope, state), _endpoint(scope, self.root), status, time.perf_counter() - start
            )
