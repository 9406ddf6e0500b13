"""The engine is the one place that plans how many steps a stream runs (Engine.stream_steps): an image's rows, a music
model's bars (the request's bars or chords, else the capability's); none up front for text and audio, whose chunks
are values. A stream yields exactly that many chunks, and gRPC's SampleStream says the engine's number."""

import asyncio

import grpc
import pytest

from service.engine.engine import Engine
from service.engine.errors import InvalidInput, MissingCapability
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.settings import Settings
from tests.service.shipped import shipped_engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return shipped_engine(tmp_path_factory, ["midinet", "pixelcnn", "charrnn", "gan"])


async def chunks(engine: Engine, name: str, **options) -> int:
    return len([c async for c in engine.sample_stream(name, 1, 0, 1.0, None, **options)])


@pytest.mark.parametrize("name, options, steps", [
    ("midinet", {}, 8),  # the capability's steps
    ("midinet", {"bars": 3}, 3),
    ("midinet", {"step_controls": {"chords": ["C", "G", "Am", "F", "C"]}}, 5),  # a chord per bar
    ("pixelcnn", {}, 28),  # a 28x28 image's rows
])
def test_a_stream_yields_the_steps_the_engine_plans(engine, name, options, steps):
    assert engine.stream_steps(name, 1, **options) == steps
    assert asyncio.run(chunks(engine, name, **options)) == steps


def test_a_sequence_model_plans_no_steps_up_front_and_bad_plans_are_refused(engine):
    assert engine.stream_steps("charrnn", 2) is None  # its chunks are values: Engine.stream_values
    with pytest.raises(InvalidInput) as bars:
        engine.stream_steps("midinet", 1, bars=10**6)
    assert bars.value.field == "bars"
    with pytest.raises(InvalidInput) as fixed:
        engine.stream_steps("pixelcnn", 1, bars=3)
    assert fixed.value.field == "bars"
    with pytest.raises(MissingCapability):  # a GAN draws each sample at once: no stream
        engine.stream_steps("gan", 1)


def test_grpc_sample_stream_says_the_steps_the_engine_plans(engine, monkeypatch):
    asked = []

    def stream_steps(*args):
        asked.append(Engine.stream_steps(engine, *args))
        return asked[-1]

    monkeypatch.setattr(engine, "stream_steps", stream_steps)

    async def stream() -> list[pb.SampleChunk]:
        server = build_grpc_server(engine, Settings(), 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}") as channel:
                request = pb.SampleRequest(model="midinet", n=1, seed=1, chords=["C", "G", "Am"])
                return [c async for c in pb_grpc.GenserveStub(channel).SampleStream(request, timeout=30)]
        finally:
            await server.stop(grace=None)

    received = asyncio.run(stream())
    assert asked == [3] and [c.steps for c in received] == [3] * 3
