"""Errors the engine raises; every protocol adapter maps them to its own status codes."""


class EngineError(Exception):
    """A request the engine refuses. `status` is the HTTP status the REST adapter returns."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class UnknownModel(EngineError):
    status = 404
    code = "unknown_model"


class MissingCapability(EngineError):
    status = 400
    code = "missing_capability"


class InvalidInput(EngineError):
    status = 422
    code = "invalid_input"


class Overloaded(EngineError):
    status = 503
    code = "overloaded"


class NotReady(EngineError):
    status = 503
    code = "not_ready"
