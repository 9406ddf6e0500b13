"""Errors the engine raises; every protocol adapter maps them to its own status codes."""

RETRY_AFTER_S = "1"  # the Retry-After (HTTP) / retry-after (gRPC metadata) sent with a 503 / UNAVAILABLE-like refusal


class EngineError(Exception):
    """A request the engine refuses. `status` is the HTTP status the REST adapter returns."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def detail(self) -> str:
        """The message, beginning with the field it names (REST, V2 and gRPC all answer with this)."""
        return self.message if not self.field or self.field in self.message else f"{self.field}: {self.message}"

    @property
    def retry_later(self) -> bool:
        """A refusal for now (overloaded, draining, a worker restarting): the answer carries Retry-After."""
        return self.status == 503


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


class WorkerLost(EngineError):
    """The engine worker running the request died, or none is up yet (it is being restarted)."""

    status = 503
    code = "worker_unavailable"


class UnsupportedModel(EngineError):
    """A model in the store that this engine cannot serve yet; the server refuses to start with it."""

    status = 500
    code = "unsupported_model"
