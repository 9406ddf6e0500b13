"""Engine errors -> gRPC status codes, shared by every servicer."""

import grpc

from service.engine.errors import RETRY_AFTER_S, EngineError, MissingCapability, Overloaded


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


async def abort_with(context: grpc.aio.ServicerContext, exc: EngineError) -> None:
    """Abort the call with the status for `exc`; details begin with the field, as in REST."""
    metadata = [("genserve-error-code", exc.code)]
    if exc.field:
        metadata.append(("genserve-error-field", exc.field))
    if exc.retry_later:
        metadata.append(("retry-after", RETRY_AFTER_S))
    await context.abort(status_code(exc), exc.detail, trailing_metadata=tuple(metadata))
