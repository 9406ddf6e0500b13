"""A VRNN served: seconds and voice to WAV over REST and gRPC (the stream adds up to the sample, the same seed gives
the same audio), score as IWAE and ELBO bounds that equal the exported function's eager value under the service's
noise, encode as per-frame filtering moments, and 4xx answers naming the field.

The tiny model trains on speech synthesized by espeak-ng; without it these tests skip.
"""

import asyncio
import base64
import contextlib
import io
import shutil
import wave

import grpc
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine import audio
from service.engine.engine import Engine
from service.engine.procedures import row_generators
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_tensor
from service.grpc.server import build_grpc_server
from service.settings import Settings
from service.store import ModelStore
from tests.conftest import export_tiny, train_tiny

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed (make speech-deps): no speech to train on")
MODEL = "vrnn"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny("vrnn-tiny", tmp_path_factory)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(runtime="onnx", intra_op_threads=1)


@pytest.fixture(scope="module")
def engine(run_dir, settings, tmp_path_factory) -> Engine:
    return Engine(ModelStore(export_tiny(run_dir, MODEL, tmp_path_factory)), settings)


@pytest.fixture(scope="module")
def segment(engine) -> np.ndarray:
    """Two segments of the model's length, sampled by the model: [2, T * F] codes."""
    return asyncio.run(engine.sample(MODEL, 2, seed=1, temperature=1.0, label=0, length=engine.model(MODEL).shape[0]))


@contextlib.asynccontextmanager
async def grpc_stub(engine: Engine, settings: Settings):
    """A genserve gRPC stub on a server of the engine, stopped however the block ends."""
    server = build_grpc_server(engine, settings, 0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}") as channel:
            yield pb_grpc.GenserveStub(channel)
    finally:
        await server.stop(grace=None)


def test_sample_by_seconds_and_voice_as_wav_over_rest_and_grpc_streams(engine, settings):
    voice = engine.data_spec(MODEL)["classes"][1]
    body = {"seconds": 0.03, "voice": voice, "seed": 4}
    with TestClient(create_app(engine, settings)) as client:
        url = f"/v1/models/{MODEL}/sample"
        raw = client.post(url, json=body, headers={"accept": "audio/wav"})
        assert raw.status_code == 200 and raw.headers["content-type"] == "audio/wav"
        with wave.open(io.BytesIO(raw.content)) as w:
            assert (w.getframerate(), w.getnframes()) == (16000, 480)
        again = client.post(url, json={**body, "voice": 1}).json()  # the voice by index; the same seed
        assert base64.b64decode(again["samples"][0]) == raw.content
        other = client.post(url, json={**body, "seed": 5}, headers={"accept": "audio/wav"})
        assert other.content != raw.content
        with client.stream("POST", f"{url}/stream", json={**body, "chunk_ms": 10}) as response:
            assert response.read()[44:] == raw.content[44:]

    async def grpc_stream() -> bytes:
        request = pb.SampleRequest(model=MODEL, n=1, seed=4, seconds=0.03, chunk_ms=10, voice=voice)
        async with grpc_stub(engine, settings) as stub:
            return b"".join([c.pcm async for c in stub.SampleStream(request, timeout=60)])

    assert asyncio.run(asyncio.wait_for(grpc_stream(), 60)) == raw.content[44:]


def test_score_is_the_iwae_bound_of_the_exported_function_under_the_services_noise(engine, run_dir, segment):
    from training.families import vrnn
    from training.train import load_model

    model, _, split = load_model(run_dir)
    log_weight = vrnn.LogWeight(model, vrnn.voice_log_prior(split, model.config.num_classes))
    k, frames = 3, segment.shape[1] // model.config.frame
    eps = np.stack([rng.standard_normal([k, frames, model.config.latent], dtype=np.float32)
                    for rng in row_generators(7, 2)])  # [B, k, T, Dz]: as the service draws it
    with torch.no_grad():
        log_w = np.stack([log_weight(torch.from_numpy(segment), torch.from_numpy(eps[:, i])).double().numpy()
                          for i in range(k)], axis=1)  # [B, k]
    iwae = np.logaddexp.reduce(log_w, axis=1) - np.log(k)
    served = asyncio.run(engine.score(MODEL, segment, method="iwae", k=k, seed=7))
    elbo = asyncio.run(engine.score(MODEL, segment, method="elbo", k=k, seed=7))
    for b, (result, lower) in enumerate(zip(served, elbo, strict=True)):
        assert result["log_likelihood_nats"] == pytest.approx(iwae[b], rel=1e-4)
        assert lower["log_likelihood_nats"] == pytest.approx(log_w[b].mean(), rel=1e-4)
        assert lower["log_likelihood_nats"] <= result["log_likelihood_nats"]  # Jensen, on the same draws
        assert result["is_lower_bound"] and result["k"] == k and result["stderr"] > 0
        assert result["nats_per_sample"] == pytest.approx(-iwae[b] / segment.shape[1], rel=1e-4)


def test_score_and_encode_over_rest_and_grpc(engine, settings, segment):
    wavs = [audio.to_wav(x, 16000) for x in segment]
    wavs_b64 = [base64.b64encode(w).decode() for w in wavs]
    with TestClient(create_app(engine, settings)) as client:
        scored = client.post(f"/v1/models/{MODEL}/score", json={"inputs": wavs_b64, "k": 2, "seed": 3}).json()
        encoded = client.post(f"/v1/models/{MODEL}/encode", json={"inputs": wavs_b64}).json()
        too_many = client.post(f"/v1/models/{MODEL}/score", json={"inputs": wavs_b64[:1], "k": 10_000})
        too_long = client.post(f"/v1/models/{MODEL}/sample", json={"seconds": 10_000})
        short = base64.b64encode(audio.to_wav(segment[0, :100], 16000)).decode()  # not one segment long
        wrong_length = client.post(f"/v1/models/{MODEL}/score", json={"inputs": [wavs_b64[0], short]})
    direct = asyncio.run(engine.encode(MODEL, segment))
    frames = segment.shape[1] // 200
    assert np.array(encoded["mean"]).shape == direct["mean"].shape and direct["mean"].shape[:2] == (2, frames)
    assert np.allclose(encoded["std"], direct["std"], rtol=1e-5) and (direct["std"] > 0).all()
    scored = scored["results"]
    assert [r["log_likelihood_nats"] for r in scored] == pytest.approx(
        [r["log_likelihood_nats"] for r in asyncio.run(engine.score(MODEL, segment, k=2, seed=3))], rel=1e-6)
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "k"
    assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "body.seconds"
    assert wrong_length.status_code == 422 and wrong_length.json()["error"]["field"].endswith("inputs[1]")

    async def grpc_calls():
        async with grpc_stub(engine, settings) as stub:
            return (await stub.Score(pb.ScoreRequest(model=MODEL, wavs=wavs, k=2, seed=3), timeout=60),
                    await stub.Encode(pb.EncodeRequest(model=MODEL, inputs=to_tensor(segment)), timeout=60))

    score, encode = asyncio.run(asyncio.wait_for(grpc_calls(), 60))
    assert [r.log_likelihood_nats for r in score.results] == pytest.approx([r["log_likelihood_nats"] for r in scored])
    assert all(r.is_lower_bound and r.k == 2 for r in score.results)
    assert list(encode.outputs["mean"].shape) == list(direct["mean"].shape)
