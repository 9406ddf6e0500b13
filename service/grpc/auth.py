"""API keys over gRPC: a grpc.aio server interceptor that wants the metadata `authorization: Bearer <key>`.

Every call needs it (UNAUTHENTICATED otherwise) except grpc.health.v1.Health, which load balancers and
orchestrators probe without credentials, as REST's /healthz and /readyz. Server reflection needs a key like
everything else: it lists the services, as REST's /openapi.json does, and that needs a key too.
A refused call's request is never deserialized; it answers with its request id, as every call does.
"""

import grpc

from service.credentials import ApiKeys
from service.grpc import request_id

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
MISSING = "authorization: missing; send the metadata 'authorization: Bearer <key>'"
INVALID = "authorization: not a valid 'Bearer <key>'"

_HANDLERS = {  # (request streaming, response streaming) -> the handler constructor of that kind
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _authorization(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value
    return None


def _refusal(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` (unary for an unknown method) that aborts UNAUTHENTICATED."""

    async def refuse(_request, context: grpc.aio.ServicerContext) -> None:
        rid = request_id.id_of(context.invocation_metadata())
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message, trailing_metadata=((request_id.KEY, rid),))

    kind = (handler.request_streaming, handler.response_streaming) if handler is not None else (False, False)
    return _HANDLERS[kind](refuse)  # no deserializer: the request stays bytes


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        authorization = _authorization(handler_call_details.invocation_metadata)
        if self.keys.admits(authorization):
            return await continuation(handler_call_details)
        return _refusal(await continuation(handler_call_details), MISSING if authorization is None else INVALID)
