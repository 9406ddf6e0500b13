"""The genserve REST API: a thin adapter from HTTP to the engine.

Every model route does the same three things: decode the request (codecs),
call the engine, encode the answer. The engine is injected, so tests pass a
fake; it owns models, shapes, value ranges and capabilities, and raises
EngineError subclasses that errors.py maps to status codes.
"""

import json
import logging
import math
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import codecs, errors, frames, playground, repository, schemas, security, v2
from service.api.accept import wanted_file
from service.api.disconnect import CLIENT_CLOSED_REQUEST, ClientGone, unless_disconnected
from service.api.drain import Drain, DrainMiddleware
from service.api.metrics import ApiMetrics, MetricsMiddleware
from service.api.request_id import RequestIdApp
from service.api.responses import FastJSONResponse, StreamingResponse
from service.engine import audio, midi
from service.engine.errors import EngineError, InvalidInput, MissingCapability
from service.engine.validation import check_finite_outputs, check_stream_options
from service.settings import Settings

log = logging.getLogger("genserve.api")
VERSION = "0.1.0"
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorResponse, "description": description}
    for status, description in {
        400: "the model lacks the capability",
        401: "no valid API key (only with GENSERVE_API_KEYS_FILE set)",
        404: "unknown model",
        413: "body too large",
        415: "body not JSON",
        422: "invalid request",
        503: "overloaded or not ready",
    }.items()
}


def new_seed() -> int:
    """A fresh seed for a request that did not give one; the response echoes it."""
    return secrets.randbits(32)


# --- body size -----------------------------------------------------------------------------------------------------


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`: by Content-Length up front, else while reading (never reads past the limit)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, send: Send, size: str) -> None:
        message = f"body: {size} is over the limit of {self.max_bytes} bytes"
        await errors.protocol_error(scope["path"], 413, "payload_too_large", message, "body")(scope, _no_receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await errors.protocol_error(scope["path"], 400, "bad_request",
                                            "content-length: not an integer")(scope, receive, send)
                return
            if too_big:
                await self._refuse(scope, send, f"Content-Length {declared.decode('latin-1')}")
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away mid-body: nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, send, "the body read so far")
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# --- the fast path of the /v1 POST routes --------------------------------------------------------------------------


class RestFastPath:
    """A JSON POST to a /v1 model route (and /score) straight to its handler, past FastAPI's routing, dependency
    and response machinery: the body is validated by the route's own request model (pydantic, from the JSON
    bytes), and the handler answers with a Response of its own (FastJSONResponse). A request that is not plainly
    valid (not application/json, a validation error, a body cut short) goes on to FastAPI as it came, so every
    refusal is exactly FastAPI's. The route is matched as FastAPI would (scope route and path_params are set,
    so metrics and drains see its template), and the routes stay in the OpenAPI schema. Install it innermost
    (after the body limit and the V2 fast path)."""

    def __init__(self, app: ASGIApp, handlers: dict[str, tuple[type, Any]], routes: list) -> None:
        self.app = app
        by_path = {getattr(route, "path", None): route for route in routes}
        self.routes = []
        for path, (body_model, handler) in handlers.items():
            pattern = re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path)))
            self.routes.append((pattern, by_path[path], body_model, handler))

    def _match(self, scope: Scope) -> tuple | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path = scope["path"]
        for pattern, route, body_model, handler in self.routes:
            found = pattern.fullmatch(path)
            if found is not None:
                return found.groupdict(), route, body_model, handler
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self._match(scope)
        if matched is None or security.content_type(scope) != b"application/json":
            await self.app(scope, receive, send)
            return
        params, route, body_model, handler = matched
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away mid-body: nobody to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        try:
            body = body_model.model_validate_json(raw)
        except ValidationError:  # FastAPI says why, in its words
            await self.app(scope, _replay(raw, receive), send)
            return
        scope["route"], scope["path_params"] = route, params
        request = Request(scope, receive, send)
        try:
            response = await handler(body=body, request=request, **params)
        except ClientGone:
            response = Response(status_code=CLIENT_CLOSED_REQUEST)
        except EngineError as exc:
            response = await errors.engine_error(request, exc)
        except Exception as exc:
            response = await errors.unexpected_error(request, exc)
        await response(scope, receive, send)


# --- helpers -------------------------------------------------------------------------------------------------------

def _knows(engine: Any, name: str) -> bool:
    try:
        engine.describe(name)
    except EngineError:
        return False
    return True


def _require(description: dict, capability: str, name: str) -> None:
    if capability not in description.get("capabilities", []):
        raise MissingCapability(f"model: model {name!r} has no {capability!r} capability; it has "
                                f"{sorted(description.get('capabilities', []))}", field="model")


def _check_label(label: int | None, spec: dict, field: str) -> None:
    classes = spec.get("num_classes")
    if label is None or classes is None or label < classes:
        return
    if classes == 0:
        raise InvalidInput(f"{field}: this model takes no class label", field=field)
    raise InvalidInput(f"{field}: label {label} out of range, expected 0..{classes - 1}", field=field)


def _check_labels(labels: list[int | None] | None, batch: int, spec: dict) -> None:
    if labels is None:
        return
    if len(labels) != batch:
        raise InvalidInput(f"body.labels: {len(labels)} labels for {batch} inputs", field="body.labels")
    for i, label in enumerate(labels):
        _check_label(label, spec, f"body.labels[{i}]")


def _check_finite_results(results: list[dict]) -> None:
    """A score that is not finite (a log-likelihood of -inf) is refused naming the input: JSON has no such number,
    and orjson would write null."""
    for i, result in enumerate(results):
        for key, value in result.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidInput(f"body.inputs[{i}]: its {key} is not a finite number ({value})",
                                   field=f"body.inputs[{i}]")


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def _events(first: np.ndarray, stream: AsyncIterator[np.ndarray], spec: dict, fmt: str,
                  done: dict) -> AsyncIterator[bytes]:
    """Server-sent events: `chunk` {"step", "values" or "text": one entry per sample}, then `done`
    (or `error` {"error": ...} if generation fails midway)."""
    key = "text" if fmt == "text" else "values"
    step, values, encode = 0, first, codecs.stream_encoder(spec, fmt, len(first))
    try:
        while values is not None:
            yield _event("chunk", {"step": step, key: encode(values)})
            step += 1
            values = await anext(stream, None)
    except EngineError as exc:
        yield _event("error", errors.error_body(exc.code, exc.detail, exc.field))
        return
    finally:
        await stream.aclose()  # a client that left stops generation at the next step
    yield _event("done", {**done, "steps": step})


def _generation(body: Any, spec: dict) -> dict:
    """The sequence-model knobs of a sample request (music: bars and a chord per bar), as engine keyword arguments."""
    return {"length": audio.length_of(body.seconds, body.length, spec, "body.seconds"), "top_k": body.top_k,
            "prompt": codecs.decode_prompt(body.prompt, spec), **_length_field(body),
            "bars": body.bars, "step_controls": None if body.chords is None else {"chords": body.chords}}


def _length_field(body: Any) -> dict:
    """The engine names `body.seconds` in a refusal of the length when the request gave seconds."""
    return {} if body.seconds is None else {"length_field": "body.seconds"}


def _wants_wav_file(request: Request, spec: dict, n: int) -> bool:
    """An audio request with `Accept: audio/wav` (preferred to JSON) gets the WAV file itself (one sample)."""
    if spec.get("kind") != "audio" or wanted_file(request.headers.get("accept", ""), ("audio/wav",)) is None:
        return False
    if n != 1:
        raise InvalidInput("body.n: a WAV file answer holds one sample; ask for JSON for more", field="body.n")
    return True


def _wants_music_file(request: Request, spec: dict, n: int) -> str | None:
    """A music request with `Accept: audio/midi` (or `image/png`), preferred to JSON, gets the MIDI file (or the
    piano roll) itself (one sample) instead of JSON: that media type, else None."""
    wanted = wanted_file(request.headers.get("accept", ""), ("audio/midi", "image/png"))
    if spec.get("kind") != "music" or wanted is None:
        return None
    if n != 1:
        raise InvalidInput(f"body.n: a {wanted} answer holds one sample; ask for JSON for more", field="body.n")
    return wanted


async def _wav_stream(header: bytes, first: np.ndarray, stream: AsyncIterator[np.ndarray]) -> AsyncIterator[bytes]:
    """A WAV file sent as it is generated: the header (which, like the response's Content-Length, declares the
    whole file), then 16-bit PCM, sample i as channel i. A stream cut short (the deadline, a lost worker) ends
    the connection before the declared length: that is how a client tells it from success."""
    try:
        yield header
        yield audio.pcm16(first)
        async for values in stream:
            yield audio.pcm16(values)
    except EngineError as exc:
        log.warning("audio stream cut short (%s): %s", exc.code, exc.detail)
        raise
    finally:
        await stream.aclose()  # a client that left stops generation at the next step


# --- routes --------------------------------------------------------------------------------------------------------


def _answer_head(router: APIRouter, path: str, endpoint: Any) -> None:
    """HEAD on `path` answered as GET is (the server sends no body), out of the OpenAPI schema: a route of both
    methods would list them under one operationId."""
    router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)


def _model_routes(engine: Any, settings: Settings) -> APIRouter:
    requests = schemas.request_models(settings)
    SampleRequest, ScoreRequest = requests.sample, requests.score
    NamedScoreRequest, CompleteRequest = requests.score_named, requests.complete
    EncodeRequest, ReconstructRequest = requests.encode, requests.reconstruct
    DecodeRequest, InterpolateRequest = requests.decode, requests.interpolate
    TranslateRequest, PredictRequest = requests.translate, requests.predict
    router = APIRouter(responses=_ERRORS)
    router.genserve_fast = {}  # route template -> (request model, handler) for RestFastPath

    def fast(path: str, body_model: type) -> Any:
        """Also serve this route on RestFastPath: the handler answers with a Response of its own."""
        def register(handler: Any) -> Any:
            router.genserve_fast[path] = (body_model, handler)
            return handler
        return register

    def lookup(request: Request, name: str) -> tuple[dict, dict]:
        description, spec = engine.describe(name), engine.data_spec(name)
        request.state.model = name  # metrics label, set only for a model the engine knows
        return description, spec

    @router.get("/v1/models", response_model=schemas.ModelList, tags=["models"])
    async def list_models() -> dict:
        return {"models": engine.list_models(), "unavailable": engine.unavailable_models()}

    _answer_head(router, "/v1/models", list_models)

    @router.get("/v1/models/{name}", response_model=schemas.ModelInfo, tags=["models"])
    async def describe(name: str, request: Request) -> dict:
        return lookup(request, name)[0]

    @router.post("/v1/models/{name}/sample", response_model=schemas.SampleResponse, tags=["inference"])
    @fast("/v1/models/{name}/sample", SampleRequest)
    async def sample(name: str, body: SampleRequest, request: Request) -> dict:
        description, spec = lookup(request, name)
        _require(description, "sample", name)
        _check_label(body.label, spec, "body.label")
        label = audio.voice_label(body.voice, body.label, spec, "body.voice")
        fmt = codecs.output_format(body.format, spec)
        if body.chunk_ms is not None:
            raise InvalidInput("body.chunk_ms: only /sample/stream chunks audio by time", field="body.chunk_ms")
        wav_file, music_file = _wants_wav_file(request, spec, body.n), _wants_music_file(request, spec, body.n)
        seed = new_seed() if body.seed is None else body.seed
        x = await unless_disconnected(request, engine.sample(name, body.n, seed, body.temperature, label,
                                                             steps=body.steps, controls=body.controls,
                                                             actions=body.actions, **_generation(body, spec)))
        if wav_file:
            return Response(audio.to_wav(x[0], int(spec["sample_rate"])), media_type="audio/wav",
                            headers={"genserve-seed": str(seed)})
        if music_file:
            body_bytes = midi.to_midi(x[0], spec) if music_file == "audio/midi" else midi.to_pianoroll_png(x[0], spec)
            return Response(body_bytes, media_type=music_file, headers={"genserve-seed": str(seed)})
        samples = codecs.encode_samples(x, spec, fmt) if body.actions is None else \
            frames.encode_sequences(x, spec, fmt)  # roll-outs of a state-space model: [n, S + 1, *shape]
        return FastJSONResponse({"model": name, "version": description["version"], "seed": seed, "samples": samples})

    @router.post("/v1/models/{name}/sample/stream", tags=["inference"], response_class=StreamingResponse,
                 responses={200: {"content": {"text/event-stream": {}, "audio/wav": {}},
                                  "description": "server-sent events (`chunk` per step, then `done`), or for "
                                                 "audio models a WAV file sent as it is generated"}})
    async def sample_stream(name: str, body: SampleRequest, request: Request) -> StreamingResponse:
        """Sample, streamed while it is generated: server-sent events (characters, image rows), or for an audio
        model a WAV file in chunks of chunk_ms (sample i as channel i)."""
        description, spec = lookup(request, name)
        _require(description, "sample", name)
        _check_label(body.label, spec, "body.label")
        label = audio.voice_label(body.voice, body.label, spec, "body.voice")
        fmt = codecs.output_format(body.format, spec)
        if fmt == "png":
            raise InvalidInput("body.format: a stream sends rows as 'array', not 'png'", field="body.format")
        is_audio = spec.get("kind") == "audio"
        check_stream_options("body.", body.steps is not None, bool(body.controls), body.actions is not None)
        if body.chunk_ms is not None and not is_audio:
            raise InvalidInput("body.chunk_ms: only audio streams are chunked by time", field="body.chunk_ms")
        chunk = max(1, int(spec["sample_rate"]) * (body.chunk_ms or 100) // 1000) if is_audio else None
        seed = new_seed() if body.seed is None else body.seed
        generation = _generation(body, spec)
        stream = engine.sample_stream(name, body.n, seed, body.temperature, label, chunk=chunk, **generation)
        first = await unless_disconnected(request, anext(stream))  # errors before the first chunk stay HTTP errors
        if is_audio and fmt == "wav":
            frames = engine.stream_values(name, generation["length"], generation["prompt"])
            header = audio.wav_header(body.n, int(spec["sample_rate"]), frames)
            size = len(header) + 2 * body.n * frames  # 16-bit PCM
            return StreamingResponse(_wav_stream(header, first, stream), media_type="audio/wav",
                                     headers={"genserve-seed": str(seed), "content-length": str(size)})
        done = {"model": name, "version": description["version"], "seed": seed}
        return StreamingResponse(_events(first, stream, spec, fmt, done), media_type="text/event-stream")

    async def score(name: str, body: Any, request: Request) -> dict:
        description, spec = lookup(request, name)
        _require(description, "score", name)
        x = codecs.decode_inputs(body.inputs, spec)  # [B, *shape]
        _check_labels(body.labels, len(x), spec)
        results = await unless_disconnected(request, engine.score(
            name, x, body.labels, method=body.method, k=body.k, refine_steps=body.refine_steps, seed=body.seed,
            anomaly_method=body.anomaly_method, refine=body.refine))
        _check_finite_results(results)
        return FastJSONResponse({"model": name, "version": description["version"], "results": results})

    # results carry only the fields the engine gives (k, stderr, ... for bounds; free_energy for undirected models)
    @router.post("/v1/models/{name}/score", response_model=schemas.ScoreResponse, response_model_exclude_unset=True,
                 tags=["inference"])
    @fast("/v1/models/{name}/score", ScoreRequest)
    async def score_model(name: str, body: ScoreRequest, request: Request) -> dict:
        return await score(name, body, request)

    @router.post("/score", response_model=schemas.ScoreResponse, response_model_exclude_unset=True,
                 tags=["inference"])
    @fast("/score", NamedScoreRequest)
    async def score_named(body: NamedScoreRequest, request: Request) -> dict:
        return await score(body.model, body, request)

    @router.post("/v1/models/{name}/complete", response_model=schemas.CompleteResponse, tags=["inference"])
    @fast("/v1/models/{name}/complete", CompleteRequest)
    async def complete(name: str, body: CompleteRequest, request: Request) -> dict:
        description, spec = lookup(request, name)
        _require(description, "complete", name)
        x = codecs.decode_inputs(body.inputs, spec)  # [B, *shape], or B texts' ids
        mask = codecs.decode_mask(body.mask, spec, len(x))  # [B, *shape], 1 = observed; None for text
        fmt = codecs.output_format(body.format, spec)
        seed = new_seed() if body.seed is None else body.seed
        label = audio.voice_label(body.voice, None, spec, "body.voice")
        length = audio.length_of(body.seconds, body.length, spec, "body.seconds")
        out = await unless_disconnected(request, engine.complete(name, x, mask, body.n, seed, body.temperature, label,
                                                                 length=length, top_k=body.top_k, steps=body.steps,
                                                                 **_length_field(body)))
        completions = [codecs.encode_samples(per_input, spec, fmt) for per_input in out]
        return FastJSONResponse({"model": name, "version": description["version"], "seed": seed,
                                 "completions": completions})

    # --- latent-variable models (docs/latent-variable-models.md) ---

    @router.post("/v1/models/{name}/encode", response_model=schemas.EncodeResponse, tags=["latent"])
    @fast("/v1/models/{name}/encode", EncodeRequest)
    async def encode(name: str, body: EncodeRequest, request: Request) -> dict:
        """q(z given x): the posterior's mean and std per input, [B, D] each."""
        description, spec = lookup(request, name)
        _require(description, "encode", name)
        x = codecs.decode_inputs(body.inputs, spec) if body.actions is None else \
            frames.decode_sequences(body.inputs, spec)  # a state-space model's frames and the actions between them
        out = await unless_disconnected(request, engine.encode(name, x, refine_steps=body.refine_steps, seed=body.seed,
                                                               refine=body.refine, actions=body.actions))
        answer = {key: np.asarray(value) for key, value in out.items()}  # mean and std; a state-space model's: mean
        check_finite_outputs(answer, "body.inputs")
        return FastJSONResponse({"model": name, "version": description["version"], **answer})

    @router.post("/v1/models/{name}/decode", response_model=schemas.ImagesResponse, tags=["latent"])
    @fast("/v1/models/{name}/decode", DecodeRequest)
    async def decode(name: str, body: DecodeRequest, request: Request) -> dict:
        """Latents [B, D] -> the expected images E[x given z]."""
        description, spec = lookup(request, name)
        _require(description, "decode", name)
        fmt = codecs.output_format(body.format, spec)
        images = await unless_disconnected(request, engine.decode(name, codecs.decode_latents(body.z)))
        return FastJSONResponse({"model": name, "version": description["version"],
                                 "images": codecs.encode_images(images, spec, fmt, array=True)})

    @router.post("/v1/models/{name}/reconstruct", response_model=schemas.ImagesResponse, tags=["latent"])
    @fast("/v1/models/{name}/reconstruct", ReconstructRequest)
    async def reconstruct(name: str, body: ReconstructRequest, request: Request) -> dict:
        """decode(encode(x).mean) per input."""
        description, spec = lookup(request, name)
        for capability in ("encode", "decode"):
            _require(description, capability, name)
        x = codecs.decode_inputs(body.inputs, spec)
        fmt = codecs.output_format(body.format, spec)
        images = await unless_disconnected(request, engine.reconstruct(name, x, refine_steps=body.refine_steps,
                                                                           seed=body.seed, refine=body.refine))
        return FastJSONResponse({"model": name, "version": description["version"],
                                 "images": codecs.encode_images(images, spec, fmt, field="body.inputs", array=True)})

    @router.post("/v1/models/{name}/interpolate", response_model=schemas.InterpolateResponse, tags=["latent"])
    @fast("/v1/models/{name}/interpolate", InterpolateRequest)
    async def interpolate(name: str, body: InterpolateRequest, request: Request) -> dict:
        """`steps` latents evenly spaced between the two inputs' posterior means, and their decodings."""
        description, spec = lookup(request, name)
        for capability in ("encode", "decode"):
            _require(description, capability, name)
        x = codecs.decode_inputs(body.inputs, spec)
        fmt = codecs.output_format(body.format, spec)
        out = await unless_disconnected(request, engine.interpolate(name, x, body.steps))
        images = codecs.encode_images(out["images"], spec, fmt, field="body.inputs", array=True)
        z = np.asarray(out["z"])
        check_finite_outputs({"z": z}, "body.inputs")
        return FastJSONResponse({"model": name, "version": description["version"], "z": z, "images": images})

    @router.post("/v1/models/{name}/translate", response_model=schemas.TranslateResponse, tags=["inference"])
    @fast("/v1/models/{name}/translate", TranslateRequest)
    async def translate(name: str, body: TranslateRequest, request: Request) -> dict:
        """Images of the capability's input shape and levels -> images of the model's data (pix2pix: edge maps
        -> digits; cyclegan: either way between two digit domains, by `direction`), deterministic."""
        description, spec = lookup(request, name)
        _require(description, "translate", name)
        x = codecs.decode_inputs(body.inputs, engine.translate_input(name))  # [B, *input shape]
        fmt = codecs.output_format(body.format, spec)
        images = await unless_disconnected(request, engine.translate(name, x, body.direction))  # int64 levels
        return FastJSONResponse({"model": name, "version": description["version"],
                                 "images": codecs.encode_levels(images, spec, fmt)})

    @router.post("/v1/models/{name}/predict", response_model=schemas.PredictResponse, tags=["inference"],
                 responses={200: {"content": {"image/png": {}, "image/gif": {}},
                                  "description": "JSON, or with Accept: image/png or image/gif the animation of "
                                                 "one input's predicted frames"}})
    @fast("/v1/models/{name}/predict", PredictRequest)
    async def predict(name: str, body: PredictRequest, request: Request) -> Any:
        """A state-space model's filtered states of the observed frames, rolled forward under the further actions,
        and the predicted frames (docs/latent-variable-models.md, "Predict")."""
        description, spec = lookup(request, name)
        _require(description, "predict", name)
        x = frames.decode_sequences(body.inputs, spec)  # [B, T, *shape]
        fmt, file = frames.output_format(body.format), frames.wanted_file(request, len(x))
        out = await unless_disconnected(request, engine.predict(name, x, body.actions))
        if file is not None:
            return Response(frames.animation(out["frames"][0], int(spec["levels"]), file), media_type=f"image/{file}")
        check_finite_outputs({"states": out["states"]}, "body.inputs")
        return FastJSONResponse({"model": name, "version": description["version"], "states": out["states"],
                                 "frames": frames.encode_sequences(out["frames"], spec, fmt)})

    return router


def _health_routes(engine: Any, metrics: ApiMetrics) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=schemas.Status)
    async def healthz() -> dict:
        return {"status": "ok"}

    @router.get("/readyz", response_model=schemas.Status, responses={503: {"model": schemas.ErrorResponse}})
    async def readyz() -> Any:
        if engine.ready():
            return {"status": "ready"}
        return errors.error_response(503, "not_ready", "engine: models are not loaded yet")

    @router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        body, content_type = metrics.render(getattr(getattr(engine, "metrics", None), "registry", None))
        return Response(body, media_type=content_type)

    for path, probe in (("/healthz", healthz), ("/readyz", readyz), ("/metrics", prometheus)):  # probes' HEAD
        _answer_head(router, path, probe)

    return router


# --- the app -------------------------------------------------------------------------------------------------------


def create_app(engine: Any, settings: Settings | None = None) -> FastAPI:
    """The REST app over `engine`. Each app has its own metrics registry."""
    settings = settings or Settings()
    metrics = ApiMetrics()
    app = RequestIdApp(  # X-Request-ID on every response (service.api.request_id)
        telemetry={"tracing": settings.opentelemetry, "metrics": settings.opentelemetry,
                   "logs": settings.opentelemetry},
        title="genserve",
        version=VERSION,
        description="Deep generative models: sampling, likelihoods (exact or bounds) with anomaly flags, inpainting, "
                    "latent encoding and decoding.",
    )
    app.state.engine, app.state.settings, app.state.metrics = engine, settings, metrics
    app.state.drain = Drain()  # service.main begins it on SIGTERM
    errors.install(app)
    app.add_exception_handler(ClientGone, lambda _request, _exc: Response(status_code=CLIENT_CLOSED_REQUEST))
    app.include_router(_health_routes(engine, metrics))
    model_routes = _model_routes(engine, settings)
    app.include_router(model_routes)
    v2_routes = v2.router(engine)  # Open Inference Protocol (KServe V2)
    app.include_router(v2_routes)
    app.add_middleware(RestFastPath, handlers=model_routes.genserve_fast, routes=model_routes.routes)  # innermost
    app.add_middleware(v2.InferFastPath, infer=v2_routes.genserve_infer, routes=v2_routes.routes)
    repository.install(app, engine, settings)  # load/unload (admin), /v1/models/{name}/versions/{v}/...
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(DrainMiddleware, drain=app.state.drain)
    security.install(app, settings)  # keys (401), JSON-only bodies (415), CORS
    playground.install(app)  # the page at /playground/, public (its API calls carry the key)
    app.add_middleware(MetricsMiddleware, metrics=metrics, root=app, known_model=lambda name: _knows(engine, name))
    return app
