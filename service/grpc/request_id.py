"""The request id over gRPC: the metadata `x-request-id` in, the same key in the answer's trailing metadata.

As over REST (service.api.request_id): a caller's id of 1 to 128 printable ASCII characters is kept, any other
or none is replaced by a fresh one, and the call's log lines carry it (service.logs). The id goes out in the
trailing metadata, whatever the call ends in: an answer, a stream, an error status (status.abort_with keeps
it), a refused key (service.grpc.auth). Not the initial metadata: sending that ahead of the answer is one more
write per call, a large share of what a small unary call costs.
"""

from contextlib import contextmanager, suppress

from service.logs import REQUEST_ID, request_id

KEY = "x-request-id"


def id_of(metadata) -> str:
    """The call's request id: the caller's, when usable, else a fresh one."""
    for key, value in metadata or ():
        if key == KEY:
            return request_id(value if isinstance(value, str) else None)  # a binary (-bin) value is not an id
    return request_id(None)


@contextmanager
def answering_with_id(context):
    """The call answers with its id in its trailing metadata and runs with it as the log lines' request id."""
    rid = id_of(context.invocation_metadata())
    token = REQUEST_ID.set(rid)
    try:
        context.set_trailing_metadata(((KEY, rid),))
        yield
    finally:
        # a stream's async generator may be finalized in another context (a cancelled call's aclose): its
        # context, and the id set in it, is gone, and there is nothing to reset
        with suppress(ValueError):
            REQUEST_ID.reset(token)
