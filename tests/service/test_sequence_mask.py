"""A sequence model (text, audio) continues each input and takes no mask: REST, gRPC and the engine itself refuse a
mask in the same words (validation.check_no_mask), each naming its own field (body.mask, mask)."""

import asyncio

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine import audio
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.engine.validation import check_no_mask
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_tensor
from service.settings import Settings
from tests.service.shipped import shipped_engine

KINDS = {"charrnn": "text", "wavenet": "audio"}
MASK = np.ones((1, 4), np.int64)
WAV = audio.to_wav(np.full(400, 128, np.int64), 16000)  # wavenet's sample rate
INPUTS = {"charrnn": ["ab"], "wavenet": [[128, 130, 127]]}  # REST's: a text, mu-law codes


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return shipped_engine(tmp_path_factory, KINDS)


def refusal(kind: str, field: str) -> str:
    with pytest.raises(InvalidInput) as info:
        check_no_mask(kind, True, field)
    assert info.value.field == field
    return info.value.detail


def test_the_check_refuses_only_a_given_mask():
    check_no_mask("text", False, "mask")
    assert refusal("audio", "body.mask") == "body.mask: audio models continue each input and take no mask"


@pytest.mark.parametrize("model", KINDS)
def test_the_engine_refuses_a_mask_in_the_shared_words(engine, model):
    with pytest.raises(InvalidInput) as info:
        asyncio.run(engine.complete(model, [np.array([1, 2])], np.array([1, 1]), 1, 0, 1.0))
    assert info.value.field == "mask" and info.value.detail == refusal(KINDS[model], "mask")


def test_rest_refuses_a_mask_in_the_shared_words(engine):
    client = TestClient(create_app(engine, Settings()))
    for model, inputs in INPUTS.items():
        response = client.post(f"/v1/models/{model}/complete", json={"inputs": inputs, "mask": [1], "length": 2})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["field"] == "body.mask" and error["message"] == refusal(KINDS[model], "body.mask")


def test_grpc_refuses_a_mask_in_the_shared_words(engine):
    requests = {"charrnn": pb.CompleteRequest(model="charrnn", texts=["ab"], length=2, mask=to_tensor(MASK)),
                "wavenet": pb.CompleteRequest(model="wavenet", wavs=[WAV], length=2, mask=to_tensor(MASK))}

    async def refusals() -> dict[str, grpc.aio.AioRpcError]:
        server = build_grpc_server(engine, Settings(), 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}") as channel:
                stub, out = pb_grpc.GenserveStub(channel), {}
                for model, request in requests.items():
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.Complete(request, timeout=30)
                    out[model] = info.value
                return out
        finally:
            await server.stop(grace=None)

    for model, error in asyncio.run(refusals()).items():
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == refusal(KINDS[model], "mask")
