"""A WaveNet served: seconds and voice, WAV answers, chunked streams that add up to the sample, scoring WAV
uploads (the exact marginal over voices when none is given), prefix completion and the audio metrics.

The tiny model trains on speech synthesized by espeak-ng; without it these tests skip.
"""

import asyncio
import base64
import io
import math
import shutil
import wave

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine import audio
from service.engine.engine import Engine
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.server import build_grpc_server
from service.settings import Settings
from service.store import ModelStore

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed (make speech-deps): no speech to train on")
MODEL = "wavenet"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(runtime="onnx", intra_op_threads=1)


@pytest.fixture(scope="module")
def engine(tiny_audio_store, settings) -> Engine:
    return Engine(ModelStore(tiny_audio_store), settings)


@pytest.fixture(scope="module")
def spec(engine) -> dict:
    return engine.data_spec(MODEL)


def run(coroutine):
    return asyncio.run(coroutine)


def test_manifest_is_audio_with_voices_and_a_chunked_step(spec, engine):
    cap = engine.model(MODEL).capabilities["sample"]
    assert spec["kind"] == "audio" and spec["levels"] == 256 and spec["sample_rate"] == 16000
    assert len(spec["classes"]) >= 2 and cap["procedure"] == "autoregressive" and len(cap["step_shape"]) == 1


def test_sample_length_voice_seed_and_a_stream_that_adds_up_to_it(engine):
    x = run(engine.sample(MODEL, 2, seed=3, temperature=1.0, label=1, length=700))
    assert x.shape == (2, 700) and x.min() >= 0 and x.max() <= 255
    assert np.array_equal(run(engine.sample(MODEL, 1, seed=3, temperature=1.0, label=1, length=700)), x[:1])

    async def stream() -> list[np.ndarray]:
        return [c async for c in engine.sample_stream(MODEL, 2, 3, 1.0, 1, length=700, chunk=160)]

    chunks = run(stream())
    assert [c.shape[1] for c in chunks] == [160] * 4 + [60]
    assert np.array_equal(np.concatenate(chunks, axis=1), x)
    registry = engine.metrics.registry
    assert registry.get_sample_value("genserve_stream_first_chunk_seconds_count", {"model": MODEL}) >= 1
    assert registry.get_sample_value("genserve_audio_generated_seconds_total", {"model": MODEL}) >= 3 * 700 / 16000


def test_scores_per_voice_and_the_exact_marginal_over_voices(engine, spec):
    x = run(engine.sample(MODEL, 2, seed=1, temperature=1.0, label=0, length=400))
    voices = len(spec["classes"])
    per_voice = np.array([[r["log_likelihood_nats"] for r in run(engine.score(MODEL, list(x), [v, v]))]
                          for v in range(voices)])  # [voices, 2]
    marginal = [r for r in run(engine.score(MODEL, list(x)))]
    prior = np.asarray(spec["class_prior"])
    expected = np.logaddexp.reduce(per_voice + np.log(prior)[:, None], axis=0)
    assert [r["log_likelihood_nats"] for r in marginal] == pytest.approx(expected, rel=1e-5)
    assert marginal[0]["bits_per_sample"] == pytest.approx(-expected[0] / (400 * math.log(2)))
    assert marginal[0]["nats_per_sample"] == pytest.approx(marginal[0]["anomaly"]["score"])


def test_complete_keeps_the_prefix(engine):
    prefix = run(engine.sample(MODEL, 1, seed=2, temperature=1.0, label=0, length=300))[0]
    out = run(engine.complete(MODEL, [prefix], None, n=2, seed=5, temperature=1.0, label=0, length=200))
    assert out[0].shape == (2, 500) and (out[0][:, :300] == prefix).all()


def test_rest_wav_file_base64_wav_chunked_stream_and_score(engine, settings, spec):
    with TestClient(create_app(engine, settings)) as client:
        url = f"/v1/models/{MODEL}/sample"
        body = {"seconds": 0.05, "voice": spec["classes"][1], "seed": 4}
        raw = client.post(url, json=body, headers={"accept": "audio/wav"})
        assert raw.status_code == 200 and raw.headers["content-type"] == "audio/wav"
        with wave.open(io.BytesIO(raw.content)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, 800)
        as_json = client.post(url, json={**body, "voice": 1}).json()
        assert base64.b64decode(as_json["samples"][0]) == raw.content

        with client.stream("POST", f"{url}/stream", json={**body, "chunk_ms": 10}) as response:
            assert response.headers["content-type"] == "audio/wav"
            streamed = response.read()
        assert streamed[44:] == raw.content[44:]  # the same PCM; only the header's length differs

        scored = client.post(f"/v1/models/{MODEL}/score", json={"inputs": [as_json["samples"][0]]}).json()
        codes = audio.from_wav(raw.content, 16000, "x")
        want = run(engine.score(MODEL, [codes]))[0]["log_likelihood_nats"]
        assert scored["results"][0]["log_likelihood_nats"] == pytest.approx(want, rel=1e-6)

        completed = client.post(f"/v1/models/{MODEL}/complete",
                                json={"inputs": [as_json["samples"][0]], "seconds": 0.02, "voice": 1}).json()
        with wave.open(io.BytesIO(base64.b64decode(completed["completions"][0][0]))) as w:
            assert w.getnframes() == 800 + 320
        for bad, field in (({"voice": "nobody"}, "body.voice"), ({"seconds": 0.1, "length": 5}, "body.seconds"),
                           ({"n": 2}, "body.n"), ({"seconds": 10_000}, "body.seconds")):
            refused = client.post(url, json=bad, headers={"accept": "audio/wav"})
            assert refused.status_code == 422 and refused.json()["error"]["field"] == field
        too_long = client.post(url, json={"seconds": 10_000}).json()["error"]["message"]
        assert "10000 s; at most" in too_long  # the limit in seconds too (issue 22, item 10)
        too_long = client.post(f"/v1/models/{MODEL}/complete", json={"inputs": [as_json["samples"][0]],
                                                                      "seconds": 10_000}).json()["error"]
        assert too_long["field"] == "body.seconds"


def test_grpc_stream_sends_pcm_chunks_of_the_requested_duration(engine, settings, spec):
    async def main():
        server = build_grpc_server(engine, settings, 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}") as channel:
                stub = pb_grpc.GenserveStub(channel)
                request = pb.SampleRequest(model=MODEL, n=2, seed=6, seconds=0.05, chunk_ms=20,
                                           voice=spec["classes"][0])
                chunks = [c async for c in stub.SampleStream(request, timeout=60)]
                one_shot = pb.SampleRequest()
                one_shot.CopyFrom(request)
                one_shot.ClearField("chunk_ms")  # Sample refuses it: only a stream chunks audio by time
                whole = await stub.Sample(one_shot, timeout=60)
                assert [len(c.pcm) for c in chunks] == [2 * 2 * 320, 2 * 2 * 320, 2 * 2 * 160]
                pcm = np.frombuffer(b"".join(c.pcm for c in chunks), "<i2").reshape(-1, 2).T  # [2, 800]
                for i, wav_bytes in enumerate(whole.wavs):
                    with wave.open(io.BytesIO(wav_bytes)) as w:
                        assert np.array_equal(np.frombuffer(w.readframes(w.getnframes()), "<i2"), pcm[i])
                scored = await stub.Score(pb.ScoreRequest(model=MODEL, wavs=list(whole.wavs)), timeout=60)
                assert len(scored.results) == 2 and all(r.bits_per_dim > 0 for r in scored.results)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Sample(request, timeout=60)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "chunk_ms" in refused.value.details()
        finally:  # a failed check must not leave a server behind: the next test's would hang
            await server.stop(grace=None)

    asyncio.run(asyncio.wait_for(main(), 120))
