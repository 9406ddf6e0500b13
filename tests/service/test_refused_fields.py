"""Fields a request sets that the model or method cannot use are refused naming the field, over REST and gRPC alike,
never answered 200 having been ignored (the shipped midinet and charrnn): a stream's `controls` and `actions` (as
/sample refuses them for a model that takes none), a text model's Complete `mask` and Score or Complete `inputs` (it
takes `texts`), and Sample's `chunk_ms` (SampleStream's)."""

import asyncio

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine.engine import Engine
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_tensor
from service.settings import Settings
from tests.service.shipped import shipped_engine

SAMPLE_ONLY = [("controls", {"controls": {"class": 1}}), ("actions", {"actions": [[0.0]]})]
CODES = to_tensor(np.ones((1, 4), np.int64))


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return shipped_engine(tmp_path_factory, ["midinet", "charrnn"])


@pytest.mark.parametrize("model", ["midinet", "charrnn"])
@pytest.mark.parametrize("field, extra", SAMPLE_ONLY)
def test_rest_stream_refuses_what_sample_refuses(engine, model, field, extra):
    client = TestClient(create_app(engine, Settings()))
    body = {"n": 1, "seed": 1, **extra}
    assert client.post(f"/v1/models/{model}/sample", json=body).status_code == 422  # /sample: the reference
    response = client.post(f"/v1/models/{model}/sample/stream", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == f"body.{field}"


def grpc_requests() -> list[tuple[str, pb.SampleRequest]]:
    with_controls = pb.SampleRequest(model="midinet", n=1, seed=1)
    with_controls.controls["class"].values.append(1)
    with_actions = pb.SampleRequest(model="midinet", n=1, seed=1, actions=to_tensor(np.zeros((1, 1), np.float32)))
    return [("controls", with_controls), ("actions", with_actions)]


@pytest.mark.parametrize("field, request_", grpc_requests())
def test_grpc_stream_refuses_controls_and_actions(engine, field, request_):
    async def refusal() -> grpc.aio.AioRpcError:
        server = build_grpc_server(engine, Settings(), 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}") as channel:
                stub = pb_grpc.GenserveStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as sample:
                    await stub.Sample(request_, timeout=30)
                assert sample.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # Sample: the reference
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for _ in stub.SampleStream(request_, timeout=30):
                        pass
                return info.value
        finally:
            await server.stop(grace=None)

    error = asyncio.run(refusal())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}:")


CONFLICTS = [
    ("Complete", pb.CompleteRequest(model="charrnn", texts=["ab"], length=2, seed=1, mask=CODES), "mask"),
    ("Complete", pb.CompleteRequest(model="charrnn", texts=["ab"], length=2, seed=1, inputs=CODES), "inputs"),
    ("Score", pb.ScoreRequest(model="charrnn", texts=["ab"], inputs=CODES), "inputs"),
    ("Sample", pb.SampleRequest(model="midinet", n=1, seed=1, chunk_ms=100), "chunk_ms"),
]


@pytest.mark.parametrize("method, request_, field", CONFLICTS)
def test_grpc_refuses_a_field_it_would_ignore(engine, method, request_, field):
    async def call() -> grpc.aio.AioRpcError:
        server = build_grpc_server(engine, Settings(), 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await getattr(pb_grpc.GenserveStub(channel), method)(request_, timeout=30)
                return info.value
        finally:
            await server.stop(grace=None)

    error = asyncio.run(call())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"{field}:")


def test_rest_refuses_the_same(engine):
    client = TestClient(create_app(engine, Settings()))
    complete = client.post("/v1/models/charrnn/complete", json={"inputs": ["ab"], "mask": [1], "length": 2})
    assert complete.status_code == 422 and complete.json()["error"]["field"] == "body.mask"
    sample = client.post("/v1/models/midinet/sample", json={"n": 1, "seed": 1, "chunk_ms": 100})
    assert sample.status_code == 422 and sample.json()["error"]["field"] == "body.chunk_ms"
