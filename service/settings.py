"""All service settings in one place. Every field can be set by an environment
variable with the prefix GENSERVE_, e.g. GENSERVE_PORT=9000."""

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENSERVE_")

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 8001
    models: Path = Path("models")
    runtime: str = "onnx"  # "onnx" (onnxruntime) or "torchscript"
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
