"""Implicit models through the engine, REST and gRPC: tiny GAN, InfoGAN and BiGAN exports serve a critic score
(labelled as such, never as a likelihood), completion by latent optimization, InfoGAN's sample controls, and a
BiGAN's encoder."""

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_tensor
from service.settings import Settings
from service.store import ModelStore

MODELS = {"gan": "gan-tiny", "infogan": "infogan-tiny", "bigan": "bigan-tiny"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The three tiny runs exported into one store: (store directory, {name: run directory})."""
    from training.export import export
    from training.train import train

    root, configs = tmp_path_factory.mktemp("models"), Path(__file__).resolve().parents[2] / "training" / "configs"
    runs = {name: train(configs / f"{config}.json", tmp_path_factory.mktemp("runs") / name)
            for name, config in MODELS.items()}
    for name, run in runs.items():
        export(run, root, name=name, baseline=False)
    return root, runs


@pytest.fixture(scope="module", params=["onnx", "torchscript"])
def engine(store, request) -> Engine:
    return Engine(ModelStore(store[0]), Settings(runtime=request.param, intra_op_threads=1))


def digits(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 1, 28, 28))


def test_critic_score_is_labelled_and_equals_the_eager_critic(engine, store):
    from training.families import gan
    from training.train import load_model

    x = digits(3)
    results = asyncio.run(engine.score("gan", x))
    model = load_model(store[1]["gan"])[0]
    with torch.no_grad():
        expected = gan.CriticScore(model.eval())(torch.from_numpy(x)).numpy()
    calibration = engine.model("gan").manifest["calibration"]
    assert calibration["score"] == "negative_critic"
    for r, want in zip(results, expected, strict=True):
        assert r["method"] == "critic" and r["log_likelihood_nats"] is None and r["bits_per_dim"] is None
        assert r["critic"] == pytest.approx(float(want), rel=1e-4, abs=1e-4)
        assert r["anomaly"]["score"] == -r["critic"] and 0 <= r["anomaly"]["percentile"] <= 100
    with pytest.raises(InvalidInput) as info:
        asyncio.run(engine.score("gan", x, method="iwae"))
    assert info.value.field == "method"


@pytest.mark.parametrize("name", list(MODELS))
def test_complete_by_latent_optimization_keeps_observed_pixels(engine, name):
    x, mask = digits(2, seed=1), np.zeros((1, 28, 28), np.int64)
    mask[:, :14] = 1
    filled = asyncio.run(engine.complete(name, x, mask, 2, 5, 1.0))  # [B, n, 1, 28, 28]
    assert filled.shape == (2, 2, 1, 28, 28) and filled.min() >= 0 and filled.max() <= 255
    assert (filled[:, :, :, :14] == x[:, None, :, :14]).all()
    assert np.array_equal(asyncio.run(engine.complete(name, x, mask, 2, 5, 1.0)), filled)  # seeded
    for option, field in (({"steps": 3}, "steps"), ({"temperature": 0.5}, "temperature")):
        kwargs = {"temperature": 1.0, **option}
        with pytest.raises(InvalidInput) as info:
            asyncio.run(engine.complete(name, x, mask, 1, 0, kwargs.pop("temperature"), **kwargs))
        assert info.value.field == field


def test_infogan_controls_set_the_codes_and_bad_ones_name_the_field(engine):
    fixed = asyncio.run(engine.sample("infogan", 4, 0, 1.0, None, controls={"code": 3, "style": [0.5, -0.5]}))
    again = asyncio.run(engine.sample("infogan", 4, 0, 1.0, None, controls={"code": 3, "style": [0.5, -0.5]}))
    other = asyncio.run(engine.sample("infogan", 4, 0, 1.0, None, controls={"code": 7, "style": [0.5, -0.5]}))
    drawn = asyncio.run(engine.sample("infogan", 4, 0, 1.0, None))
    assert fixed.shape == (4, 1, 28, 28) and np.array_equal(fixed, again)
    assert not np.array_equal(fixed, other) and not np.array_equal(fixed, drawn)  # the code reaches the generator
    for controls, field in (({"colour": 1}, "controls.colour"), ({"code": 10}, "controls.code"),
                            ({"code": 2.5}, "controls.code"), ({"style": [1.0]}, "controls.style"),
                            ({"style": [float("nan"), 0.0]}, "controls.style")):
        with pytest.raises(InvalidInput) as info:
            asyncio.run(engine.sample("infogan", 1, 0, 1.0, None, controls=controls))
        assert info.value.field == field
    with pytest.raises(InvalidInput) as info:
        asyncio.run(engine.sample("gan", 1, 0, 1.0, None, controls={"code": 1}))
    assert info.value.field == "controls"


def test_bigan_encodes_and_decodes(engine):
    x = digits(3, seed=2)
    posterior = asyncio.run(engine.encode("bigan", x))
    assert posterior["mean"].shape == (3, engine.model("bigan").capabilities["sample"]["noise"]["eps"]["shape"][0])
    assert (posterior["std"] == 0).all()
    images = asyncio.run(engine.decode("bigan", posterior["mean"]))
    assert images.shape == (3, 1, 28, 28) and 0 <= images.min() and images.max() <= 255


def test_rest_score_and_sample_controls(store):
    settings = Settings(models=store[0], intra_op_threads=1)
    with TestClient(create_app(Engine(ModelStore(store[0]), settings), settings)) as client:
        response = client.post("/v1/models/gan/score", json={"inputs": digits(2).tolist()})
        assert response.status_code == 200, response.text
        for r in response.json()["results"]:
            assert r["method"] == "critic" and r["log_likelihood_nats"] is None and isinstance(r["critic"], float)
        body = {"n": 2, "seed": 1, "controls": {"code": 4, "style": [0.0, 1.0]}}
        response = client.post("/v1/models/infogan/sample", json=body)
        assert response.status_code == 200, response.text
        response = client.post("/v1/models/infogan/sample", json={**body, "controls": {"code": 11}})
        assert response.status_code == 422 and "controls.code" in response.text


def test_grpc_score_has_a_critic_and_no_likelihood(store):
    settings = Settings(host="127.0.0.1", models=store[0], intra_op_threads=1)
    engine = Engine(ModelStore(store[0]), settings)

    async def main() -> None:
        server = build_grpc_server(engine, settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            stub = pb_grpc.GenserveStub(channel)
            reply = await stub.Score(pb.ScoreRequest(model="gan", inputs=to_tensor(digits(2).astype(np.uint8))),
                                     timeout=20)
            for r in reply.results:
                assert r.method == "critic" and r.HasField("critic") and not r.HasField("log_likelihood_nats")
            request = pb.SampleRequest(model="infogan", n=2, seed=3, controls={"code": pb.ControlValue(values=[2])})
            assert (await stub.Sample(request, timeout=20)).samples.shape == [2, 1, 28, 28]
        finally:
            await channel.close()
            await server.stop(grace=None)

    asyncio.run(asyncio.wait_for(main(), 60))
