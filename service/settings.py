"""All service settings in one place. Every field can be set by an environment
variable with the prefix GENSERVE_, e.g. GENSERVE_PORT=9000."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Port = Annotated[int, Field(ge=0, le=65535)]  # 0: any free port
AtLeastOne = Annotated[int, Field(ge=1)]
NotNegative = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """A value out of its range (a batch of 0 rows, a port of 70000, an unknown runtime) is refused at start-up,
    naming the setting: some would hang the server or refuse every request instead."""

    model_config = SettingsConfigDict(env_prefix="GENSERVE_")

    host: str = "127.0.0.1"
    port: Port = 8000
    grpc_port: Port = 8001
    models: Path = Path("models")
    # "onnx" (onnxruntime; a function that names a fused kernel runs on it), "onnx-graph" (every function on its ONNX
    # file) or "torchscript"
    runtime: Literal["onnx", "onnx-graph", "torchscript"] = "onnx"
    max_samples_per_request: AtLeastOne = 64  # n above this is refused with 422
    max_inputs_per_request: AtLeastOne = 256  # inputs per score/complete request
    max_body_bytes: AtLeastOne = 8 * 1024 * 1024  # larger bodies get 413
    # characters or audio samples per generation or scored input (30 s of audio)
    max_sequence_length: AtLeastOne = 480_000
    intra_op_threads: NotNegative = 0  # 0: the runtime's default
    worker_call_timeout_s: Seconds = 300.0  # an engine worker silent this long over one call is killed and restarted
    worker_wait_s: Seconds = 30.0  # while no worker is up, how long a call waits for one before 503
    # Overrides of the manifest's batching knobs, for every model.
    max_batch_size: AtLeastOne | None = None
    max_queue_delay_us: NotNegative | None = None
    max_queue_size: AtLeastOne | None = None
    timeout_ms: AtLeastOne | None = None
    # Security (README, "Deployment"): unset, the server is open to whoever reaches its ports, and says so at start.
    api_keys_file: Path | None = None  # one key per line; blank lines and # comments ignored
    metrics_public: bool = False  # with keys set, /metrics needs a key too unless this is true
    cors_origins: Annotated[list[str], NoDecode] = []  # comma-separated origins allowed by CORS; none by default
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key, REST and gRPC serve TLS only
    tls_key: Path | None = None
    # Shutdown: on SIGTERM, in-flight requests get this long to finish; what is still running is cut and logged.
    drain_timeout_s: Annotated[float, Field(ge=0)] = 30.0
    # allocations between collections of the young generation (CPython: 700); higher runs fewer collections, but
    # each one is longer, and every request in flight waits for it (service.main.tune_gc; `genserve serve` only)
    gc_young_threshold: Annotated[int, Field(ge=1, le=2**31 - 1)] = 10_000  # gc.set_threshold's C int
    access_log: bool = False  # one log line per HTTP request (off: it costs the hot path)
    # FastAPI's native OpenTelemetry (traces, metrics and logs to OpenTelemetry's global providers, where some
    # are configured); off, since genserve exports its own Prometheus metrics: its check of the providers costs
    # about 7.6 us per request (timeit of FastAPI's NativeTelemetry.enabled), 1.5% of the API process's 0.5 ms
    opentelemetry: bool = False
    log_format: Literal["text", "json"] = "text"  # "json": one JSON object per line (service.logs)
    # The store at start-up: a store with no model is refused unless allow_empty; a model that fails its checks
    # (sha256, manifest) stops the server unless skip_bad_models, which leaves the bad version out, serves the
    # model from its good versions and lists a model with none as unavailable.
    allow_empty: bool = False
    skip_bad_models: bool = False
    # The repository API (service.api.repository): load and unload need a key of admin_keys_file (same format as
    # api_keys_file); unset, they are refused (403). store_poll_s > 0: every so many seconds, load new versions.
    admin_keys_file: Path | None = None
    store_poll_s: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        return [o.strip() for o in value.split(",") if o.strip()] if isinstance(value, str) else value
