"""All service settings in one place. Every field can be set by an environment
variable with the prefix GENSERVE_, e.g. GENSERVE_PORT=9000."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENSERVE_")

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 8001
    models: Path = Path("models")
    runtime: str = "onnx"  # "onnx" (onnxruntime; a function that names a fused kernel runs on it), "onnx-graph"
    # (every function on its ONNX file) or "torchscript"
    max_samples_per_request: int = 64  # n above this is refused with 422
    max_inputs_per_request: int = 256  # inputs per score/complete request
    max_body_bytes: int = 8 * 1024 * 1024  # larger bodies get 413
    max_sequence_length: int = 480_000  # characters or audio samples per generation or scored input (30 s of audio)
    intra_op_threads: int = 0  # 0: the runtime's default
    worker_call_timeout_s: float = 300.0  # an engine worker silent this long over one call is killed and restarted
    worker_wait_s: float = 30.0  # while no worker is up, how long a call waits for one before 503
    # Overrides of the manifest's batching knobs, for every model.
    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    max_queue_size: int | None = None
    timeout_ms: int | None = None
    # Security (README, "Deployment"): unset, the server is open to whoever reaches its ports, and says so at start.
    api_keys_file: Path | None = None  # one key per line; blank lines and # comments ignored
    metrics_public: bool = False  # with keys set, /metrics needs a key too unless this is true
    cors_origins: Annotated[list[str], NoDecode] = []  # comma-separated origins allowed by CORS; none by default
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key, REST and gRPC serve TLS only
    tls_key: Path | None = None
    # Shutdown: on SIGTERM, in-flight requests get this long to finish; what is still running is cut and logged.
    drain_timeout_s: float = 30.0
    access_log: bool = False  # one log line per HTTP request (off: it costs the hot path)
    log_format: Literal["text", "json"] = "text"  # "json": one JSON object per line (service.logs)
    # The store at start-up: a store with no model is refused unless allow_empty; a model that fails its checks
    # (sha256, manifest) stops the server unless skip_bad_models, which serves the rest and lists it unavailable.
    allow_empty: bool = False
    skip_bad_models: bool = False
    # The repository API (service.api.repository): load and unload need a key of admin_keys_file (same format as
    # api_keys_file); unset, they are refused (403). store_poll_s > 0: every so many seconds, load new versions.
    admin_keys_file: Path | None = None
    store_poll_s: float = 0.0

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        return [o.strip() for o in value.split(",") if o.strip()] if isinstance(value, str) else value
