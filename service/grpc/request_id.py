"""The request id over gRPC: the metadata `x-request-id` in, the same key in the answer's trailing metadata.

As over REST (service.api.request_id): a caller's id of 1 to 128 printable ASCII characters is kept, any other
or none is replaced by a fresh one, and the call's log lines carry it (service.logs). The id goes out in the
trailing metadata, whatever the call ends in: an answer, a stream, an error status (status.abort_with keeps
it), a refused key. Not the initial metadata: sending that ahead of the answer is one more write per call, a
large share of what a small unary call costs.
"""

from contextlib import contextmanager

import grpc

from service.grpc.handlers import around_calls
from service.logs import REQUEST_ID, request_id

KEY = "x-request-id"


def _given(metadata) -> str | None:
    for key, value in metadata or ():
        if key == KEY:
            return value if isinstance(value, str) else None  # a binary (-bin) value is not an id
    return None


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Install it first, so that a call another interceptor refuses answers with its id too."""

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        rid = request_id(_given(handler_call_details.invocation_metadata))
        return around_calls(handler, lambda context: _with_id(rid, context))


@contextmanager
def _with_id(rid: str, context):
    """The call answers with `rid` in its trailing metadata and runs with it as the log lines' request id."""
    token = REQUEST_ID.set(rid)
    try:
        context.set_trailing_metadata(((KEY, rid),))
        yield
    finally:
        REQUEST_ID.reset(token)
