"""JSON answers written by orjson, numpy arrays included, without a per-element Python object.

The standard library's encoder wrote a 784-float image in about 640 us (44% of the API process under load);
orjson writes the array itself (OPT_SERIALIZE_NUMPY) in about 25 us. A float32 value is written in the
shortest form that reads back as the same float32 (0.1, not 0.10000000149011612 as float64 would have it).

Bodies are always valid JSON: orjson would write NaN and infinity as null, so every output that can hold a
float is checked finite before it gets here (validation.check_finite_outputs, codecs.encode_images), as before.
"""

from typing import Any

import numpy as np
import orjson
from starlette import responses
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from service.api.disconnect import ClientGone, unless_disconnected

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _default(value: Any) -> Any:
    """What orjson does not write itself: numpy arrays it cannot take as they are (non-contiguous, a dtype
    it does not know, big-endian) and numpy scalars."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(content: Any) -> bytes:
    """`content` as JSON bytes (UTF-8), numpy arrays and scalars written directly."""
    return orjson.dumps(content, default=_default, option=_OPTIONS)


class FastJSONResponse(JSONResponse):
    """A JSONResponse written by orjson. A handler that returns one skips FastAPI's response_model
    re-validation and encoding; the route's response_model still documents the body in the OpenAPI schema."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


class StreamingResponse(responses.StreamingResponse):
    """Starlette's StreamingResponse, whose body a client's disconnect cancels in the request's own task
    (service.api.disconnect), leaving no reference cycle.

    Starlette streams in a child task of an anyio task group beside a disconnect listener (the ASGI 2.3 that
    uvicorn speaks), and anyio's task-done callback keeps the cut child's CancelledError in a local of the frame
    its traceback holds: a cycle that kept the whole cut stream (its generators' frames, the Sequence with its
    state arrays, about 0.5 MB for 2 rows of wavenet) until a full collection, rare at the young threshold of
    10,000 (service.main.tune_gc). Here the cancellation is caught without binding it, and its traceback is freed
    with it.

    A server of ASGI 2.4 may instead report the disconnect by raising OSError from `send`; that too ends the
    stream as a client that left (Starlette turns it into ClientDisconnect for the same reason)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:
            await unless_disconnected(Request(scope, receive), self.stream_response(send))
        except ClientGone:
            pass  # the client left: nothing more to send
        except OSError:
            if _spec_version(scope) < (2, 4):
                raise
        if self.background is not None:
            await self.background()


def _spec_version(scope: Scope) -> tuple[int, ...]:
    """The ASGI HTTP spec version the server speaks (2.0 when it does not say)."""
    return tuple(int(part) for part in scope.get("asgi", {}).get("spec_version", "2.0").split("."))
