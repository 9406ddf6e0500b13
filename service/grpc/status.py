"""Engine errors -> gRPC status codes, shared by every servicer."""

import grpc

from service.engine.errors import RETRY_AFTER_S, EngineError, MissingCapability, Overloaded
from service.grpc import request_id
from service.logs import REQUEST_ID

MAX_DETAIL_CHARS = 1000  # of an error's details, escaped
MAX_FIELD_CHARS = 200  # of the genserve-error-field metadata, escaped


def status_code(exc: EngineError) -> grpc.StatusCode:
    """The gRPC counterpart of an engine error's HTTP status."""
    if exc.status == 404:
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, MissingCapability) or exc.code == "missing_capability":
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, Overloaded) or exc.code == "overloaded" or exc.status == 429:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if exc.status == 503:
        return grpc.StatusCode.UNAVAILABLE
    if exc.status == 504:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if exc.status == 501:
        return grpc.StatusCode.UNIMPLEMENTED
    if exc.status >= 500:
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.INVALID_ARGUMENT


def printable(text: str, limit: int) -> str:
    """`text` as printable ASCII, escaped like a Python literal (gRPC metadata takes nothing else), and at most about
    `limit` characters (metadata has a size limit, and a message may echo a long field name the client sent)."""
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else f"{text[:limit]}..."


async def abort_with(context: grpc.aio.ServicerContext, exc: EngineError) -> None:
    """Abort the call with the status for `exc`; details begin with the field, as in REST."""
    metadata = [("genserve-error-code", exc.code)]
    if exc.field:
        metadata.append(("genserve-error-field", printable(exc.field, MAX_FIELD_CHARS)))
    if exc.retry_later:
        metadata.append(("retry-after", RETRY_AFTER_S))
    if (rid := REQUEST_ID.get()) is not None:  # abort's metadata replaces what the call set (service.grpc.request_id)
        metadata.append((request_id.KEY, rid))
    await context.abort(status_code(exc), printable(exc.detail, MAX_DETAIL_CHARS), trailing_metadata=tuple(metadata))
