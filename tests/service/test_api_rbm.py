"""REST and gRPC over the real engine and the tiny exported RBM: Markov-chain `steps` on sample and complete, and
the AIS score's fields (free energy, the stderr of log Z, not a bound)."""

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
from service.grpc.genserve_servicer import to_array, to_tensor
from service.settings import Settings
from service.store import ModelStore

MODEL = "rbm"
URL = f"/v1/models/{MODEL}"
RPC_S = 20.0


@pytest.fixture(scope="module")
def settings(tiny_rbm_store) -> Settings:
    return Settings(host="127.0.0.1", models=tiny_rbm_store, intra_op_threads=1)


@pytest.fixture(scope="module")
def engine(tiny_rbm_store, settings) -> Engine:
    return Engine(ModelStore(tiny_rbm_store), settings)


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=(count, 1, 28, 28))


def test_rest_chain_steps_and_free_energy(engine, settings):
    with TestClient(create_app(engine, settings)) as client:
        def post(route: str, body: dict):
            return client.post(f"{URL}/{route}", json=body)

        few = post("sample", {"n": 2, "seed": 3, "steps": 2}).json()["samples"]
        assert few == post("sample", {"n": 2, "seed": 3, "steps": 2}).json()["samples"]
        assert few != post("sample", {"n": 2, "seed": 3, "steps": 5}).json()["samples"]
        assert np.array(few).shape == (2, 28, 28)
        x = images(2)
        mask = np.zeros((28, 28), int)
        mask[:, :10] = 1
        body = {"inputs": x.tolist(), "mask": mask.tolist(), "seed": 1, "steps": 3}
        completions = np.array(post("complete", body).json()["completions"])  # [B, n, 28, 28]
        np.testing.assert_array_equal(completions[:, 0, :, :10], x[:, 0, :, :10])

        results = post("score", {"inputs": x.tolist()}).json()["results"]
        for result in results:
            assert result["method"] == "ais" and result["is_lower_bound"] is False and result["stderr"] > 0
            assert "k" not in result and np.isfinite(result["free_energy"])
        for refused, field in (({"steps": 10**6}, "steps"), ({"temperature": 0.5}, "temperature"),
                               ({"steps": 0}, "body.steps")):
            response = post("sample", refused)
            assert response.status_code == 422 and field in response.json()["error"]["message"], response.text
        for refused, field in (({"k": 4}, "k"), ({"method": "iwae"}, "method"), ({"refine_steps": 1}, "refine_steps")):
            response = post("score", {"inputs": x.tolist(), **refused})
            assert response.status_code == 422 and field in response.json()["error"]["message"], response.text
        assert post("encode", {"inputs": x.tolist()}).status_code == 400  # no latent inference served
        assert post("sample/stream", {"steps": 2}).status_code == 422


def test_grpc_chain_steps_and_free_energy(engine, settings):
    async def main() -> None:
        server = build_grpc_server(engine, settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            s = pb_grpc.GenserveStub(channel)
            first = await s.Sample(pb.SampleRequest(model=MODEL, n=2, seed=3, steps=2), timeout=RPC_S)
            again = await s.Sample(pb.SampleRequest(model=MODEL, n=2, seed=3, steps=2), timeout=RPC_S)
            assert first.samples == again.samples and list(first.samples.shape) == [2, 1, 28, 28]
            x = images(2)
            score = await s.Score(pb.ScoreRequest(model=MODEL, inputs=to_tensor(x)), timeout=RPC_S)
            for result in score.results:
                assert result.method == "ais" and result.HasField("free_energy") and not result.is_lower_bound
                assert result.HasField("stderr") and not result.HasField("k")
            mask = np.ones((1, 28, 28), np.uint8)
            out = await s.Complete(pb.CompleteRequest(model=MODEL, inputs=to_tensor(x), mask=to_tensor(mask),
                                                      steps=1), timeout=RPC_S)
            np.testing.assert_array_equal(to_array(out.completions, "completions")[:, 0], x)  # all observed
        finally:
            await channel.close()
            await server.stop(grace=None)

    asyncio.run(asyncio.wait_for(main(), 60.0))
