"""REST and gRPC refuse the same bad option for the same reason, naming the same field: both check it against one
type (service/engine/options.py). Over the tiny PixelCNN store, with a real engine, through a REST TestClient and an
in-process gRPC server."""

import asyncio

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine.engine import Engine
from service.engine.validation import ANOMALY_METHOD_MAX, MAX_SEED
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_tensor
from service.settings import Settings
from service.store import ModelStore

MODEL = "pixelcnn"
MAX_SAMPLES = 8
MAX_LENGTH = 64

# (method, field, a value both protocols can carry and must refuse)
BAD = [
    ("Sample", "n", 0),
    ("Sample", "n", MAX_SAMPLES + 1),
    ("Sample", "temperature", 0.0),
    ("Sample", "temperature", 10.5),
    ("Sample", "seed", MAX_SEED + 1),
    ("Sample", "top_k", -5),
    ("Sample", "steps", 0),
    ("Sample", "bars", 0),
    ("Sample", "seconds", -1.0),
    ("Sample", "length", 0),
    ("Sample", "length", MAX_LENGTH + 1),
    ("Score", "k", 0),
    ("Score", "refine_steps", -1),
    ("Score", "seed", MAX_SEED + 1),
    ("Score", "method", "m" * 33),
    ("Score", "refine", "r" * 33),
    ("Score", "anomaly_method", "x" * (ANOMALY_METHOD_MAX + 1)),
]


@pytest.fixture(scope="module")
def served(tiny_store):
    settings = Settings(host="127.0.0.1", models=tiny_store, intra_op_threads=1, max_samples_per_request=MAX_SAMPLES,
                        max_sequence_length=MAX_LENGTH)
    engine = Engine(ModelStore(tiny_store), settings)
    spec = engine.data_spec(MODEL)
    digit = np.zeros([1, *spec["shape"]], np.uint8)  # [1, *shape]: one valid input
    return engine, settings, digit


def rest_refusal(engine, settings, digit, method: str, field: str, value) -> tuple[int, dict]:
    body = {field: value} | ({"inputs": digit.tolist()} if method == "Score" else {})
    with TestClient(create_app(engine, settings)) as client:
        response = client.post(f"/v1/models/{MODEL}/{method.lower()}", json=body)
    return response.status_code, response.json()["error"]


def grpc_refused(engine, settings, method: str, request) -> grpc.aio.AioRpcError:
    """`request` sent to `method` of an in-process gRPC server, which must refuse it: the refusal."""
    async def run() -> grpc.aio.AioRpcError:
        server = build_grpc_server(engine, settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await getattr(pb_grpc.GenserveStub(channel), method)(request, timeout=20)
            return refused.value
        finally:
            await channel.close()
            await server.stop(grace=None)

    return asyncio.run(asyncio.wait_for(run(), 60))


def grpc_refusal(engine, settings, digit, method: str, field: str, value) -> grpc.aio.AioRpcError:
    inputs = {"inputs": to_tensor(digit, np.uint8)} if method == "Score" else {}
    request = getattr(pb, f"{method}Request")(model=MODEL, **{field: value}, **inputs)
    return grpc_refused(engine, settings, method, request)


@pytest.mark.parametrize(("method", "field", "value"), BAD, ids=[f"{m}.{f}={str(v)[:12]}" for m, f, v in BAD])
def test_rest_and_grpc_refuse_an_option_alike(served, method, field, value):
    status, rest = rest_refusal(*served, method, field, value)
    error = grpc_refusal(*served, method, field, value)
    assert status == 422 and rest["field"] == f"body.{field}", rest
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert dict(error.trailing_metadata())["genserve-error-field"] == field
    assert rest["message"] == f"body.{error.details()}"  # the same reason, word for word


def test_a_complete_without_inputs_is_refused_for_its_inputs_before_its_length(served):
    """The length is checked where the engine is called, after the inputs are decoded, in both protocols."""
    engine, settings, _ = served
    with TestClient(create_app(engine, settings)) as client:
        rest = client.post(f"/v1/models/{MODEL}/complete", json={"seconds": 0.5}).json()["error"]
    error = grpc_refused(engine, settings, "Complete", pb.CompleteRequest(model=MODEL, seconds=0.5))
    assert rest["field"] == "body.inputs", rest
    assert dict(error.trailing_metadata())["genserve-error-field"] == "inputs", error.details()
