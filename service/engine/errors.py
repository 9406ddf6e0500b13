"""Errors the engine raises; every protocol adapter maps them to its own status codes."""

import contextvars

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


# The field of a request that chose the version it runs on: the one naming the version where it named one ("version":
# /v1/models/{name}/versions/{v}/...; V2's "model_version", gRPC ModelMetadata/ModelReady's "version"), else the field
# naming the model, whose latest version it runs on ("model"; V2's "model_name", gRPC ModelMetadata/ModelReady's
# "name"). The adapters set and reset it per request (service.api.repository.VersionedRoutes, service.grpc.inference's
# _on_version; service.engine.oip.chosen_by); a refusal of that version names it (VersionGone, Engine.model).
VERSION_FIELD: contextvars.ContextVar[str] = contextvars.ContextVar("version_field", default="model")


class VersionGone(UnknownModel):
    """A served version whose files went from the store or changed since it was loaded, as a runner refuses it
    (UnknownModel naming `version`: workers.version_changed). It names the field that chose the version in the
    request it answers (VERSION_FIELD, read where the refusal is written, since one refusal may answer every request
    of a batch): a request that named no version is told about its model, not about a version it never gave. Made
    from the runner's message and field."""

    def __init__(self, message: str, field: str | None = "version"):
        Exception.__init__(self, message)
        self.gone = message.removeprefix(f"{field}: ")  # "model 'x' version 3: its files in the store are gone ..."

    @property
    def field(self) -> str:
        return VERSION_FIELD.get()

    @property
    def message(self) -> str:
        return f"{self.field}: {self.gone}"


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
