"""Server interceptors that run code around every call: one wrapper for the request id and the calls in flight."""

import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import grpc

# the RpcMethodHandler field that holds the behavior of each kind: (request streaming, response streaming) -> name
KINDS = {(False, False): "unary_unary", (False, True): "unary_stream",
         (True, False): "stream_unary", (True, True): "stream_stream"}


def around_calls(handler: grpc.RpcMethodHandler,
                 around: Callable[[Any], AbstractContextManager]) -> grpc.RpcMethodHandler:
    """`handler` whose behavior runs inside `around(context)` for the whole call (a stream: to its last answer);
    a synchronous behavior (this server has none) as it is."""
    kind = KINDS[handler.request_streaming, handler.response_streaming]
    behavior = getattr(handler, kind)
    if inspect.isasyncgenfunction(behavior):
        async def stream(request, context):
            with around(context):
                async for response in behavior(request, context):
                    yield response
        return handler._replace(**{kind: stream})
    if inspect.iscoroutinefunction(behavior):
        async def call(request, context):
            with around(context):
                return await behavior(request, context)
        return handler._replace(**{kind: call})
    return handler
