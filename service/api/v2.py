"""The Open Inference Protocol (KServe V2) over REST: `/v2/...`, a thin adapter to the engine.

Every tensor function of a stored model is one V2 model named "<model>.<function>"
(e.g. "pixelcnn.log_prob"), whose one version is the model's version. Infer takes
JSON tensors ({"name", "shape", "datatype", "data"}, data flat or nested in
row-major order) and Triton's binary tensor data extension (the body is the JSON
header, `Inference-Header-Content-Length` bytes long, then each binary tensor's
bytes; what tritonclient.http sends by default), and answers in kind.

Errors follow the V2 specification, not genserve's /v1 format: a 4xx/5xx status
with the body {"error": "<message>"}, the message naming the field at fault
(400 for a bad request, 404 for an unknown model or version, 503 for a full
queue or an engine that is not ready, 504 for a timeout). Readiness answers 200
for true and 400 for false, as the specification says.

POST /v2/repository/index (Triton's model-repository extension) lists every version
of every V2 model in the store with its state and reason (Engine.repository_index), so
`tritonclient.http.InferenceServerClient.get_model_repository_index()` works.
"""

import asyncio
import json
import logging
import math
import re
import zlib
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

import genserve
from service.api.disconnect import CLIENT_CLOSED_REQUEST, ClientGone, unless_disconnected
from service.api.errors import unreadable_json, v2_error
from service.api.responses import dumps
from service.engine.errors import RETRY_AFTER_S, EngineError, InvalidInput
from service.engine.oip import (
    EXTENSIONS,
    NUMPY,
    SERVER_NAME,
    check_output_name,
    check_rows,
    output_tensor,
    platform,
    resolve,
    served_versions,
    tensor_metadata,
    v2_datatype,
    wire_bytes,
)
from service.engine.validation import brief, check_finite, check_finite_outputs, check_shape, float_inputs

log = logging.getLogger("genserve.api.v2")

HEADER_LENGTH = "Inference-Header-Content-Length"
DEFAULT_BODY_LIMIT = 8 * 1024 * 1024  # decompressed bytes, for an engine without settings.max_body_bytes


class TooLarge(EngineError):
    status = 413
    code = "payload_too_large"


def from_engine_error(exc: EngineError) -> JSONResponse:
    status = 400 if exc.status == 422 else exc.status  # the V2 spec answers a bad request with 400
    return v2_error(status, exc.detail, {"Retry-After": RETRY_AFTER_S} if exc.retry_later else None)


# --- V2 models over the engine -------------------------------------------------------------------------------------


# --- infer bodies --------------------------------------------------------------------------------------------------


def _parse(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header and the binary tail of an infer body."""
    if header_length is None:
        head, tail = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH}: not an integer: {header_length!r}", field=HEADER_LENGTH) from None
        if not 0 <= n <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH}: {n} is outside the body's {len(body)} bytes", field=HEADER_LENGTH)
        head, tail = body[:n], body[n:]
    doc = _loads(head)
    if not isinstance(doc, dict):
        raise InvalidInput("body: must be a JSON object", field="body")
    return doc, tail


def echoed_id(doc: dict) -> str:
    """The body's `id`, echoed in the answer ("" when absent or null): a string UTF-8 can write, so not one holding
    a lone surrogate (JSON's "\\ud800" parses, but no answer could carry it)."""
    value = doc.get("id")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"id: must be a string, got {brief(value)}", field="id")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"id: {brief(value)} holds a lone surrogate, which UTF-8 cannot write", field="id") \
            from None
    return value


def _loads(head: bytes) -> Any:
    """A JSON body; what it cannot be (invalid, too deep, a huge integer) is a 400 naming the body."""
    try:
        return orjson.loads(head)
    except orjson.JSONDecodeError:  # or what only the standard library reads (NaN, huge numbers), or its message
        return _stdlib_loads(head)


def _stdlib_loads(head: bytes) -> Any:
    try:
        return json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"body: invalid JSON: {e}", field="body") from None
    except (ValueError, RecursionError) as e:  # Python's limits: 4,300 digits to an integer, about 1,000 levels
        raise InvalidInput(unreadable_json(e), field="body") from None


def _binary_size(tensor: dict, field: str) -> int | None:
    size = _object(tensor.get("parameters"), f"{field}.parameters").get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InvalidInput(f"{field}.parameters.binary_data_size: must be an integer >= 0", field=field)
    return size


def _tensor_header(tensor: Any, i: int, specs: dict, max_rows: int) -> tuple[str, list[int], np.dtype]:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise InvalidInput(f"inputs[{i}]: must be an object with a string name", field=f"inputs[{i}]")
    name = tensor["name"]
    if name not in specs:
        raise InvalidInput(f"inputs[{i}].name: no input {brief(name)}; the model takes {sorted(specs)}",
                           field=f"inputs[{i}].name")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput(f"{name}.shape: must be a list of integers, got {brief(shape)}", field=name)
    check_shape(shape, f"{name}.shape")
    check_rows(name, shape, max_rows)
    want = v2_datatype(specs[name]["dtype"])
    if tensor.get("datatype") != want:
        raise InvalidInput(f"{name}: datatype must be {want}, got {brief(tensor.get('datatype'))}", field=name)
    return name, shape, NUMPY[want]


_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}  # JSON value kinds each target kind accepts


def _json_array(data: Any, dtype: np.dtype, name: str) -> np.ndarray:
    """JSON data (flat or nested) as `dtype`: no silent float->int or int->bool casts, no overflow."""
    datatype = v2_datatype(dtype.name)
    try:
        given = np.asarray(data)
        python_ints = dtype.kind in "iuf" and _python_ints(given)  # the standard library's reading of big integers:
        if given.size and given.dtype.kind not in _KINDS[dtype.kind] and not python_ints:  # converted below, where
            if _whole_beyond(given, dtype):  # only a value beyond the datatype overflows
                raise OverflowError  # orjson reads an integer beyond 64 bits as a float
            raise ValueError(f"got {given.dtype.name} values")
        with np.errstate(over="ignore"):  # a float beyond the datatype becomes inf, which check_finite refuses
            return np.asarray(data, dtype=dtype)
    except OverflowError:  # integers beyond an integer datatype, or beyond any float; a float beyond FP32 is inf
        info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
        raise InvalidInput(f"{name}.data: a value is out of {datatype}'s range [{info.min}, {info.max}]",
                           field=name) from None
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{name}.data: not {datatype} values: {e}", field=name) from None


def _python_ints(given: np.ndarray) -> bool:
    """Whether an object array holds only Python integers: the standard library's reading of a body with an
    integer beyond 64 bits (orjson refuses one beyond a double's range, and the body falls back to it)."""
    return given.dtype.kind == "O" and all(type(value) is int for value in given.flat)


def _whole_beyond(given: np.ndarray, dtype: np.dtype) -> bool:
    """Whether float `given` holds whole numbers, one beyond integer `dtype`'s range (2**70 for INT64)."""
    if dtype.kind not in "iu" or given.dtype.kind != "f":
        return False
    info = np.iinfo(dtype)  # compared with max + 1, which a float holds exactly (2**63; 2**63 - 1 it rounds up)
    if not np.isfinite(given).all():  # inf and NaN are not whole numbers (and np.mod of them warns)
        return False
    return bool(np.all(np.mod(given, 1) == 0) and np.any((given < info.min) | (given >= info.max + 1)))


def decode_inputs(doc: dict, tail: bytes, spec: dict, max_rows: int) -> dict[str, np.ndarray]:
    """The request's input tensors by name, checked against the function's spec (names, datatypes, sizes) and
    the model's rows per request."""
    specs = {t["name"]: t for t in spec["inputs"]}
    tensors = doc.get("inputs")
    if not isinstance(tensors, list):
        raise InvalidInput("inputs: must be a list of tensors", field="inputs")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(tensors):
        name, shape, dtype = _tensor_header(tensor, i, specs, max_rows)
        if name in inputs:
            raise InvalidInput(f"{name}: given twice", field=name)
        count, size = math.prod(shape), _binary_size(tensor, name)
        if size is not None:
            if "data" in tensor:
                raise InvalidInput(f"{name}: give data or parameters.binary_data_size, not both", field=name)
            if size != count * dtype.itemsize or offset + size > len(tail):
                raise InvalidInput(f"{name}: binary_data_size {size} (of {len(tail) - offset} bytes left); shape "
                                   f"{shape} of {v2_datatype(dtype.name)} needs {count * dtype.itemsize}", field=name)
            chunk = tail[offset:offset + size]
            offset += size
            array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
            inputs[name] = check_finite(array.reshape(shape), name)
            continue
        if "data" not in tensor:
            raise InvalidInput(f"{name}.data: missing", field=name)
        array = _json_array(tensor["data"], dtype, name)
        if array.size != count:
            raise InvalidInput(f"{name}.data: {array.size} values for shape {shape} ({count})", field=name)
        inputs[name] = check_finite(array.reshape(shape), name)
    if offset != len(tail):
        raise InvalidInput(f"body: {len(tail) - offset} bytes of binary data belong to no input", field="body")
    return inputs


def requested_outputs(doc: dict, spec: dict) -> list[tuple[str, bool]]:
    """(output name, binary?) to answer with, in order: the requested ones, else (no `outputs`, or an empty list, as
    V2 gRPC's absent repeated field) all of the function's."""
    names = [t["name"] for t in spec["outputs"]]
    binary_default = _flag(_object(doc.get("parameters"), "parameters"), "binary_data_output", False, "parameters")
    wanted = doc.get("outputs")
    if wanted is not None and not isinstance(wanted, list):
        raise InvalidInput("outputs: must be a list", field="outputs")
    if not wanted:
        return [(name, binary_default) for name in names]
    result = []
    for i, output in enumerate(wanted):
        if not isinstance(output, dict):
            raise InvalidInput(f"outputs[{i}]: must be an object with a name, got {brief(output)}",
                               field=f"outputs[{i}]")
        check_output_name(i, output.get("name"), names, [name for name, _ in result])
        parameters = _object(output.get("parameters"), f"outputs[{i}].parameters")
        if parameters.get("classification"):
            raise InvalidInput(f"outputs[{i}].parameters.classification: not supported", field=f"outputs[{i}]")
        result.append((output["name"], _flag(parameters, "binary_data", binary_default, f"outputs[{i}].parameters")))
    return result


def _flag(parameters: dict, key: str, default: bool, field: str) -> bool:
    """A boolean parameter: JSON true or false only (the string "false" is not false)."""
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{field}.{key}: must be true or false, got {brief(value)}", field=f"{field}.{key}")
    return value


def encode_response(header: dict, outputs: dict[str, np.ndarray], spec: dict,
                    wanted: list[tuple[str, bool]]) -> Response:
    """JSON tensors, or the JSON header followed by the binary ones (with Inference-Header-Content-Length)."""
    dtypes = {t["name"]: t["dtype"] for t in spec["outputs"]}
    tensors, chunks = [], []
    for name, binary in wanted:
        datatype, array = output_tensor(outputs[name], dtypes[name])
        tensor = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            chunks.append(wire_bytes(datatype, array))
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = array.ravel()  # orjson writes it directly
        tensors.append(tensor)
    head = dumps({**header, "outputs": tensors})  # outputs were checked finite: no NaN or infinity to write
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(b"".join([head, *chunks]), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(head))})


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A gzip/deflate body inflated to at most `limit` bytes (413 beyond: no zip bombs). The coding's name is
    case-insensitive (HTTP); bytes after the compressed stream are refused, not ignored."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidInput(f"Content-Encoding: {encoding!r} is not supported (gzip, deflate)", field="Content-Encoding")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit)
    except zlib.error as e:
        raise InvalidInput(f"body: cannot {encoding}-decompress: {e}", field="body") from None
    if inflater.unconsumed_tail:
        raise TooLarge(f"body: over the limit of {limit} bytes once decompressed", field="body")
    if not inflater.eof:
        raise InvalidInput(f"body: cannot {encoding}-decompress: the data ends early (Content-Encoding: "
                           f"{encoding})", field="body")
    if inflater.unused_data:
        raise InvalidInput(f"body: {len(inflater.unused_data)} bytes after the {encoding} stream (one stream per "
                           "body)", field="body")
    return out


def _object(value: Any, field: str) -> dict:
    """An optional JSON object (parameters), {} when absent."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{field}: must be a JSON object", field=field)
    return value


# --- routes --------------------------------------------------------------------------------------------------------


class V2Error(BaseModel):
    """The Open Inference Protocol's error body."""

    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": V2Error, "description": description}
    for status, description in {
        400: "invalid request (the protocol's status for every bad input)",
        401: "API keys are set and the request has none, or an unknown one",
        404: "unknown model, version or route",
        413: "body too large",
        415: "body not JSON (or the binary tensor extension's)",
        503: "overloaded, not ready or draining (Retry-After)",
        504: "deadline exceeded",
    }.items()
}


def router(engine: Any) -> APIRouter:
    """The /v2 routes over `engine`. Include it in the app: app.include_router(v2.router(engine))."""
    r = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"], responses=ERRORS)
    body_limit = getattr(getattr(engine, "settings", None), "max_body_bytes", DEFAULT_BODY_LIMIT)

    def lookup(request: Request, name: str, version: str | None) -> tuple[str, str, dict, str]:
        found = resolve(engine, name, version)
        request.state.model = found[0]  # metrics label, set only for a model the engine knows
        return found

    @r.get("")
    async def server_metadata() -> dict:
        return {"name": SERVER_NAME, "version": genserve.__version__, "extensions": EXTENSIONS}

    @r.get("/health/live")
    async def server_live() -> dict:
        return {"live": True}

    @r.get("/health/ready")
    async def server_ready() -> Any:
        if engine.ready():
            return {"ready": True}
        return v2_error(400, "server: not ready")

    async def model_metadata(request: Request, model_name: str, model_version: str | None = None) -> Any:
        try:
            model, _, spec, version = lookup(request, model_name, model_version)
        except EngineError as e:
            return from_engine_error(e)
        return {"name": model_name, "versions": served_versions(engine, model) or [version],
                "platform": platform(engine), "inputs": [tensor_metadata(t) for t in spec["inputs"]],
                "outputs": [tensor_metadata(t) for t in spec["outputs"]]}

    async def model_ready(request: Request, model_name: str, model_version: str | None = None) -> Any:
        try:
            lookup(request, model_name, model_version)
        except EngineError as e:
            return from_engine_error(e)
        if not engine.ready():
            return v2_error(400, f"model_name: {model_name!r} is not ready")
        return {"name": model_name, "ready": True}

    async def infer(request: Request, model_name: str, model_version: str | None = None) -> Any:
        try:
            model, function, spec, version = lookup(request, model_name, model_version)
            body = _decompress(await request.body(), request.headers.get("content-encoding"), body_limit)
            doc, tail = _parse(body, request.headers.get(HEADER_LENGTH))
            echo_id = echoed_id(doc)
            inputs = decode_inputs(doc, tail, spec, engine.max_rows(model))
            wanted = requested_outputs(doc, spec)
            outputs = await unless_disconnected(request, engine.infer(model, function, inputs))
            check_finite_outputs({name: outputs[name] for name, _ in wanted}, float_inputs(inputs))
        except EngineError as e:
            return from_engine_error(e)
        except Exception:
            log.exception("unhandled error in POST /v2/models/%s/infer", model_name)
            return v2_error(500, "internal error; it has been logged")
        header = {"model_name": model_name, "model_version": version} | ({"id": echo_id} if echo_id else {})
        return encode_response(header, outputs, spec, wanted)

    r.add_api_route("/models/{model_name}", model_metadata, methods=["GET"])
    r.add_api_route("/models/{model_name}/versions/{model_version}", model_metadata, methods=["GET"])
    r.add_api_route("/models/{model_name}/ready", model_ready, methods=["GET"])
    r.add_api_route("/models/{model_name}/versions/{model_version}/ready", model_ready, methods=["GET"])
    r.add_api_route("/models/{model_name}/infer", infer, methods=["POST"])
    r.add_api_route("/models/{model_name}/versions/{model_version}/infer", infer, methods=["POST"])
    r.genserve_infer = infer  # for InferFastPath

    @r.post("/repository/index")
    async def repository_index(request: Request) -> Any:
        """Every V2 model; the body may be empty, or {"ready": true} for the ready ones only."""
        body = await request.body()
        try:
            doc = _loads(body) if body.strip() else {}
            if not isinstance(doc, dict):
                raise InvalidInput("body: must be empty or a JSON object like {\"ready\": true}", field="body")
            only_ready = _flag(doc, "ready", False, "body")
        except EngineError as e:
            return from_engine_error(e)
        # every version in the store, served or not: a rescan that hashes every file (about 1.8 s for the shipped
        # store), so in a thread, as gRPC's RepositoryIndex, while the event loop answers other requests
        index = await asyncio.to_thread(engine.repository_index, bool(engine.ready()))
        return [entry for entry in index if entry["state"] == "READY"] if only_ready else index

    return r


# --- the infer fast path -------------------------------------------------------------------------------------------

_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


def is_infer_path(path: str) -> bool:
    """Whether a path is a V2 infer route's (a trailing slash too: the app redirects it there)."""
    return _INFER_PATH.fullmatch(path.rstrip("/")) is not None
INFER_ROUTES = ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{model_version}/infer")


class InferFastPath:
    """POST /v2/models/{name}[/versions/{v}]/infer straight to the V2 infer handler, past FastAPI's routing,
    dependency and validation machinery (about a fifth of the API process under load): the handler takes the
    raw body and checks every field itself, answers every error in the V2 format, and returns its Response.
    Everything else goes on to the app. The route is still matched as FastAPI would (scope route and
    path_params are set, so metrics and drains see its template), and the routes stay in the OpenAPI schema.
    Install it innermost (after the body limit), so that every middleware still sees the request."""

    def __init__(self, app: ASGIApp, infer: Any, routes: list) -> None:
        self.app, self.infer = app, infer
        by_path = {getattr(route, "path", None): route for route in routes}
        missing = [path for path in INFER_ROUTES if path not in by_path]
        if missing:
            raise ValueError(f"InferFastPath: no route {missing} among the V2 routes")
        self.routes = (by_path[INFER_ROUTES[0]], by_path[INFER_ROUTES[1]])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _INFER_PATH.fullmatch(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" \
            else None
        if match is None:
            await self.app(scope, receive, send)
            return
        name, version = match.groups()
        scope["route"] = self.routes[version is not None]
        scope["path_params"] = {"model_name": name} if version is None else \
            {"model_name": name, "model_version": version}
        request = Request(scope, receive, send)
        try:
            response = await self.infer(request, name, version)
        except ClientGone:
            response = Response(status_code=CLIENT_CLOSED_REQUEST)
        await response(scope, receive, send)
