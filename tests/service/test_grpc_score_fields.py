"""gRPC gives a text model's inputs as `texts` (an audio model's as `wavs`), where REST and the engine say `inputs`:
a Score or Complete refused for one of them names the gRPC field (texts[3]), on the shipped charrnn in-process."""

import asyncio
import shutil
from pathlib import Path

import grpc
import pytest

from service.engine.engine import Engine
from service.engine.errors import InvalidInput, Overloaded
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import _sequence_fields
from service.settings import Settings
from service.store import ModelStore

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("models")
    shutil.copytree(MODELS / "charrnn", store / "charrnn")
    return store


def refusals(store: Path, requests: list) -> list[grpc.aio.AioRpcError]:
    """Each (method name, request) sent to an in-process server: the errors, in order."""
    settings = Settings(host="127.0.0.1", models=store, intra_op_threads=1)

    async def run() -> list[grpc.aio.AioRpcError]:
        server = build_grpc_server(Engine(ModelStore(store), settings), settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            stub, out = pb_grpc.GenserveStub(channel), []
            for method, request in requests:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await getattr(stub, method)(request, timeout=20)
                out.append(refused.value)
            return out
        finally:
            await channel.close()
            await server.stop(grace=None)

    return asyncio.run(asyncio.wait_for(run(), 60))


def test_a_refused_text_names_the_grpc_field(store):
    too_long = "a" * 15_001  # charrnn scores and completes up to 15,000 and 7,100 characters an input
    errors = refusals(store, [
        ("Score", pb.ScoreRequest(model="charrnn", texts=["one", "two", "three", too_long])),
        ("Score", pb.ScoreRequest(model="charrnn", texts=["b" * 14_000] * 8)),  # 112,000 over 110,000 a request
        ("Complete", pb.CompleteRequest(model="charrnn", texts=["ok", too_long]))])
    details = [error.details() for error in errors]
    assert all(error.code() == grpc.StatusCode.INVALID_ARGUMENT for error in errors), details
    assert details[0].startswith("texts[3]: ") and details[1].startswith("texts: ") and \
        details[2].startswith("texts[1]"), details
    assert not any("inputs[" in detail for detail in details), details


def test_only_the_engine_inputs_fields_of_a_sequence_model_are_renamed():
    with pytest.raises(InvalidInput) as refused, _sequence_fields({"kind": "audio"}):
        raise InvalidInput("inputs[2]: 9 values, over the limit", field="inputs[2]")
    assert (refused.value.field, refused.value.detail) == ("wavs[2]", "wavs[2]: 9 values, over the limit")
    with pytest.raises(Overloaded) as refused, _sequence_fields({"kind": "text"}):
        raise Overloaded("busy", field="inputs")
    assert (refused.value.field, refused.value.detail) == ("texts", "texts: busy")
    for spec, field in (({"kind": "text"}, "labels"), ({"kind": "image"}, "inputs[0]"), ({}, "inputs")):
        with pytest.raises(InvalidInput) as refused, _sequence_fields(spec):
            raise InvalidInput("no", field=field)
        assert refused.value.field == field
