"""Draining: on SIGTERM the HTTP listener stays open, new requests get 503 and in-flight ones finish.

A closed listener would refuse new connections instead, and a client could not tell a server that is
going away from one that never was. /healthz keeps answering 200 (the process is alive); /readyz gets 503.
What is still in flight when the drain's time is up is cut (Drain.cut): its work is cancelled, as for a
client that went away, and a request not answered yet gets 503 `draining` with Retry-After; a response
already under way (a stream) is broken off.
"""

import asyncio
from collections import Counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import protocol_error
from service.engine.errors import RETRY_AFTER_S
from service.in_flight import InFlight

STILL_SERVED = ("/healthz", "/metrics")


class Drain(InFlight):
    """Tracks in-flight HTTP requests; once begun, refuses new ones; cut() ends those still running."""

    def __init__(self) -> None:
        super().__init__()
        self.draining = False
        self.cutting = False
        self.requests: dict[asyncio.Task, Scope] = {}  # every request in flight, by the task that serves it

    def begin(self) -> None:
        self.draining = True

    def enter(self, scope: Scope) -> None:
        self.requests[asyncio.current_task()] = scope
        self.started()

    def leave(self) -> None:
        del self.requests[asyncio.current_task()]
        self.ended(len(self.requests))

    def routes(self) -> Counter[str]:
        """The requests in flight by method and route template ("POST /v1/models/{name}/sample"); a request
        still being read (not routed yet) counts as "<method> unrouted"."""
        return Counter(f"{scope['method']} {getattr(scope.get('route'), 'path', 'unrouted')}"
                       for scope in self.requests.values())

    def cut(self) -> Counter[str]:
        """Cancel every request still in flight; returns what was cut (routes())."""
        cut = self.routes()
        self.cutting = True
        for task in self.requests:
            task.cancel()
        return cut


def _refusal(scope: Scope, message: str):
    return protocol_error(scope["path"], 503, "draining", message, None,
                          {"Retry-After": RETRY_AFTER_S, "Connection": "close"})


class DrainMiddleware:
    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope["path"] not in STILL_SERVED:
            await _refusal(scope, "server: shutting down; retry on another replica")(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        self.drain.enter(scope)
        try:
            await self.app(scope, receive, watched)
        except asyncio.CancelledError:
            if not self.drain.cutting or started:
                raise
            asyncio.current_task().uncancel()
            await _refusal(scope, "server: shut down before this request finished (GENSERVE_DRAIN_TIMEOUT_S); retry on "
                           "another replica")(scope, receive, send)
        finally:
            self.drain.leave()
