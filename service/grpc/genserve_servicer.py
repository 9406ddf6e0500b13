"""The genserve gRPC API (genserve.v1.Genserve): a thin adapter from gRPC to the engine.

It mirrors the REST API: the same operations, limits and errors. Every method
decodes the request (tensors are raw little-endian bytes), calls the engine and
encodes the answer. EngineErrors become gRPC status codes whose details start
with the offending field; see proto/genserve/v1/genserve.proto.

Encode, Decode, Reconstruct and Interpolate serve latent-variable models
(docs/latent-variable-models.md); a model without the capability gets
FAILED_PRECONDITION.
"""

import asyncio
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import grpc
import numpy as np

from service.engine import audio, midi, text
from service.engine.errors import EngineError, InvalidInput, MissingCapability
from service.engine.options import (
    AnomalyMethod,
    Bars,
    ChainSteps,
    ChunkMs,
    Direction,
    K,
    Refine,
    RefineSteps,
    ScoreMethod,
    Seconds,
    Seed,
    Temperature,
    TopK,
    checked,
    length,
    samples,
)
from service.engine.validation import (
    check_finite,
    check_finite_outputs,
    check_no_mask,
    check_shape,
    check_stream_options,
)
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.status import abort_with
from service.settings import Settings

log = logging.getLogger("genserve.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Genserve"].full_name  # "genserve.v1.Genserve"
SEQUENCE_FIELDS = {"text": "texts", "audio": "wavs"}  # a sequence model's inputs, by data kind
WIRE_DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
               "float16", "float32", "float64"}


# --- errors --------------------------------------------------------------------------------------------------------


def _cancelled(context: grpc.aio.ServicerContext) -> bool:
    task = asyncio.current_task()
    return context.cancelled() or (task is not None and task.cancelling() > 0)


@asynccontextmanager
async def engine_errors(context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
    """EngineError -> its status code; anything unexpected -> INTERNAL, logged. A cancelled call stays cancelled."""
    try:
        yield
    except EngineError as exc:
        await abort_with(context, exc)
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        if _cancelled(context):
            raise asyncio.CancelledError from exc  # the client left while a step ran: nothing to answer
        log.exception("unhandled error in %s", method)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; it has been logged")


@contextmanager
def _sequence_fields(spec: dict) -> Iterator[None]:
    """The engine names a text or audio model's inputs `inputs` and `inputs[i]`, as REST's request does; gRPC's
    request gives them as `texts` or `wavs`, so an error about them names that field (texts[3])."""
    try:
        yield
    except EngineError as exc:
        field, name = exc.field or "", SEQUENCE_FIELDS.get(spec.get("kind"))
        if name is None or not (field == "inputs" or field.startswith("inputs[")):
            raise
        renamed = name + field[len("inputs"):]
        message = renamed + exc.message[len(field):] if exc.message.startswith(field) else exc.message
        raise type(exc)(message, field=renamed) from None


# --- tensors -------------------------------------------------------------------------------------------------------


def to_array(tensor: pb.Tensor, field: str) -> np.ndarray:
    """A wire Tensor -> numpy array (read-only view of the bytes), or InvalidInput naming the field."""
    if not tensor.dtype and not tensor.shape and not tensor.data:
        raise InvalidInput(f"{field}: required", field=field)
    if tensor.dtype not in WIRE_DTYPES:
        raise InvalidInput(f"{field}.dtype: {tensor.dtype!r} is not one of {sorted(WIRE_DTYPES)}",
                           field=f"{field}.dtype")
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    shape = check_shape(tensor.shape, f"{field}.shape")
    want = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != want:
        raise InvalidInput(f"{field}.data: {len(tensor.data)} bytes, but {tensor.dtype} {shape} needs {want}",
                           field=f"{field}.data")
    return np.frombuffer(tensor.data, dtype).reshape(shape)


def to_tensor(x: np.ndarray, dtype: np.dtype | str | None = None) -> pb.Tensor:
    """numpy array -> wire Tensor (little-endian, C order)."""
    x = np.asarray(x)
    dtype = np.dtype(dtype or x.dtype)
    data = np.ascontiguousarray(x, dtype.newbyteorder("<")).tobytes()
    return pb.Tensor(dtype=dtype.name, shape=list(x.shape), data=data)


def wire_dtype(spec: dict) -> np.dtype:
    """Samples travel as uint8 when the levels fit, else int64 (the engine's dtype)."""
    levels = spec.get("levels")
    return np.dtype(np.uint8) if levels is not None and int(levels) <= 256 else np.dtype(np.int64)


def _accepted_shapes(shape: list[int]) -> list[tuple[int, ...]]:
    """The data shape, plus the shape without a leading channel of 1 ([1,H,W] -> [H,W])."""
    shapes = [tuple(shape)]
    if len(shape) > 1 and shape[0] == 1:
        shapes.append(tuple(shape[1:]))
    return shapes


def data_batch(tensor: pb.Tensor, spec: dict, limit: int, field: str) -> np.ndarray:
    """Inputs [B, *shape] (integers when the data has levels) -> [B, *shape] int64 or float32."""
    x = to_array(tensor, field)
    shape = [int(d) for d in spec["shape"]]
    accepted = _accepted_shapes(shape)
    if x.ndim == 0 or tuple(x.shape[1:]) not in accepted:
        wanted = " or ".join(str([-1, *s]) for s in accepted)
        raise InvalidInput(f"{field}.shape: {list(x.shape)}, expected [B, *data.shape]: {wanted}", field=field)
    if not 1 <= len(x) <= limit:
        raise InvalidInput(f"{field}: give 1..{limit} inputs, got {len(x)}", field=field)
    if spec.get("levels") is None:
        return check_finite(x.astype(np.float32), field).reshape(len(x), *shape)
    if x.dtype.kind not in "biu":
        raise InvalidInput(f"{field}.dtype: values are levels, give an integer dtype, not {x.dtype.name}",
                           field=f"{field}.dtype")
    if x.dtype == np.uint64 and x.size and x.max() > np.iinfo(np.int64).max:
        raise InvalidInput(f"{field}: values out of range", field=field)
    return x.astype(np.int64).reshape(len(x), *shape)


def mask_batch(tensor: pb.Tensor, spec: dict, batch: int, field: str = "mask") -> np.ndarray:
    """One mask [*shape] for every input, or one per input [B, *shape] -> [B, *shape] int64."""
    mask = to_array(tensor, field)
    shape = [int(d) for d in spec["shape"]]
    if mask.dtype.kind not in "biu":
        raise InvalidInput(f"{field}.dtype: give an integer or bool dtype, not {mask.dtype.name}",
                           field=f"{field}.dtype")
    if tuple(mask.shape) in _accepted_shapes(shape):
        return np.broadcast_to(mask.astype(np.int64).reshape(shape), (batch, *shape)).copy()
    if mask.ndim and len(mask) == batch and tuple(mask.shape[1:]) in _accepted_shapes(shape):
        return mask.astype(np.int64).reshape(batch, *shape)
    raise InvalidInput(f"{field}.shape: {list(mask.shape)}, expected one mask {shape} or one per input "
                       f"[{batch}, *{shape}]", field=field)


# --- request fields ------------------------------------------------------------------------------------------------


# The options REST also takes, checked against the same types (service/engine/options.py): one definition of bounds.


def _samples(request: Any, settings: Settings) -> int:
    return checked(samples(settings.max_samples_per_request), request.n if request.HasField("n") else 1, "n")


def _temperature(request: Any) -> float:
    return checked(Temperature, request.temperature if request.HasField("temperature") else 1.0, "temperature")


def _seed(request: Any, absent: int | None = None) -> int:
    """The request's seed; absent: `absent`, or (None) a fresh one that the response echoes."""
    if not request.HasField("seed"):
        return secrets.randbits(32) if absent is None else absent
    return checked(Seed, request.seed, "seed")


OPTIONS = {"steps": ChainSteps, "bars": Bars, "top_k": TopK, "seconds": Seconds, "chunk_ms": ChunkMs, "k": K,
           "refine_steps": RefineSteps, "refine": Refine, "method": ScoreMethod, "anomaly_method": AnomalyMethod,
           "direction": Direction}


def _optional(request: Any, field: str, absent: Any = None) -> Any:
    """An optional field's value, checked as REST checks it (OPTIONS), or `absent` when it is not set."""
    if not request.HasField(field):
        return absent
    value = getattr(request, field)
    return checked(OPTIONS[field], value, field) if field in OPTIONS else value


def _labels(request: pb.ScoreRequest, batch: int) -> list[int | None] | None:
    if not request.labels:
        return None
    if len(request.labels) != batch:
        raise InvalidInput(f"labels: {len(request.labels)} labels for {batch} inputs", field="labels")
    for i, label in enumerate(request.labels):
        if label < -1:
            raise InvalidInput(f"labels[{i}]: {label} is not a class index (or -1 to marginalize)",
                               field=f"labels[{i}]")
    return [None if label == -1 else int(label) for label in request.labels]


def _length(request: Any, spec: dict, settings: Settings) -> int | None:
    """Values to generate: `length` (checked as REST checks it), or for audio `seconds` at the model's sample rate
    (absent: None)."""
    given = checked(length(settings.max_sequence_length), request.length, "length") if request.HasField("length") \
        else None
    return audio.length_of(_optional(request, "seconds"), given, spec, "seconds")


def _label(request: Any, spec: dict) -> int | None:
    """`label` (SampleRequest), or an audio model's voice given by name."""
    label = request.label if "label" in request.DESCRIPTOR.fields_by_name and request.HasField("label") else None
    return audio.voice_label(request.voice if request.HasField("voice") else None, label, spec, "voice")


def _generation(request: pb.SampleRequest, spec: dict, settings: Settings) -> dict:
    """The sequence-model knobs of a sample request (music: bars and a chord per bar), as engine keyword
    arguments (absent: None)."""
    prompt = request.prompt if request.HasField("prompt") else None
    if prompt is not None and spec.get("kind") == "text":
        prompt = text.encode(prompt, spec["vocabulary"], "prompt")  # other models' prompts are captions (the engine's)
    return {"length": _length(request, spec, settings), "top_k": _optional(request, "top_k"), **_length_field(request),
            "prompt": prompt, "bars": _optional(request, "bars"),
            "step_controls": {"chords": list(request.chords)} if request.chords else None}


def _length_field(request: Any) -> dict:
    """The engine names `seconds` in a refusal of the length when the request gave seconds."""
    return {"length_field": "seconds"} if request.HasField("seconds") else {}


def _sequences(request: Any, spec: dict, limit: int) -> list[np.ndarray] | None:
    """A text model's `texts` or an audio model's `wavs` -> B arrays of their own lengths; None for image models.
    A sequence model refuses the fields of image inputs (`inputs`, Complete's `mask`) rather than ignore them."""
    kind = spec.get("kind")
    decoders = {"texts": lambda value, field: text.encode(value, spec["vocabulary"], field),
                "wavs": lambda value, field: audio.from_wav(value, int(spec["sample_rate"]), field)}
    wanted = SEQUENCE_FIELDS.get(kind)
    for name in decoders:
        if name != wanted and getattr(request, name):
            raise InvalidInput(f"{name}: {kind} models do not take {name}", field=name)
    if wanted is None:
        return None
    if request.HasField("inputs"):
        raise InvalidInput(f"inputs: {kind} models take {wanted}, not inputs", field="inputs")
    check_no_mask(kind, "mask" in request.DESCRIPTOR.fields_by_name and request.HasField("mask"), "mask")
    values = getattr(request, wanted)
    if not 1 <= len(values) <= limit:
        raise InvalidInput(f"{wanted}: give 1..{limit} of them, got {len(values)}", field=wanted)
    for i, value in enumerate(values):
        if not value:
            raise InvalidInput(f"{wanted}[{i}]: empty", field=f"{wanted}[{i}]")
    return [decoders[wanted](value, f"{wanted}[{i}]") for i, value in enumerate(values)]


def _as_files(rows: np.ndarray, spec: dict) -> dict:
    """[n, T] values -> {"texts": n texts} for a text model, {"wavs": n WAV files} for an audio model, {"midis": n
    MIDI files} for a music model ([n, bars, S]), else {}."""
    if spec.get("kind") == "music":
        return {"midis": [midi.to_midi(row, spec) for row in rows]}
    if spec.get("kind") == "text":
        return {"texts": [text.decode(row, spec["vocabulary"]) for row in rows]}
    if spec.get("kind") == "audio":
        return {"wavs": [audio.to_wav(row, int(spec["sample_rate"])) for row in rows]}
    return {}


def _chunk_encoder(spec: dict, n: int) -> Callable[[np.ndarray], dict]:
    """A stream chunk [n, ...] -> its characters (text models), 16-bit PCM, sample i as channel i (audio models),
    or each sample's melody so far as a MIDI file (music models: a held note stays one note, and the last chunk's
    files are Sample's)."""
    if spec.get("kind") == "audio":
        return lambda values: {"pcm": audio.pcm16(values)}
    if spec.get("kind") == "music":
        melodies = midi.Melodies(spec, n)
        return lambda bars: {"midis": melodies.add(bars)}
    return lambda values: _as_files(values, spec)  # {"texts": ...} for text, {} for images


def _require(description: dict, capability: str, name: str) -> None:
    if capability not in description.get("capabilities", []):
        raise MissingCapability(f"model: model {name!r} has no {capability!r} capability; it has "
                                f"{sorted(description.get('capabilities', []))}", field="model")


def _struct(value: dict) -> dict:
    """JSON-safe copy (numpy scalars, paths -> plain values) for google.protobuf.Struct."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def model_info(d: dict) -> pb.ModelInfo:
    data = d.get("data", {})
    spec = pb.DataSpec(kind=data.get("kind", ""), shape=[int(s) for s in data.get("shape", [])],
                       classes=[str(c) for c in data.get("classes", [])])
    if data.get("levels") is not None:
        spec.levels = int(data["levels"])
    if data.get("sample_rate") is not None:
        spec.sample_rate = int(data["sample_rate"])
    spec.attributes.update(_struct(data))
    info = pb.ModelInfo(name=d["name"], version=str(d["version"]), family=d.get("family", ""),
                        description=d.get("description", ""), capabilities=sorted(d.get("capabilities", [])),
                        data=spec)
    info.metrics.update(_struct(d.get("metrics") or {}))
    info.batching.update(_struct(d.get("batching") or {}))
    return info


def score_result(r: dict) -> pb.ScoreResult:
    result = pb.ScoreResult(method=r.get("method", ""))
    for key, value in (r.get("anomaly") or {}).items():
        if value is not None and key in pb.Anomaly.DESCRIPTOR.fields_by_name:  # the REST answer's fields
            setattr(result.anomaly, key, value)
    for key in ("log_likelihood_nats", "bits_per_dim", "critic",  # a critic's score has no likelihood
                "k", "refine_steps", "stderr", "is_lower_bound", "free_energy"):  # bounds and estimates
        if r.get(key) is not None:
            setattr(result, key, r[key])
    return result


def _actions(request) -> np.ndarray | None:
    """A state-space model's actions (SampleRequest.actions, PredictRequest.actions), if given."""
    return to_array(request.actions, "actions") if request.HasField("actions") else None


def _controls(request) -> dict[str, float | list[float] | str] | None:
    """SampleRequest.controls: a name (a categorical control's class), one value as a number (its index), more as a
    list."""
    if not request.controls:
        return None
    for name, value in request.controls.items():
        if value.name and value.values:
            raise InvalidInput(f"controls.{name}: give a class name or values, not both", field=f"controls.{name}")
    return {name: value.name if value.name else value.values[0] if len(value.values) == 1 else list(value.values)
            for name, value in request.controls.items()}


async def steps_until_cancelled(stream: AsyncIterator[np.ndarray]) -> AsyncIterator[np.ndarray]:
    """Yield from the engine's step stream; a cancel never interrupts a step mid-thread.

    On cancellation the step in flight finishes (at most one step), then the
    stream is closed, so the engine starts no further step.
    """
    iterator = aiter(stream)
    try:
        while True:
            step = asyncio.ensure_future(anext(iterator))
            try:
                value = await asyncio.shield(step)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                await asyncio.wait([step])
                if not step.cancelled():
                    step.exception()  # retrieved: no "exception was never retrieved" warning
                raise
            yield value
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


# --- the servicer --------------------------------------------------------------------------------------------------


class GenserveServicer(pb_grpc.GenserveServicer):
    def __init__(self, engine: Any, settings: Settings):
        self.engine = engine
        self.settings = settings

    def _lookup(self, name: str, capability: str | None = None) -> tuple[dict, dict]:
        description, spec = self.engine.describe(name), self.engine.data_spec(name)
        if capability:
            _require(description, capability, name)
        return description, spec

    async def ListModels(self, request, context):
        async with engine_errors(context, "ListModels"):
            return pb.ListModelsResponse(models=[model_info(d) for d in self.engine.list_models()])

    async def GetModel(self, request, context):
        async with engine_errors(context, "GetModel"):
            return model_info(self.engine.describe(request.model))

    async def Sample(self, request, context):
        async with engine_errors(context, "Sample"):
            name = request.model
            description, spec = self._lookup(name, "sample")
            n, temperature, seed = _samples(request, self.settings), _temperature(request), _seed(request)
            if request.HasField("chunk_ms"):
                raise InvalidInput("chunk_ms: only SampleStream chunks audio by time", field="chunk_ms")
            x = await self.engine.sample(name, n, seed, temperature, _label(request, spec),
                                         steps=_optional(request, "steps"), controls=_controls(request),
                                         actions=_actions(request), **_generation(request, spec, self.settings))
            return pb.SampleResponse(model=name, version=str(description["version"]), seed=seed,
                                     samples=to_tensor(x, wire_dtype(spec)), **_as_files(x, spec))

    async def SampleStream(self, request, context):
        async with engine_errors(context, "SampleStream"):
            name = request.model
            description, spec = self._lookup(name, "sample")
            n, temperature, seed = _samples(request, self.settings), _temperature(request), _seed(request)
            dtype, version, kind = wire_dtype(spec), str(description["version"]), spec.get("kind")
            chunk_ms = _optional(request, "chunk_ms", 100)
            if request.HasField("chunk_ms") and kind != "audio":
                raise InvalidInput("chunk_ms: for audio models only", field="chunk_ms")
            check_stream_options("", request.HasField("steps"), bool(request.controls), request.HasField("actions"))
            chunk = max(1, int(spec["sample_rate"]) * chunk_ms // 1000) if kind == "audio" else None
            generation = _generation(request, spec, self.settings)
            stream = self.engine.sample_stream(name, n, seed, temperature, _label(request, spec), chunk=chunk,
                                               **generation)
            # the engine's plan: an image's rows, a music model's bars; 0 for text and audio (chunks of values)
            steps = self.engine.stream_steps(name, n, generation["bars"], generation["step_controls"]) or 0
            index, encode = 0, _chunk_encoder(spec, n)
            async for values in steps_until_cancelled(stream):  # [n, *step_shape], or [n, chunk] values
                music = {"chord": request.chords[index]} if index < len(request.chords) else {}
                yield pb.SampleChunk(step=index, steps=steps, seed=seed, values=to_tensor(values, dtype),
                                     model=name, version=version, **encode(values), **music)
                index += 1

    async def Score(self, request, context):
        async with engine_errors(context, "Score"):
            name = request.model
            description, spec = self._lookup(name, "score")
            x = _sequences(request, spec, self.settings.max_inputs_per_request)
            if x is None:
                x = data_batch(request.inputs, spec, self.settings.max_inputs_per_request, "inputs")
            with _sequence_fields(spec):
                results = await self.engine.score(name, x, _labels(request, len(x)),
                                                  method=_optional(request, "method"), k=_optional(request, "k"),
                                                  refine_steps=_optional(request, "refine_steps", 0),
                                                  seed=_seed(request, absent=0),
                                                  anomaly_method=_optional(request, "anomaly_method"),
                                                  refine=_optional(request, "refine", "gradient"))
            return pb.ScoreResponse(model=name, version=str(description["version"]),
                                    results=[score_result(r) for r in results])

    async def Complete(self, request, context):
        async with engine_errors(context, "Complete"):
            name = request.model
            description, spec = self._lookup(name, "complete")
            n, temperature, seed = _samples(request, self.settings), _temperature(request), _seed(request)
            prefixes = _sequences(request, spec, self.settings.max_inputs_per_request)
            if prefixes is not None:
                with _sequence_fields(spec):
                    out = await self.engine.complete(name, prefixes, None, n, seed, temperature,
                                                     _label(request, spec),
                                                     length=_length(request, spec, self.settings),
                                                     top_k=_optional(request, "top_k"),
                                                     steps=_optional(request, "steps"),
                                                     **_length_field(request))  # per input [n, T_b]
                files = [_as_files(rows, spec) for rows in out]
                key = SEQUENCE_FIELDS[spec["kind"]]
                return pb.CompleteResponse(model=name, version=str(description["version"]), seed=seed,
                                           **{key: [f for per_input in files for f in per_input[key]]})
            x = data_batch(request.inputs, spec, self.settings.max_inputs_per_request, "inputs")
            mask = mask_batch(request.mask, spec, len(x))
            out = await self.engine.complete(name, x, mask, n, seed, temperature,
                                             length=_length(request, spec, self.settings),
                                             top_k=_optional(request, "top_k"), steps=_optional(request, "steps"),
                                             **_length_field(request))  # [B, n, *shape]
            return pb.CompleteResponse(model=name, version=str(description["version"]), seed=seed,
                                       completions=to_tensor(out, wire_dtype(spec)))

    def _inputs(self, request: Any, spec: dict) -> np.ndarray:
        return data_batch(request.inputs, spec, self.settings.max_inputs_per_request, "inputs")

    async def Encode(self, request, context):
        async with engine_errors(context, "Encode"):
            name = request.model
            description, spec = self._lookup(name, "encode")
            seed = _seed(request, absent=0)
            actions = _actions(request)  # a state-space model's: its inputs are sequences of frames
            x = self._inputs(request, spec) if actions is None else to_array(request.inputs, "inputs")
            out = await self.engine.encode(name, x, refine_steps=_optional(request, "refine_steps", 0), seed=seed,
                                           refine=_optional(request, "refine", "gradient"), actions=actions)
            return pb.EncodeResponse(model=name, version=str(description["version"]), seed=seed,
                                     outputs={key: to_tensor(value, np.float32) for key, value in out.items()})

    async def Decode(self, request, context):
        async with engine_errors(context, "Decode"):
            name = request.model
            description, _ = self._lookup(name, "decode")
            z = to_array(request.z, "z")
            if z.dtype.kind != "f":
                raise InvalidInput(f"z.dtype: latents are floats, not {z.dtype.name}", field="z.dtype")
            if z.ndim and len(z) > self.settings.max_inputs_per_request:
                raise InvalidInput(f"z: give at most {self.settings.max_inputs_per_request} latents, got {len(z)}",
                                   field="z")
            images = await self.engine.decode(name, z)  # [B, *shape]
            check_finite_outputs({"images": images}, "z")
            return pb.DecodeResponse(model=name, version=str(description["version"]),
                                     images=to_tensor(images, np.float32))

    async def Reconstruct(self, request, context):
        async with engine_errors(context, "Reconstruct"):
            name = request.model
            description, spec = self._lookup(name, "encode")
            _require(description, "decode", name)
            seed = _seed(request, absent=0)
            images = await self.engine.reconstruct(name, self._inputs(request, spec),
                                                   refine_steps=_optional(request, "refine_steps", 0), seed=seed,
                                                   refine=_optional(request, "refine", "gradient"))
            return pb.ReconstructResponse(model=name, version=str(description["version"]), seed=seed,
                                          images=to_tensor(images, np.float32))

    async def Interpolate(self, request, context):
        async with engine_errors(context, "Interpolate"):
            name = request.model
            description, spec = self._lookup(name, "encode")
            _require(description, "decode", name)
            out = await self.engine.interpolate(name, self._inputs(request, spec),
                                                request.steps if request.HasField("steps") else 8)
            return pb.InterpolateResponse(model=name, version=str(description["version"]),
                                          z=to_tensor(out["z"], np.float32),
                                          images=to_tensor(out["images"], np.float32))

    async def Translate(self, request, context):
        async with engine_errors(context, "Translate"):
            name = request.model
            description, _ = self._lookup(name, "translate")
            direction = _optional(request, "direction")
            images = await self.engine.translate(name, self._inputs(request, self.engine.translate_input(name)),
                                                 direction)
            return pb.TranslateResponse(model=name, version=str(description["version"]),
                                        images=to_tensor(images, np.int64))

    async def Predict(self, request, context):
        async with engine_errors(context, "Predict"):
            name = request.model
            description, _ = self._lookup(name, "predict")
            out = await self.engine.predict(name, to_array(request.inputs, "inputs"), _actions(request))
            return pb.PredictResponse(model=name, version=str(description["version"]),
                                      states=to_tensor(out["states"], np.float32),
                                      frames=to_tensor(out["frames"], np.int64))

    async def PredictStream(self, request, context):
        async with engine_errors(context, "PredictStream"):
            name = request.model
            description, _ = self._lookup(name, "predict")
            stream = self.engine.predict_stream(name, to_array(request.inputs, "inputs"), _actions(request))
            async for chunk in steps_until_cancelled(stream):  # one predicted frame of every input
                yield pb.PredictChunk(model=name, version=str(description["version"]), step=chunk["step"],
                                      steps=chunk["steps"], states=to_tensor(chunk["states"], np.float32),
                                      frames=to_tensor(chunk["frames"], np.int64))


def add_genserve_servicer(server: Any, engine: Any, settings: Settings) -> str:
    """Register genserve.v1.Genserve on `server` (a grpc.aio.Server, or service.grpc.handlers.AroundEveryCall over
    one); returns its full service name."""
    pb_grpc.add_GenserveServicer_to_server(GenserveServicer(engine, settings), server)
    return SERVICE_NAME
