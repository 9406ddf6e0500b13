"""Code around every call, installed once when a service registers, not by an interceptor on every call.

A grpc.aio interceptor runs on every call (a coroutine per interceptor and a new method handler); wrapping each
method's behavior once, when its service is added, costs a call only the wrapper itself. `AroundEveryCall`
stands in for the server in the generated `add_*Servicer_to_server` functions to do that.
"""

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


class AroundEveryCall:
    """Pass it, in place of `server`, to a generated `add_*Servicer_to_server(servicer, server)`: every method of
    that service runs inside `around(method, context)`, method being "/package.Service/Method"."""

    def __init__(self, server: grpc.aio.Server, around: Callable[[str, Any], AbstractContextManager]):
        self.server, self.around = server, around
        self.unwrapped: set[str] = set()  # services given to add_generic_rpc_handlers alone, so far

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        """The generated code passes the same handlers to add_registered_method_handlers next, which adds both;
        check_all_wrapped() names a service that never got there (it would not be served)."""
        self.unwrapped.update(getattr(h, "service_name", lambda h=h: repr(h))() for h in generic_handlers)

    def check_all_wrapped(self) -> None:
        """TypeError naming any service registered without add_registered_method_handlers (hand-written generic
        handlers, or stubs generated before grpcio-tools 1.62): its calls would answer UNIMPLEMENTED."""
        if self.unwrapped:
            raise TypeError(f"gRPC services {sorted(self.unwrapped)}: registered through add_generic_rpc_handlers "
                            "alone; register their method handlers with add_registered_method_handlers")

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.unwrapped.discard(service)
        wrapped = {name: self._wrapped(f"/{service}/{name}", handler) for name, handler in handlers.items()}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        self.server.add_registered_method_handlers(service, wrapped)

    def _wrapped(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return around_calls(handler, lambda context: self.around(method, context))
