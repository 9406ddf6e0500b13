from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class DataSpec(_message.Message):
    __slots__ = ("kind", "shape", "levels", "classes", "sample_rate", "attributes")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    levels: int
    classes: _containers.RepeatedScalarFieldContainer[str]
    sample_rate: int
    attributes: _struct_pb2.Struct
    def __init__(self, kind: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., levels: _Optional[int] = ..., classes: _Optional[_Iterable[str]] = ..., sample_rate: _Optional[int] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "family", "description", "capabilities", "data", "metrics", "batching")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    family: str
    description: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    data: DataSpec
    metrics: _struct_pb2.Struct
    batching: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., family: _Optional[str] = ..., description: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., data: _Optional[_Union[DataSpec, _Mapping]] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., batching: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ControlValue(_message.Message):
    __slots__ = ("values", "name")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    name: str
    def __init__(self, values: _Optional[_Iterable[float]] = ..., name: _Optional[str] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("model", "n", "seed", "temperature", "label", "length", "top_k", "prompt", "seconds", "chunk_ms", "voice", "steps", "controls", "actions", "bars", "chords")
    class ControlsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ControlValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ControlValue, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MS_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CONTROLS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    BARS_FIELD_NUMBER: _ClassVar[int]
    CHORDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    n: int
    seed: int
    temperature: float
    label: int
    length: int
    top_k: int
    prompt: str
    seconds: float
    chunk_ms: int
    voice: str
    steps: int
    controls: _containers.MessageMap[str, ControlValue]
    actions: Tensor
    bars: int
    chords: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., n: _Optional[int] = ..., seed: _Optional[int] = ..., temperature: _Optional[float] = ..., label: _Optional[int] = ..., length: _Optional[int] = ..., top_k: _Optional[int] = ..., prompt: _Optional[str] = ..., seconds: _Optional[float] = ..., chunk_ms: _Optional[int] = ..., voice: _Optional[str] = ..., steps: _Optional[int] = ..., controls: _Optional[_Mapping[str, ControlValue]] = ..., actions: _Optional[_Union[Tensor, _Mapping]] = ..., bars: _Optional[int] = ..., chords: _Optional[_Iterable[str]] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("model", "version", "seed", "samples", "texts", "wavs", "midis")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    WAVS_FIELD_NUMBER: _ClassVar[int]
    MIDIS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    seed: int
    samples: Tensor
    texts: _containers.RepeatedScalarFieldContainer[str]
    wavs: _containers.RepeatedScalarFieldContainer[bytes]
    midis: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., seed: _Optional[int] = ..., samples: _Optional[_Union[Tensor, _Mapping]] = ..., texts: _Optional[_Iterable[str]] = ..., wavs: _Optional[_Iterable[bytes]] = ..., midis: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SampleChunk(_message.Message):
    __slots__ = ("step", "steps", "seed", "values", "model", "version", "texts", "pcm", "midis", "chord")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    MIDIS_FIELD_NUMBER: _ClassVar[int]
    CHORD_FIELD_NUMBER: _ClassVar[int]
    step: int
    steps: int
    seed: int
    values: Tensor
    model: str
    version: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    pcm: bytes
    midis: _containers.RepeatedScalarFieldContainer[bytes]
    chord: str
    def __init__(self, step: _Optional[int] = ..., steps: _Optional[int] = ..., seed: _Optional[int] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., pcm: _Optional[bytes] = ..., midis: _Optional[_Iterable[bytes]] = ..., chord: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("model", "inputs", "labels", "texts", "wavs", "method", "k", "refine_steps", "seed", "anomaly_method", "refine")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    WAVS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    REFINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_METHOD_FIELD_NUMBER: _ClassVar[int]
    REFINE_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: Tensor
    labels: _containers.RepeatedScalarFieldContainer[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    wavs: _containers.RepeatedScalarFieldContainer[bytes]
    method: str
    k: int
    refine_steps: int
    seed: int
    anomaly_method: str
    refine: str
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., labels: _Optional[_Iterable[int]] = ..., texts: _Optional[_Iterable[str]] = ..., wavs: _Optional[_Iterable[bytes]] = ..., method: _Optional[str] = ..., k: _Optional[int] = ..., refine_steps: _Optional[int] = ..., seed: _Optional[int] = ..., anomaly_method: _Optional[str] = ..., refine: _Optional[str] = ...) -> None: ...

class Anomaly(_message.Message):
    __slots__ = ("score", "percentile", "is_anomaly", "method", "score_kind", "p_value", "batch_size")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    IS_ANOMALY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SCORE_KIND_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    score: float
    percentile: float
    is_anomaly: bool
    method: str
    score_kind: str
    p_value: float
    batch_size: int
    def __init__(self, score: _Optional[float] = ..., percentile: _Optional[float] = ..., is_anomaly: _Optional[bool] = ..., method: _Optional[str] = ..., score_kind: _Optional[str] = ..., p_value: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("log_likelihood_nats", "bits_per_dim", "method", "anomaly", "k", "refine_steps", "stderr", "is_lower_bound", "free_energy", "critic")
    LOG_LIKELIHOOD_NATS_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_DIM_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    REFINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    IS_LOWER_BOUND_FIELD_NUMBER: _ClassVar[int]
    FREE_ENERGY_FIELD_NUMBER: _ClassVar[int]
    CRITIC_FIELD_NUMBER: _ClassVar[int]
    log_likelihood_nats: float
    bits_per_dim: float
    method: str
    anomaly: Anomaly
    k: int
    refine_steps: int
    stderr: float
    is_lower_bound: bool
    free_energy: float
    critic: float
    def __init__(self, log_likelihood_nats: _Optional[float] = ..., bits_per_dim: _Optional[float] = ..., method: _Optional[str] = ..., anomaly: _Optional[_Union[Anomaly, _Mapping]] = ..., k: _Optional[int] = ..., refine_steps: _Optional[int] = ..., stderr: _Optional[float] = ..., is_lower_bound: _Optional[bool] = ..., free_energy: _Optional[float] = ..., critic: _Optional[float] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("model", "version", "results")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    results: _containers.RepeatedCompositeFieldContainer[ScoreResult]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ScoreResult, _Mapping]]] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("model", "inputs", "mask", "n", "seed", "temperature", "texts", "length", "top_k", "wavs", "seconds", "voice", "steps")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    WAVS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: Tensor
    mask: Tensor
    n: int
    seed: int
    temperature: float
    texts: _containers.RepeatedScalarFieldContainer[str]
    length: int
    top_k: int
    wavs: _containers.RepeatedScalarFieldContainer[bytes]
    seconds: float
    voice: str
    steps: int
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., mask: _Optional[_Union[Tensor, _Mapping]] = ..., n: _Optional[int] = ..., seed: _Optional[int] = ..., temperature: _Optional[float] = ..., texts: _Optional[_Iterable[str]] = ..., length: _Optional[int] = ..., top_k: _Optional[int] = ..., wavs: _Optional[_Iterable[bytes]] = ..., seconds: _Optional[float] = ..., voice: _Optional[str] = ..., steps: _Optional[int] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("model", "version", "seed", "completions", "texts", "wavs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    WAVS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    seed: int
    completions: Tensor
    texts: _containers.RepeatedScalarFieldContainer[str]
    wavs: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., seed: _Optional[int] = ..., completions: _Optional[_Union[Tensor, _Mapping]] = ..., texts: _Optional[_Iterable[str]] = ..., wavs: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("model", "inputs", "seed", "refine_steps", "refine", "actions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REFINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    REFINE_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: Tensor
    seed: int
    refine_steps: int
    refine: str
    actions: Tensor
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ..., refine_steps: _Optional[int] = ..., refine: _Optional[str] = ..., actions: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("model", "version", "seed", "outputs")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    seed: int
    outputs: _containers.MessageMap[str, Tensor]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., seed: _Optional[int] = ..., outputs: _Optional[_Mapping[str, Tensor]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("model", "z")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    model: str
    z: Tensor
    def __init__(self, model: _Optional[str] = ..., z: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("model", "version", "images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    images: Tensor
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., images: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ReconstructRequest(_message.Message):
    __slots__ = ("model", "inputs", "seed", "refine_steps", "refine")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REFINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    REFINE_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: Tensor
    seed: int
    refine_steps: int
    refine: str
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ..., refine_steps: _Optional[int] = ..., refine: _Optional[str] = ...) -> None: ...

class ReconstructResponse(_message.Message):
    __slots__ = ("model", "version", "seed", "images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    seed: int
    images: Tensor
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., seed: _Optional[int] = ..., images: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class InterpolateRequest(_message.Message):
    __slots__ = ("model", "inputs", "steps")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: Tensor
    steps: int
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., steps: _Optional[int] = ...) -> None: ...

class InterpolateResponse(_message.Message):
    __slots__ = ("model", "version", "z", "images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    z: Tensor
    images: Tensor
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., z: _Optional[_Union[Tensor, _Mapping]] = ..., images: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class TranslateRequest(_message.Message):
    __slots__ = ("model", "inputs", "direction")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: Tensor
    direction: str
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., direction: _Optional[str] = ...) -> None: ...

class TranslateResponse(_message.Message):
    __slots__ = ("model", "version", "images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    images: Tensor
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., images: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "inputs", "actions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: Tensor
    actions: Tensor
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., actions: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "version", "states", "frames")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    states: Tensor
    frames: Tensor
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., states: _Optional[_Union[Tensor, _Mapping]] = ..., frames: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PredictChunk(_message.Message):
    __slots__ = ("model", "version", "step", "steps", "states", "frames")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    step: int
    steps: int
    states: Tensor
    frames: Tensor
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., step: _Optional[int] = ..., steps: _Optional[int] = ..., states: _Optional[_Union[Tensor, _Mapping]] = ..., frames: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
