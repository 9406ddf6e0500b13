"""genserve gRPC API over a real engine and the tiny PixelCNN store, through a real grpc.aio client.

Each test runs its own event loop (asyncio.run) with the server in-process on a
free port of 127.0.0.1. Every wait is bounded.
"""

import asyncio
import logging
import sys
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.engine.engine import Engine
from service.engine.errors import EngineError, InvalidInput, MissingCapability, NotReady, Overloaded, UnknownModel
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import steps_until_cancelled, to_array, to_tensor
from service.grpc.status import abort_with, status_code
from service.settings import Settings
from service.store import ModelStore

MODEL = "pixelcnn"
TIMEOUT_S = 60.0  # per test: the whole scenario
RPC_S = 20.0  # per call


@pytest.fixture(scope="module")
def settings(tiny_store) -> Settings:
    return Settings(host="127.0.0.1", models=tiny_store, intra_op_threads=1)


@pytest.fixture(scope="module")
def engine(tiny_store, settings) -> Engine:
    return Engine(ModelStore(tiny_store), settings)


class Wrapped:
    """The real engine, with a slowed and observed sample_stream, a readiness switch and injectable errors."""

    def __init__(self, engine: Engine, step_delay_s: float = 0.0):
        self._engine = engine
        self.step_delay_s = step_delay_s
        self.is_ready = True
        self.produced = 0
        self.closed = False
        self.raises: EngineError | None = None

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def ready(self) -> bool:
        return self.is_ready

    async def sample(self, *args, **kwargs):
        if self.raises:
            raise self.raises
        return await self._engine.sample(*args, **kwargs)

    async def sample_stream(self, *args, **kwargs) -> AsyncIterator[np.ndarray]:
        stream = self._engine.sample_stream(*args, **kwargs)
        try:
            async for values in stream:
                self.produced += 1
                yield values
                await asyncio.sleep(self.step_delay_s)
        finally:
            await stream.aclose()
            self.closed = True


@asynccontextmanager
async def serving(engine, settings: Settings) -> AsyncIterator[grpc.aio.Channel]:
    server = build_grpc_server(engine, settings, 0)  # 0: a free port, read back from the server
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
    try:
        await asyncio.wait_for(channel.channel_ready(), RPC_S)
        yield channel
    finally:
        await channel.close()
        await server.stop(grace=None)


def scenario(engine, settings: Settings, body: Callable[[grpc.aio.Channel], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving(engine, settings) as channel:
            await body(channel)

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


def stub(channel: grpc.aio.Channel) -> pb_grpc.GenserveStub:
    return pb_grpc.GenserveStub(channel)


def binary_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=(count, 1, 28, 28), dtype=np.int64)


async def rpc_error(call: Awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


# --- models --------------------------------------------------------------------------------------------------------


def test_list_and_get_model(engine, settings):
    async def body(channel):
        listed = await stub(channel).ListModels(pb.ListModelsRequest(), timeout=RPC_S)
        assert [m.name for m in listed.models] == [MODEL]
        info = await stub(channel).GetModel(pb.GetModelRequest(model=MODEL), timeout=RPC_S)
        want = engine.describe(MODEL)
        assert info.name == MODEL and info.family == want["family"] and info.version == str(want["version"])
        assert list(info.capabilities) == sorted(want["capabilities"])
        assert {"sample", "score", "complete"} <= set(info.capabilities)
        assert list(info.data.shape) == [1, 28, 28] and info.data.levels == 2 and info.data.kind == "image"
        assert list(info.data.classes) == want["data"]["classes"]
        assert json_format.MessageToDict(info.metrics) == pytest.approx(want["metrics"])
        assert info == listed.models[0]

    scenario(engine, settings, body)


# --- sampling ------------------------------------------------------------------------------------------------------


def test_sample_same_seed_same_tensor_equal_to_engine(engine, settings):
    async def body(channel):
        request = pb.SampleRequest(model=MODEL, n=3, seed=7, temperature=1.0)
        first = await stub(channel).Sample(request, timeout=RPC_S)
        second = await stub(channel).Sample(request, timeout=RPC_S)
        assert first.samples == second.samples and first.seed == 7 and first.model == MODEL
        assert first.samples.dtype == "uint8" and list(first.samples.shape) == [3, 1, 28, 28]
        want = await engine.sample(MODEL, 3, 7, 1.0, None)  # what REST returns for {"n": 3, "seed": 7}
        np.testing.assert_array_equal(to_array(first.samples, "samples"), want)
        labelled = await stub(channel).Sample(pb.SampleRequest(model=MODEL, n=2, seed=7, label=3), timeout=RPC_S)
        np.testing.assert_array_equal(to_array(labelled.samples, "samples"), await engine.sample(MODEL, 2, 7, 1.0, 3))
        drawn = await stub(channel).Sample(pb.SampleRequest(model=MODEL), timeout=RPC_S)  # defaults: n=1, seed drawn
        np.testing.assert_array_equal(to_array(drawn.samples, "samples"),
                                      await engine.sample(MODEL, 1, drawn.seed, 1.0, None))

    scenario(engine, settings, body)


def test_sample_stream_rows_in_order_equal_sample(engine, settings):
    async def body(channel):
        request = pb.SampleRequest(model=MODEL, n=2, seed=11)
        chunks = []
        async for chunk in stub(channel).SampleStream(request, timeout=RPC_S):
            chunks.append(chunk)
            assert len(chunks) <= 28
        assert [c.step for c in chunks] == list(range(28))
        assert {c.steps for c in chunks} == {28} and {c.seed for c in chunks} == {11}
        rows = [to_array(c.values, "values") for c in chunks]
        assert all(r.shape == (2, 28) for r in rows)
        streamed = np.stack(rows, axis=1).reshape(2, 1, 28, 28)
        sampled = await stub(channel).Sample(request, timeout=RPC_S)
        np.testing.assert_array_equal(streamed, to_array(sampled.samples, "samples"))

    scenario(engine, settings, body)


def test_cancelled_stream_stops_generating_and_server_stays_healthy(engine, settings):
    wrapped = Wrapped(engine, step_delay_s=0.1)  # 28 rows would take >= 2.8 s

    async def body(channel):
        call = stub(channel).SampleStream(pb.SampleRequest(model=MODEL, n=2, seed=5), timeout=RPC_S)
        for step in range(2):
            chunk = await asyncio.wait_for(call.read(), RPC_S)
            assert chunk.step == step
        call.cancel()
        assert await until(lambda: wrapped.closed, 5.0), "the engine stream was not closed after the cancel"
        assert wrapped.produced <= 4, f"{wrapped.produced} steps ran after a cancel at step 2"
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=RPC_S)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        after = await stub(channel).Sample(pb.SampleRequest(model=MODEL, n=1, seed=5), timeout=RPC_S)
        assert list(after.samples.shape) == [1, 1, 28, 28]

    scenario(wrapped, settings, body)


def test_stream_deadline_stops_generating(engine, settings):
    wrapped = Wrapped(engine, step_delay_s=0.1)

    async def body(channel):
        call = stub(channel).SampleStream(pb.SampleRequest(model=MODEL, n=1, seed=5), timeout=0.5)
        received = 0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                received += 1
                assert received < 28
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await until(lambda: wrapped.closed, 5.0)
        assert wrapped.produced < 28

    scenario(wrapped, settings, body)


def _slow_steps(count: int, step_s: float, log: list) -> AsyncIterator[int]:
    """The engine's pattern: a sync generator advanced in a thread, closed when the consumer stops."""

    def steps():
        for i in range(count):
            time.sleep(step_s)
            log.append(i)
            yield i

    async def run_steps():
        generator = steps()
        try:
            while (value := await asyncio.to_thread(next, generator, None)) is not None:
                yield value
        finally:
            generator.close()  # ValueError "generator already executing" if cancelled mid-step
            log.append("closed")

    return run_steps()


def test_cancel_mid_step_waits_for_the_step_then_closes_the_stream():
    log: list = []

    async def main():
        async def consume():
            async for _ in steps_until_cancelled(_slow_steps(10, 0.2, log)):
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)  # inside step 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):  # not ValueError: the step was never interrupted
            await asyncio.wait_for(task, 5.0)

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert log == [0, 1, "closed"]


def test_unary_deadline_mid_step_is_a_quiet_cancel(engine, settings, caplog):
    wrapped = Wrapped(engine)
    log: list = []

    async def racy_sample(*_args, **_kwargs):  # like Engine.sample: collects a stream that a cancel interrupts
        return np.stack([v async for v in _slow_steps(10, 0.2, log)])

    wrapped.sample = racy_sample

    async def body(channel):
        error = await rpc_error(stub(channel).Sample(pb.SampleRequest(model=MODEL), timeout=0.3))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(0.3)  # the server-side handler has unwound: its step ended

    with caplog.at_level(logging.ERROR, logger="genserve.grpc"):
        scenario(wrapped, settings, body)
    assert not [r for r in caplog.records if r.name == "genserve.grpc"], "a cancel was logged as an error"


# --- scoring and completion ----------------------------------------------------------------------------------------


def test_score_equals_engine(engine, settings):
    x = binary_images(3)

    async def body(channel):
        # [B, H, W] uint8 is accepted for data shape [1, H, W]
        inputs = to_tensor(x.reshape(3, 28, 28), np.uint8)
        got = await stub(channel).Score(pb.ScoreRequest(model=MODEL, inputs=inputs), timeout=RPC_S)
        want = await engine.score(MODEL, x)
        assert len(got.results) == 3
        for g, w in zip(got.results, want, strict=True):
            assert g.log_likelihood_nats == pytest.approx(w["log_likelihood_nats"], rel=1e-9)
            assert g.bits_per_dim == pytest.approx(w["bits_per_dim"], rel=1e-9)
            assert g.method == w["method"] == "exact"
            assert g.anomaly.is_anomaly == w["anomaly"]["is_anomaly"]
            assert g.anomaly.percentile == pytest.approx(w["anomaly"]["percentile"])
        labelled = await stub(channel).Score(pb.ScoreRequest(model=MODEL, inputs=to_tensor(x), labels=[-1, 2, 0]),
                                             timeout=RPC_S)
        want = await engine.score(MODEL, x, [None, 2, 0])
        assert [r.log_likelihood_nats for r in labelled.results] == pytest.approx(
            [w["log_likelihood_nats"] for w in want], rel=1e-9)

    scenario(engine, settings, body)


def test_complete_keeps_observed_pixels(engine, settings):
    x = binary_images(2, seed=1)
    mask = np.zeros((1, 28, 28), np.int64)
    mask[:, :14] = 1  # top half observed

    async def body(channel):
        request = pb.CompleteRequest(model=MODEL, inputs=to_tensor(x), mask=to_tensor(mask, np.uint8), n=3, seed=9)
        got = await stub(channel).Complete(request, timeout=RPC_S)
        out = to_array(got.completions, "completions")
        assert out.shape == (2, 3, 1, 28, 28) and got.seed == 9
        np.testing.assert_array_equal(out[:, :, :, :14], np.broadcast_to(x[:, None, :, :14], (2, 3, 1, 14, 28)))
        np.testing.assert_array_equal(out, await engine.complete(MODEL, x, mask, 3, 9, 1.0))

    scenario(engine, settings, body)


# --- errors --------------------------------------------------------------------------------------------------------


def _trailing(error: grpc.aio.AioRpcError) -> dict:
    return dict(error.trailing_metadata() or ())


def test_errors_map_to_status_codes_naming_the_field(engine, settings):
    async def body(channel):
        s = stub(channel)
        for call in (s.GetModel(pb.GetModelRequest(model="nope"), timeout=RPC_S),
                     s.Sample(pb.SampleRequest(model="nope"), timeout=RPC_S),
                     s.Score(pb.ScoreRequest(model="nope", inputs=to_tensor(binary_images(1))), timeout=RPC_S)):
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.NOT_FOUND and "nope" in error.details()
        error = await rpc_error(s.Sample(pb.SampleRequest(model=MODEL, n=settings.max_samples_per_request + 1),
                                         timeout=RPC_S))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("n:")
        assert _trailing(error)["genserve-error-field"] == "n"
        for bad in (pb.SampleRequest(model=MODEL, n=0), pb.SampleRequest(model=MODEL, temperature=0.0),
                    pb.SampleRequest(model=MODEL, temperature=10.5), pb.SampleRequest(model=MODEL, label=99)):
            error = await rpc_error(s.Sample(bad, timeout=RPC_S))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        error = await rpc_error(s.SampleStream(pb.SampleRequest(model=MODEL, n=1000), timeout=RPC_S).read())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and _trailing(error)["genserve-error-field"] == "n"
        x = binary_images(2)
        bad_inputs = {
            "inputs.data": pb.Tensor(dtype="int64", shape=[2, 1, 28, 28], data=b"\0" * 10),
            "inputs.dtype": to_tensor(x.astype(np.float32)),
            "inputs": to_tensor(x[:, :, :27]),
        }
        for field, inputs in bad_inputs.items():
            error = await rpc_error(s.Score(pb.ScoreRequest(model=MODEL, inputs=inputs), timeout=RPC_S))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(field), field
        error = await rpc_error(s.Score(pb.ScoreRequest(model=MODEL, inputs=to_tensor(x * 2)), timeout=RPC_S))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("inputs[")
        error = await rpc_error(s.Score(pb.ScoreRequest(model=MODEL, inputs=to_tensor(x), labels=[1]), timeout=RPC_S))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and _trailing(error)["genserve-error-field"] == "labels"
        # PixelCNN has no encode/decode capability: the REST analogue is 400 missing_capability
        error = await rpc_error(s.Encode(pb.EncodeRequest(model=MODEL, inputs=to_tensor(x)), timeout=RPC_S))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _trailing(error)["genserve-error-code"] == "missing_capability"
        for call in (s.Decode(pb.DecodeRequest(model=MODEL), timeout=RPC_S),
                     s.Reconstruct(pb.ReconstructRequest(model=MODEL, inputs=to_tensor(x)), timeout=RPC_S),
                     s.Interpolate(pb.InterpolateRequest(model=MODEL, inputs=to_tensor(x)), timeout=RPC_S)):
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        # nor a Markov chain, nor an importance-sampled score
        for call in (s.Sample(pb.SampleRequest(model=MODEL, steps=3), timeout=RPC_S),
                     s.SampleStream(pb.SampleRequest(model=MODEL, steps=3), timeout=RPC_S).read()):
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert _trailing(error)["genserve-error-field"] == "steps"
        error = await rpc_error(s.Score(pb.ScoreRequest(model=MODEL, inputs=to_tensor(x), k=4), timeout=RPC_S))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and _trailing(error)["genserve-error-field"] == "k"

    scenario(engine, settings, body)


def test_empty_or_absurd_tensors_and_negative_top_k_are_invalid_argument(engine, settings):
    async def body(channel):
        s = stub(channel)
        for shape in ([0] * 70, [1] * 70, [0, 2**62], [1, 0, 28, 28]):
            inputs = pb.Tensor(dtype="uint8", shape=shape, data=b"" if 0 in shape else b"\0")
            error = await rpc_error(s.Score(pb.ScoreRequest(model=MODEL, inputs=inputs), timeout=RPC_S))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("inputs.shape:")
        error = await rpc_error(s.Sample(pb.SampleRequest(model=MODEL, top_k=-5), timeout=RPC_S))  # as REST
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "top_k: Input should be greater than or equal to 0"
        assert _trailing(error)["genserve-error-field"] == "top_k"

    scenario(engine, settings, body)


class Aborted(Exception):
    pass


class RecordingContext:
    """What abort_with hands to context.abort."""

    async def abort(self, code, details, trailing_metadata=()):
        self.code, self.details, self.metadata = code, details, dict(trailing_metadata)
        raise Aborted


@pytest.mark.parametrize("name", ["\u00e9", "a\x00b", "\ud800", "x" * 100_000])
def test_details_and_metadata_stay_printable_ascii_and_bounded(name):
    """A field name the client sent (an InfoGAN control's key) may hold anything: gRPC metadata takes printable
    ASCII only, and a limited size; an invalid one turned the refusal into INTERNAL."""
    context = RecordingContext()
    with pytest.raises(Aborted):
        asyncio.run(abort_with(context, InvalidInput(f"controls.{name}: unknown control", field=f"controls.{name}")))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    for text in (context.details, context.metadata["genserve-error-field"]):
        assert text.startswith("controls.") and text.isascii() and text.isprintable() and len(text) < 1100
    assert context.details.endswith("unknown control") or len(name) > 1000


def test_overload_and_not_ready_codes(engine, settings):
    assert status_code(UnknownModel("x")) == grpc.StatusCode.NOT_FOUND
    assert status_code(MissingCapability("x")) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_code(InvalidInput("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code(Overloaded("x")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_code(NotReady("x")) == grpc.StatusCode.UNAVAILABLE
    timeout = EngineError("x")
    timeout.status, timeout.code = 504, "timeout"
    assert status_code(timeout) == grpc.StatusCode.DEADLINE_EXCEEDED
    wrapped = Wrapped(engine)

    async def body(channel):
        wrapped.raises = Overloaded("queue: full (8 waiting)", field="queue")
        error = await rpc_error(stub(channel).Sample(pb.SampleRequest(model=MODEL), timeout=RPC_S))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error.details().startswith("queue:")
        assert _trailing(error)["retry-after"] == "1"
        wrapped.raises = NotReady("engine: worker restarting")
        error = await rpc_error(stub(channel).Sample(pb.SampleRequest(model=MODEL), timeout=RPC_S))
        assert error.code() == grpc.StatusCode.UNAVAILABLE

    scenario(wrapped, settings, body)


# --- health and reflection -----------------------------------------------------------------------------------------


def test_health_follows_engine_readiness(engine, settings):
    wrapped = Wrapped(engine)

    async def body(channel):
        health = health_pb2_grpc.HealthStub(channel)
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", "genserve.v1.Genserve"):
            got = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_S)
            assert got.status == serving, service
        error = await rpc_error(health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=RPC_S))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        wrapped.is_ready = False
        got = await health.Check(health_pb2.HealthCheckRequest(service="genserve.v1.Genserve"), timeout=RPC_S)
        assert got.status == not_serving
        wrapped.is_ready = True
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=RPC_S)
        assert (await asyncio.wait_for(watch.read(), RPC_S)).status == serving
        wrapped.is_ready = False
        assert (await asyncio.wait_for(watch.read(), RPC_S)).status == not_serving
        watch.cancel()

    scenario(wrapped, settings, body)


async def _reflect(channel, request: reflection_pb2.ServerReflectionRequest):
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=RPC_S)
    await call.write(request)
    await call.done_writing()
    response = await asyncio.wait_for(call.read(), RPC_S)
    call.cancel()
    return response


def test_reflection_lists_and_describes_the_services(engine, settings):
    async def body(channel):
        listed = await _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in listed.list_services_response.service}
        assert {"genserve.v1.Genserve", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
        found = await _reflect(channel, reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="genserve.v1.Genserve"))
        files = [descriptor_pb2.FileDescriptorProto.FromString(f)
                 for f in found.file_descriptor_response.file_descriptor_proto]
        genserve = next(f for f in files if f.name == "genserve/v1/genserve.proto")
        methods = {m.name for m in genserve.service[0].method}
        assert methods == {"ListModels", "GetModel", "Sample", "Score", "Complete", "Encode", "Decode", "Reconstruct",
                           "Interpolate", "Translate", "Predict", "PredictStream", "SampleStream"}

    scenario(engine, settings, body)


def test_inference_servicer_is_registered_when_present(engine, settings, monkeypatch):
    """service.grpc.inference, when importable, adds its service to the server, health and reflection."""
    name = "inference.GRPCInferenceService"
    fake = types.ModuleType("service.grpc.inference")

    def add_inference_servicer(server, _engine):  # as generated code registers a service
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, {}),))
        server.add_registered_method_handlers(name, {})
        return name

    fake.add_inference_servicer = add_inference_servicer
    monkeypatch.setitem(sys.modules, "service.grpc.inference", fake)

    async def body(channel):
        got = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name),
                                                              timeout=RPC_S)
        assert got.status == health_pb2.HealthCheckResponse.SERVING
        listed = await _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
        assert name in {s.name for s in listed.list_services_response.service}

    scenario(engine, settings, body)
