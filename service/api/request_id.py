"""The request id over REST: the header X-Request-ID in, the same header out, on every response.

A caller's id is kept when it is 1 to 128 printable ASCII characters; any other (too long, control or
non-ASCII characters) is replaced by a fresh one, as is a missing one: the request is never refused for it,
and the response says which id its log lines carry (service.logs).

RequestIdMiddleware is pure ASGI and sits outside every other layer, Starlette's ServerErrorMiddleware included
(RequestIdApp), so the header is on errors (an unexpected 500 too), on streams, and on the fast paths
(RestFastPath, v2.InferFastPath) that skip FastAPI's routing. Its cost per request: one scan of the request
headers, one uuid4 when none is given, one header appended to the response start.
"""

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import REQUEST_ID, request_id

HEADER = b"x-request-id"


def _given(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == HEADER:
            return value.decode("latin-1")
    return None


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(_given(scope))
        header = (HEADER, rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = REQUEST_ID.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


class RequestIdApp(FastAPI):
    """FastAPI with RequestIdMiddleware around its whole middleware stack, the 500 handler included."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestIdMiddleware(super().build_middleware_stack())
