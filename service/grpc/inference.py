"""The Open Inference Protocol (KServe V2) over gRPC: `inference.GRPCInferenceService`, a thin adapter to the engine.

Every tensor function of a stored model is one V2 model named "<model>.<function>"
(e.g. "pixelcnn.log_prob"), whose one version is the model's version. ModelInfer
takes tensors either as typed `contents` or as `raw_input_contents` (little-endian,
row-major, what tritonclient sends) and answers in the same form; outputs whose
type has no typed field (FP16) always travel raw. Engine errors become gRPC
status codes whose details begin with the field at fault: INVALID_ARGUMENT,
NOT_FOUND, RESOURCE_EXHAUSTED (queue full), UNAVAILABLE, DEADLINE_EXCEEDED.

RepositoryIndex (Triton's model-repository extension) lists every version of the V2 models in the store, so
`tritonclient.grpc.InferenceServerClient.get_model_repository_index()` works; RepositoryModelLoad and
RepositoryModelUnload load and unload a model as service.api.repository does over REST, for a call whose
`authorization` metadata holds an admin key (PERMISSION_DENIED otherwise). A request's model_version runs on
that version when it is served.
"""

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import numpy as np

import genserve
from service.engine.engine import PINNED_VERSION
from service.engine.errors import VERSION_FIELD, EngineError, InvalidInput
from service.engine.oip import (
    EXTENSIONS,
    NUMPY,
    SERVER_NAME,
    WIRE,
    check_output_name,
    check_rows,
    chosen_by,
    output_tensor,
    platform,
    resolve,
    served_versions,
    tensor_metadata,
    v2_datatype,
    wire_bytes,
)
from service.engine.validation import check_finite, check_finite_outputs, check_shape, float_inputs
from service.grpc.gen_inference import grpc_predict_v2_pb2 as pb
from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as pb_grpc
from service.grpc.status import abort_with
from service.model_control import AdminKeys, load, unload, v2_pin

log = logging.getLogger("genserve.grpc.inference")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name  # "inference.GRPCInferenceService"

CONTENTS = {  # the InferTensorContents field of each datatype; FP16 has none (raw only)
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}


# --- tensors -------------------------------------------------------------------------------------------------------


def decode_inputs(request: pb.ModelInferRequest, spec: dict, max_rows: int) -> dict[str, np.ndarray]:
    """The request's input tensors by name, checked against the function's spec (names, datatypes, sizes) and
    the model's rows per request (as Triton refuses a batch over the model's max batch size)."""
    specs = {t["name"]: t for t in spec["inputs"]}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents: {len(raw)} entries for {len(request.inputs)} inputs; "
                           f"give one per input, in order", field="raw_input_contents")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if name not in specs:
            raise InvalidInput(f"inputs[{i}].name: no input {name!r}; the model takes {sorted(specs)}",
                               field=f"inputs[{i}].name")
        if name in inputs:
            raise InvalidInput(f"{name}: given twice", field=name)
        want = v2_datatype(specs[name]["dtype"])
        if tensor.datatype != want:
            raise InvalidInput(f"{name}: datatype must be {want}, got {tensor.datatype!r}", field=name)
        shape = check_shape(tensor.shape, f"{name}.shape")
        check_rows(name, shape, max_rows)
        count, dtype = math.prod(shape), NUMPY[want]
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"{name}.contents: give raw_input_contents or contents, not both", field=name)
            if len(raw[i]) != count * dtype.itemsize:
                raise InvalidInput(f"{name}: raw_input_contents[{i}] holds {len(raw[i])} bytes; shape {shape} "
                                   f"of {want} needs {count * dtype.itemsize}", field=name)
            array = np.frombuffer(raw[i], dtype=WIRE[want]).astype(dtype, copy=False)
            inputs[name] = check_finite(array.reshape(shape), name)
            continue
        if want not in CONTENTS:
            raise InvalidInput(f"{name}: {want} travels only in raw_input_contents", field=name)
        values = getattr(tensor.contents, CONTENTS[want])
        if len(values) != count:
            raise InvalidInput(f"{name}.contents.{CONTENTS[want]}: {len(values)} values for shape {shape} "
                               f"({count})", field=name)
        try:
            with np.errstate(over="ignore"):  # an FP64 value beyond FP32 becomes inf, which check_finite refuses
                inputs[name] = check_finite(np.array(values, dtype=dtype).reshape(shape), name)
        except (OverflowError, ValueError) as e:
            raise InvalidInput(f"{name}.contents: {e}", field=name) from e
    return inputs


def requested_outputs(request: pb.ModelInferRequest, spec: dict) -> list[str]:
    """The output names to answer with, in order: the requested ones, else all of the function's."""
    names = [t["name"] for t in spec["outputs"]]
    if not request.outputs:
        return names
    wanted = []
    for i, output in enumerate(request.outputs):
        check_output_name(i, output.name, names, wanted)
        if "classification" in output.parameters:
            raise InvalidInput(f"outputs[{i}].parameters.classification: not supported",
                               field=f"outputs[{i}].parameters")
        wanted.append(output.name)
    return wanted


def encode_outputs(response: pb.ModelInferResponse, outputs: dict[str, np.ndarray], spec: dict,
                   wanted: list[str], raw: bool) -> None:
    """Append the wanted outputs to `response`, raw when asked (or when a datatype has no typed field)."""
    dtypes = {t["name"]: t["dtype"] for t in spec["outputs"]}
    arrays = {name: output_tensor(outputs[name], dtypes[name]) for name in wanted}  # name -> (datatype, array)
    raw = raw or any(datatype not in CONTENTS for datatype, _ in arrays.values())
    for name, (datatype, array) in arrays.items():
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(wire_bytes(datatype, array))
        else:
            getattr(tensor.contents, CONTENTS[datatype]).extend(array.ravel().tolist())


# --- errors --------------------------------------------------------------------------------------------------------


async def _answer(context: grpc.aio.ServicerContext, method: str, work: Callable[[], Awaitable[Any]]) -> Any:
    """Run `work`; an EngineError aborts with its status (details begin with the field), anything else INTERNAL."""
    try:
        return await work()
    except EngineError as exc:
        await abort_with(context, exc)
    except (grpc.aio.AbortError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("unhandled error in %s", method)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; it has been logged")


@contextlib.contextmanager
def _on_version(engine: Any, name: str, version: str, field: str = "model_name") -> Iterator[None]:
    """The V2 model's `version` pinned (PINNED_VERSION) when that version is served, and the field that chose it
    (VERSION_FIELD: oip.chosen_by, `field` naming the model), around a call's _answer: its refusal is written
    within."""
    token = PINNED_VERSION.set(v2_pin(engine, name, version))
    field_token = VERSION_FIELD.set(chosen_by(field, version))
    try:
        yield
    finally:
        PINNED_VERSION.reset(token)
        VERSION_FIELD.reset(field_token)


# --- the servicer --------------------------------------------------------------------------------------------------


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, engine: Any):
        self.engine = engine
        self.admins = AdminKeys(engine.settings) if hasattr(engine, "settings") else None

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=bool(self.engine.ready()))

    async def ModelReady(self, request, context):
        async def work():
            resolve(self.engine, request.name, request.version, field="name")
            return pb.ModelReadyResponse(ready=bool(self.engine.ready()))

        with _on_version(self.engine, request.name, request.version, "name"):
            return await _answer(context, "ModelReady", work)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=genserve.__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        async def work():
            model, _, spec, version = resolve(self.engine, request.name, request.version, field="name")
            return pb.ModelMetadataResponse(
                name=request.name, versions=served_versions(self.engine, model) or [version],
                platform=platform(self.engine),
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor_metadata(t)) for t in spec["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor_metadata(t)) for t in spec["outputs"]],
            )

        with _on_version(self.engine, request.name, request.version, "name"):
            return await _answer(context, "ModelMetadata", work)

    async def ModelInfer(self, request, context):
        async def work():
            model, function, spec, version = resolve(self.engine, request.model_name, request.model_version)
            inputs = decode_inputs(request, spec, self.engine.max_rows(model))
            wanted = requested_outputs(request, spec)
            outputs = await self.engine.infer(model, function, inputs)
            check_finite_outputs({name: outputs[name] for name in wanted}, float_inputs(inputs))
            response = pb.ModelInferResponse(model_name=request.model_name, model_version=version, id=request.id)
            encode_outputs(response, outputs, spec, wanted, raw=bool(request.raw_input_contents))
            return response

        with _on_version(self.engine, request.model_name, request.model_version):
            return await _answer(context, "ModelInfer", work)

    async def RepositoryIndex(self, request, context):
        async def work():
            index = await asyncio.to_thread(self.engine.repository_index, bool(self.engine.ready()))
            return pb.RepositoryIndexResponse(models=[
                pb.RepositoryIndexResponse.ModelIndex(**model) for model in index
                if not request.ready or model["state"] == "READY"])

        return await _answer(context, "RepositoryIndex", work)

    async def _control(self, context: grpc.aio.ServicerContext, method: str, work: Callable[[], Awaitable[Any]]):
        """Run `work` for a caller whose `authorization` metadata holds an admin key; else PERMISSION_DENIED."""
        authorization = dict(context.invocation_metadata() or ()).get("authorization")
        problem = "authorization: model control is off" if self.admins is None else self.admins.problem(authorization)
        if problem is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)
        return await _answer(context, method, work)

    async def RepositoryModelLoad(self, request, context):
        async def work():
            await load(self.engine, request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await self._control(context, "RepositoryModelLoad", work)

    async def RepositoryModelUnload(self, request, context):
        async def work():
            unload(self.engine, request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._control(context, "RepositoryModelUnload", work)


def add_inference_servicer(server: Any, engine: Any) -> str:
    """Register inference.GRPCInferenceService over `engine` on `server` (a grpc.aio.Server, or
    service.grpc.handlers.AroundEveryCall over one); returns the service's full name."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(engine), server)
    return SERVICE_NAME
