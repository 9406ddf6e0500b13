"""`translate` (pix2pix's edge maps -> digits) through the engine, REST and gRPC: the served images equal the eager
generator's, REST and gRPC agree, and bad inputs are 4xx naming the field (or the model that cannot translate)."""

import asyncio
import base64
import io
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from service.api import create_app
from service.engine.engine import Engine
from service.engine.errors import InvalidInput, MissingCapability
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_array, to_tensor
from service.settings import Settings
from service.store import ModelStore
from tests.conftest import export_tiny, train_tiny

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The tiny pix2pix run exported beside a copy of the shipped GAN (which cannot translate): (store, run)."""
    run = train_tiny("pix2pix-tiny", tmp_path_factory)
    models = export_tiny(run, "pix2pix", tmp_path_factory)
    shutil.copytree(ROOT / "models" / "gan", models / "gan")
    return models, run


def edges(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=(count, 1, 28, 28))


@pytest.mark.parametrize("runtime", ["onnx", "torchscript"])
def test_served_translation_equals_the_eager_generator(store, runtime):
    from safetensors.torch import load_file

    from training.families import pix2pix

    config = json.loads((store[1] / "config.json").read_text())["model"]
    model = pix2pix.Pix2Pix(pix2pix.Pix2PixConfig(**config))
    model.load_state_dict(load_file(store[1] / "model.safetensors"))
    engine = Engine(ModelStore(store[0]), Settings(runtime=runtime, intra_op_threads=1))
    x = edges(3)
    served = asyncio.run(engine.translate("pix2pix", x))
    with torch.no_grad():
        eager = pix2pix.Translate(model.eval())(torch.from_numpy(x)).numpy()
    assert served.shape == (3, 1, 28, 28)
    assert np.abs(served - eager).max() <= 1 and (served != eager).mean() < 0.01  # rounding ties (ONNX)
    assert np.array_equal(asyncio.run(engine.translate("pix2pix", x)), served)  # deterministic


def test_engine_refuses_bad_inputs_naming_the_field(store):
    engine = Engine(ModelStore(store[0]), Settings(runtime="onnx", intra_op_threads=1))
    with pytest.raises(InvalidInput) as info:
        asyncio.run(engine.translate("pix2pix", edges(1) * 2))  # levels 0/2: the input has 2 levels
    assert info.value.field == "inputs[0]"
    with pytest.raises(MissingCapability) as missing:
        asyncio.run(engine.translate("gan", edges(1)))
    assert missing.value.field == "model"


def test_rest_and_grpc_agree_and_refuse_bad_input(store):
    settings = Settings(host="127.0.0.1", models=store[0], intra_op_threads=1)
    x = edges(2, seed=1)
    png = io.BytesIO()
    Image.fromarray((x[0, 0] * 255).astype(np.uint8)).save(png, format="PNG")
    with TestClient(create_app(Engine(ModelStore(store[0]), settings), settings)) as client:
        reply = client.post("/v1/models/pix2pix/translate", json={"inputs": x.tolist()})
        assert reply.status_code == 200, reply.text
        rest = np.asarray(reply.json()["images"])
        as_png = client.post("/v1/models/pix2pix/translate",
                             json={"inputs": [base64.b64encode(png.getvalue()).decode()], "format": "png"})
        assert as_png.status_code == 200, as_png.text
        answer = Image.open(io.BytesIO(base64.b64decode(as_png.json()["images"][0])))
        assert np.array_equal(np.asarray(answer), rest[0, 0])  # PNG in and out: the same translation
        for body, field in (({"inputs": [np.zeros((1, 14, 14), int).tolist()]}, "body.inputs[0]"),
                            ({"inputs": [(x[0] * 3).tolist()]}, "body.inputs[0]")):
            bad = client.post("/v1/models/pix2pix/translate", json=body)
            assert bad.status_code == 422 and field in bad.text, bad.text
        missing = client.post("/v1/models/gan/translate", json={"inputs": x.tolist()})
        assert missing.status_code == 400 and "'gan'" in missing.text and "translate" in missing.text

    async def over_grpc() -> np.ndarray:
        server = build_grpc_server(Engine(ModelStore(store[0]), settings), settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            stub = pb_grpc.GenserveStub(channel)
            answer = await stub.Translate(pb.TranslateRequest(model="pix2pix", inputs=to_tensor(x)), timeout=20)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Translate(pb.TranslateRequest(model="pix2pix", inputs=to_tensor(x * 3)), timeout=20)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "inputs" in info.value.details()
            return to_array(answer.images, "images")
        finally:
            await channel.close()
            await server.stop(grace=None)

    assert np.array_equal(asyncio.run(asyncio.wait_for(over_grpc(), 60)), rest)
