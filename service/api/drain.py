"""Draining: on SIGTERM the HTTP listener stays open, new requests get 503 and in-flight ones finish.

A closed listener would refuse new connections instead, and a client could not tell a server that is
going away from one that never was. /healthz keeps answering 200 (the process is alive); /readyz gets 503.
"""

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.engine.errors import RETRY_AFTER_S

STILL_SERVED = ("/healthz", "/metrics")


class Drain:
    """Counts in-flight HTTP requests; once begun, refuses new ones."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def begin(self) -> None:
        self.draining = True

    def stop_waiting(self) -> None:
        """Let finished() return now, whatever is still in flight."""
        self.idle.set()

    async def finished(self, timeout_s: float) -> bool:
        """Wait until no HTTP request is in flight (True), or timeout_s passed (False)."""
        try:
            await asyncio.wait_for(self.idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False


class DrainMiddleware:
    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope["path"] not in STILL_SERVED:
            refuse = error_response(503, "draining", "server: shutting down; retry on another replica", None,
                                    {"Retry-After": RETRY_AFTER_S, "Connection": "close"})
            await refuse(scope, receive, send)
            return
        self.drain.in_flight += 1
        self.drain.idle.clear()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1
            if self.drain.in_flight == 0:
                self.drain.idle.set()
