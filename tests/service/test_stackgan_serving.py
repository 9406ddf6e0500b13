"""A caption model served: the prompt's words become the sample function's caption input, the served sample equals
the eager StackGAN under the same noise, a seed fixes it whatever the batch, REST and gRPC agree, and unknown words,
a missing prompt or a prompt to a model without one are 4xx naming the field (and the words)."""

import asyncio
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine import latent, procedures
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_array
from service.settings import Settings
from service.store import ModelStore
from tests.conftest import export_tiny, train_tiny

ROOT = Path(__file__).resolve().parents[2]
CAPTION = "a thick seven slanted to the right"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The tiny StackGAN run exported beside a copy of the shipped GAN (which takes no prompt): (models, run)."""
    run = train_tiny("stackgan-tiny", tmp_path_factory)
    models = export_tiny(run, "stackgan", tmp_path_factory)
    shutil.copytree(ROOT / "models" / "gan", models / "gan")
    return models, run


def engine(models: Path, runtime: str = "onnx") -> Engine:
    return Engine(ModelStore(models), Settings(runtime=runtime, intra_op_threads=1))


@pytest.mark.parametrize("runtime", ["onnx", "torchscript"])
def test_served_sample_equals_the_eager_model_under_the_same_noise(store, runtime):
    from safetensors.torch import load_file

    from training.data import captions
    from training.families import stackgan

    served = engine(store[0], runtime)
    x = asyncio.run(served.sample("stackgan", 3, 11, 0.9, None, prompt=CAPTION))
    cap = served.model("stackgan").capability("sample")
    noise = latent.draw(cap["noise"], procedures.row_generators(11, 3))
    config = json.loads((store[1] / "config.json").read_text())["model"]
    cuts = captions.Thresholds(np.zeros((10, 2)), np.zeros((10, 2)))  # the checkpoint holds the fitted ones
    model = stackgan.StackGAN(stackgan.StackGANConfig(**config), cuts)
    model.load_state_dict(load_file(store[1] / "model.safetensors"))
    model.eval()
    with torch.no_grad():
        eager = stackgan.Sample(model)(torch.from_numpy(noise["eps"]), torch.from_numpy(noise["eps_c"]),
                                       torch.full((3,), 0.9), captions.tokens([CAPTION] * 3)).numpy()
    assert x.shape == (3, 1, 28, 28)
    assert np.abs(x - eager).max() <= 1 and (x != eager).mean() < 0.01  # rounding ties (ONNX)


def test_a_seed_fixes_each_row_whatever_the_batch_and_the_words_matter(store):
    served = engine(store[0])

    async def run():
        three = await served.sample("stackgan", 3, 5, 1.0, None, prompt=CAPTION)
        one = await served.sample("stackgan", 1, 5, 1.0, None, prompt=CAPTION.upper() + ".")
        other = await served.sample("stackgan", 1, 5, 1.0, None, prompt="a small thin two")
        return three, one, other

    three, one, other = asyncio.run(run())
    assert np.array_equal(three[:1], one)  # same seed, same row; case and a full stop change no word
    assert not np.array_equal(three[1], three[0])
    assert not np.array_equal(one, other)  # same noise, other words


@pytest.mark.parametrize("kwargs, words", [({"prompt": "a thick 7 slanted to the rightish"}, ["7", "rightish"]),
                                           ({"prompt": "a a a a a a a a a"}, []), ({"prompt": " ,. "}, []),
                                           ({}, [])])
def test_bad_prompts_are_refused_naming_the_field(store, kwargs, words):
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(engine(store[0]).sample("stackgan", 1, 0, 1.0, None, **kwargs))
    assert refused.value.field == "prompt" and all(repr(w) in str(refused.value) for w in words)


def test_rest_and_grpc_agree_and_refuse_unknown_words(store):
    settings = Settings(host="127.0.0.1", models=store[0], intra_op_threads=1)
    with TestClient(create_app(engine(store[0]), settings)) as client:
        reply = client.post("/v1/models/stackgan/sample", json={"n": 2, "seed": 3, "prompt": CAPTION})
        assert reply.status_code == 200, reply.text
        rest = np.asarray(reply.json()["samples"])
        unknown = client.post("/v1/models/stackgan/sample", json={"prompt": "a purple seven"})
        assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "prompt"
        assert "'purple'" in unknown.json()["error"]["message"]
        assert client.post("/v1/models/stackgan/sample", json={"n": 1}).status_code == 422
        no_prompt = client.post("/v1/models/gan/sample", json={"prompt": CAPTION})
        assert no_prompt.status_code == 422 and no_prompt.json()["error"]["field"] == "prompt"
        description = client.get("/v1/models/stackgan").json()
        assert "sample" in description["capabilities"]

    async def over_grpc() -> np.ndarray:
        server = build_grpc_server(engine(store[0]), settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            stub = pb_grpc.GenserveStub(channel)
            answer = await stub.Sample(pb.SampleRequest(model="stackgan", n=2, seed=3, prompt=CAPTION), timeout=20)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Sample(pb.SampleRequest(model="stackgan", prompt="a purple seven"), timeout=20)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details().startswith("prompt") and "'purple'" in info.value.details()
            return to_array(answer.samples, "samples")
        finally:
            await channel.close()
            await server.stop(grace=None)

    assert np.array_equal(asyncio.run(asyncio.wait_for(over_grpc(), 60)).squeeze(1), rest)  # REST: [n, 28, 28]


def test_the_manifest_declares_the_prompt_input(store):
    manifest = json.loads((store[0] / "stackgan" / "1" / "manifest.json").read_text())
    prompt = manifest["capabilities"]["sample"]["prompt"]
    inputs = {t["name"]: t for t in manifest["functions"]["sample"]["inputs"]}
    assert inputs[prompt["input"]]["shape"] == [-1, prompt["max_words"]] and prompt["vocabulary"][0] == ""
