"""Open Inference Protocol (KServe V2) naming shared by its REST and gRPC adapters.

Every model function is a V2 model named `<model>.<function>`, e.g.
`pixelcnn.log_prob`, whose version is the model's version.
"""

from typing import Any

import numpy as np

from service.engine.errors import InvalidInput, UnknownModel
from service.engine.validation import brief
from service.store import is_version_number

SERVER_NAME = "genserve"
EXTENSIONS = ["binary_tensor_data"]
PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}  # Triton's platform names
DATATYPES = {  # manifest dtype (numpy name) -> V2 datatype
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
NUMPY = {v2: np.dtype(name) for name, v2 in DATATYPES.items()}
WIRE = {v2: dtype.newbyteorder("<") for v2, dtype in NUMPY.items()}  # binary tensor contents are little-endian
V2_OF = {dtype: v2 for v2, dtype in NUMPY.items()}  # an array's dtype -> its V2 datatype (dtype.name is slow)


def v2_datatype(dtype: str) -> str:
    return DATATYPES.get(dtype, dtype.upper())


def output_tensor(value: Any, dtype: str) -> tuple[str, np.ndarray]:
    """An output as both V2 adapters answer it: (its V2 datatype, the array C-ordered in the manifest's `dtype`,
    else in its own)."""
    array = np.ascontiguousarray(value, dtype=dtype if dtype in DATATYPES else None)
    return V2_OF.get(array.dtype) or v2_datatype(array.dtype.name), array


def wire_bytes(datatype: str, array: np.ndarray) -> bytes:
    """An output's binary contents, little-endian."""
    return array.astype(WIRE.get(datatype) or array.dtype.newbyteorder("<"), copy=False).tobytes()


def check_rows(name: str, shape: list[int], max_rows: int) -> None:
    """Refuse a tensor of more rows (dim 0) than the request may hold (Engine.max_rows); checked from the tensor's
    header, before its data is decoded."""
    if shape and shape[0] > max_rows:
        raise InvalidInput(f"{name}: {shape[0]} rows (dim 0), over the model's limit of {max_rows} per request "
                           "(its max_queue_size); send fewer, or in parts", field=name)


def check_output_name(i: int, name: Any, names: list[str], earlier: list[str]) -> None:
    """The name of a request's outputs[i]: one of the function's output `names`, not among the `earlier` ones."""
    if name not in names:
        raise InvalidInput(f"outputs[{i}].name: no output {brief(name)}; the model has {names}",
                           field=f"outputs[{i}].name")
    if name in earlier:
        raise InvalidInput(f"outputs[{i}].name: {brief(name)} requested twice", field=f"outputs[{i}].name")


def tensor_metadata(spec: dict) -> dict:
    return {"name": spec["name"], "datatype": v2_datatype(spec["dtype"]), "shape": list(spec["shape"])}


def platform(engine: Any) -> str:
    runtime = getattr(getattr(engine, "settings", None), "runtime", "")
    return PLATFORMS.get(runtime, runtime)


def version_field(field: str) -> str:
    """The field of a V2 request that names its version, beside `field`, the one naming its model: `model_version`
    beside `model_name` (REST, gRPC ModelInfer), else `version` (gRPC ModelMetadata and ModelReady: `name`)."""
    return "model_version" if field == "model_name" else "version"


def chosen_by(field: str, version: str | None) -> str:
    """The field of a V2 request that chose the version it runs on (VERSION_FIELD, which the adapters set for the
    request): its version field where it names one, else `field`, naming the model, whose latest it runs on."""
    return version_field(field) if version else field


def resolve(engine: Any, name: str, version: str | None, field: str = "model_name") -> tuple[str, str, dict, str]:
    """V2 model name and version -> (model, function, function spec, version); UnknownModel if any is unknown,
    naming `field` (the model's) or its version field (version_field)."""
    model, dot, function = name.rpartition(".")
    if not dot or not model:
        raise UnknownModel(f"{field}: unknown model {name!r}; V2 models are named <model>.<function>, "
                           f"e.g. 'pixelcnn.log_prob'", field=field)
    try:
        description = engine.describe(model)
        spec = engine.function_spec(model, function)
    except UnknownModel as e:
        raise UnknownModel(f"{field}: unknown model {name!r} ({e.message})", field=field) from e
    have = str(description["version"])  # the pinned one (service.model_control.v2_pin), else the latest
    if version and not (is_version_number(version) and int(version) == int(have)):  # "01" is version 1, as on /v1
        field = version_field(field)
        raise UnknownModel(f"{field}: model {name!r} has no version {version!r}; it has "
                           f"{served_versions(engine, model) or [have]}", field=field)
    return model, function, spec, have


def served_versions(engine: Any, model: str) -> list[str]:
    """The versions of a model served now, oldest first, as V2 names them (model metadata's `versions`)."""
    return [str(v) for v in sorted(getattr(engine, "versions", {}).get(model, {}))]

