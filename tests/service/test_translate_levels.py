"""REST `translate` answers integer levels, as the engine computes them and gRPC sends them (int64): JSON integers
[B, *data.shape] in 0..levels-1, equal to gRPC's tensor and to the PNG answer; never floats like 229.0."""

import asyncio
import base64
import io
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api import create_app
from service.engine.engine import Engine
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_array, to_tensor
from service.settings import Settings
from service.store import ModelStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The shipped pix2pix (edge maps, 2 levels -> digits, 256 levels): (settings, engine)."""
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(ROOT / "models" / "pix2pix", models / "pix2pix")
    settings = Settings(host="127.0.0.1", models=models, intra_op_threads=1)
    return settings, Engine(ModelStore(models), settings)


def edge_maps(count: int) -> np.ndarray:
    """[count, 1, 28, 28] levels 0/1: a box outline per input, of a different size each."""
    x = np.zeros((count, 1, 28, 28), np.int64)
    for i in range(count):
        lo, hi = 6 + i, 21 - i
        x[i, 0, lo, lo:hi] = x[i, 0, hi, lo:hi + 1] = x[i, 0, lo:hi, lo] = x[i, 0, lo:hi, hi] = 1
    return x


def integers(value) -> bool:
    """Whether every leaf of a nested JSON list is an integer (not a float such as 229.0)."""
    return all(integers(v) for v in value) if isinstance(value, list) else type(value) is int


def test_rest_answers_the_engines_int_levels_as_grpc_does(served):
    settings, engine = served
    x = edge_maps(2)
    expected = asyncio.run(engine.translate("pix2pix", x))  # int64 [2, 1, 28, 28]
    with TestClient(create_app(engine, settings)) as client:
        reply = client.post("/v1/models/pix2pix/translate", json={"inputs": x.tolist()})
        assert reply.status_code == 200, reply.text
        images = json.loads(reply.text)["images"]
        as_png = client.post("/v1/models/pix2pix/translate", json={"inputs": x.tolist(), "format": "png"})
        assert as_png.status_code == 200, as_png.text
    assert integers(images)
    rest = np.asarray(images)
    assert rest.shape == (2, 1, 28, 28) and rest.dtype == np.int64
    assert np.array_equal(rest, expected)
    assert 0 <= rest.min() and rest.max() <= 255 and rest.max() > 1  # the digits' 256 levels, not the edges' 2
    for i, png in enumerate(as_png.json()["images"]):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(png)))), rest[i, 0])

    async def over_grpc() -> np.ndarray:
        server = build_grpc_server(engine, settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            answer = await pb_grpc.GenserveStub(channel).Translate(
                pb.TranslateRequest(model="pix2pix", inputs=to_tensor(x)), timeout=20)
            return to_array(answer.images, "images")
        finally:
            await channel.close()
            await server.stop(grace=None)

    from_grpc = asyncio.run(asyncio.wait_for(over_grpc(), 60))
    assert from_grpc.dtype == np.int64 and np.array_equal(from_grpc, rest)


def test_the_openapi_schema_says_levels(served):
    settings, engine = served
    with TestClient(create_app(engine, settings)) as client:
        operation = client.get("/openapi.json").json()["paths"]["/v1/models/{name}/translate"]["post"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert answer.endswith("/TranslateResponse")
