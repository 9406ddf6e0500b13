"""A char-RNN served: prompts, lengths, top-k, scoring texts of any length, completion and streaming.

The engine's per-row generators must feed the exported step exactly the noise eager sampling would use,
so served text equals training.families.charrnn.sample_fast under the same noise.
"""

import asyncio
import json
import math

import grpc
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine import text
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.engine.procedures import row_generators
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.server import build_grpc_server
from service.settings import Settings
from service.store import ModelStore

MODEL = "charrnn"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(runtime="onnx", intra_op_threads=1)


@pytest.fixture(scope="module")
def engine(tiny_text_store, settings) -> Engine:
    return Engine(ModelStore(tiny_text_store), settings)


@pytest.fixture(scope="module")
def eager(tiny_text_run):
    from training.train import load_model

    return load_model(tiny_text_run)[0]


@pytest.fixture(scope="module")
def vocabulary(engine) -> list[str]:
    return engine.data_spec(MODEL)["vocabulary"]


def ids(snippet: str, vocabulary: list[str]) -> np.ndarray:
    return text.encode(snippet, vocabulary, "test")


def run(coroutine):
    return asyncio.run(coroutine)


# --- the engine ----------------------------------------------------------------------------------------------------


def test_served_text_equals_eager_sampling_under_the_same_noise(engine, eager, vocabulary):
    """A prompt is clamped, then each character is drawn from the row's own generator, one uniform per step."""
    from training.families.charrnn import sample_fast

    prompt = ids("The ", vocabulary)
    x = run(engine.sample(MODEL, 3, seed=8, temperature=0.9, label=None, length=30, top_k=5, prompt=prompt))
    assert x.shape == (3, 34) and (x[:, :4] == prompt).all()
    noise = np.stack([np.stack([rng.random([1], dtype=np.float32) for _ in range(34)])[:, 0]
                      for rng in row_generators(8, 3)])  # [3, 34]
    observed = np.zeros((3, 34), np.int64)
    observed[:, :4] = prompt
    mask = (observed * 0 + (np.arange(34) < 4)).astype(np.int64)
    expected = sample_fast(eager, torch.from_numpy(noise), torch.full((3,), 0.9), torch.full((3,), 5),
                           torch.from_numpy(observed), torch.from_numpy(mask)).numpy()
    assert np.mean(x == expected) > 0.97  # ONNX vs eager float32 may flip a draw at a CDF edge, rarely


def test_sample_is_seeded_per_row_and_top_k_1_is_greedy(engine):
    three = run(engine.sample(MODEL, 3, seed=2, temperature=1.0, label=None, length=20))
    assert three.shape == (3, 20)
    assert np.array_equal(run(engine.sample(MODEL, 1, seed=2, temperature=1.0, label=None, length=20)), three[:1])
    greedy = [run(engine.sample(MODEL, 2, seed=s, temperature=1.0, label=None, length=15, top_k=1)) for s in (0, 1)]
    assert (greedy[0] == greedy[0][0]).all() and np.array_equal(greedy[0], greedy[1])  # the argmax, whatever the noise
    default = run(engine.sample(MODEL, 1, seed=0, temperature=1.0, label=None))
    assert default.shape == (1, engine.model(MODEL).capabilities["sample"]["steps"])


def test_complete_continues_each_prefix_like_a_prompted_sample(engine, vocabulary):
    prefixes = [ids("def f(x):", vocabulary), ids("import", vocabulary)]
    out = run(engine.complete(MODEL, prefixes, None, n=2, seed=5, temperature=1.0, length=12))
    assert [o.shape for o in out] == [(2, 21), (2, 18)]
    assert all((o[:, : len(p)] == p).all() for o, p in zip(out, prefixes, strict=True))
    # input 0's completion i uses generator i of the seed, as sample i with that prompt does
    alone = run(engine.sample(MODEL, 2, seed=5, temperature=1.0, label=None, length=12, prompt=prefixes[0]))
    assert np.array_equal(out[0], alone)


def test_scores_equal_eager_log_prob_for_texts_of_any_length(engine, eager, vocabulary):
    snippets = ["The list type.", "a", "zzzz#zzzz#zzzz#", "Return the value."]
    results = run(engine.score(MODEL, [ids(s, vocabulary) for s in snippets]))
    calibration = engine.model(MODEL).manifest["calibration"]
    for snippet, result in zip(snippets, results, strict=True):
        with torch.no_grad():
            expected = eager.log_prob(torch.from_numpy(ids(snippet, vocabulary))[None]).item()
        nll = -result["log_likelihood_nats"]
        assert result["log_likelihood_nats"] == pytest.approx(expected, rel=1e-4)
        assert result["bits_per_dim"] == pytest.approx(nll / (len(snippet) * math.log(2)))
        per_char = nll / len(snippet)
        assert result["anomaly"]["score"] == pytest.approx(per_char)
        assert result["anomaly"]["percentile"] == pytest.approx(
            100 * np.interp(per_char, calibration["values"], calibration["quantiles"]))


@pytest.mark.parametrize("call, field", [
    (lambda e, v: e.sample(MODEL, 1, 0, 1.0, None, length=0), "length"),
    (lambda e, v: e.sample(MODEL, 1, 0, 1.0, None, length=10**9), "length"),
    (lambda e, v: e.sample(MODEL, 1, 0, 1.0, None, prompt=np.array([len(v)])), "prompt"),
    (lambda e, v: e.sample(MODEL, 1, 0, 1.0, 3), "label"),
    (lambda e, v: e.score(MODEL, [np.array([1, 2]), np.zeros(0, np.int64)]), "inputs[1]"),
    (lambda e, v: e.score(MODEL, [np.array([1, -1])]), "inputs[0]"),
    (lambda e, v: e.complete(MODEL, [np.array([1])], np.array([1]), 1, 0, 1.0), "mask"),
    (lambda e, v: e.complete(MODEL, [np.array([1]), np.zeros(0, np.int64)], None, 1, 0, 1.0), "inputs[1]"),
])
def test_bad_requests_name_the_field(engine, vocabulary, call, field):
    with pytest.raises(InvalidInput) as info:
        run(call(engine, vocabulary))
    assert info.value.field == field


# --- REST ----------------------------------------------------------------------------------------------------------


def events(body: str) -> list[tuple[str, dict]]:
    """Server-sent events -> [(event, data)]."""
    parsed = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        parsed.append((fields["event"], json.loads(fields["data"])))
    return parsed


def test_rest_text_sample_score_complete_and_server_sent_events(engine, settings):
    with TestClient(create_app(engine, settings)) as client:
        body = {"n": 2, "seed": 3, "prompt": "The ", "length": 25, "top_k": 8, "temperature": 0.8}
        samples = client.post(f"/v1/models/{MODEL}/sample", json=body).json()["samples"]
        assert len(samples) == 2 and all(s.startswith("The ") and len(s) == 29 for s in samples)

        with client.stream("POST", f"/v1/models/{MODEL}/sample/stream", json=body) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            streamed = events(response.read().decode())
        chunks = [data for name, data in streamed if name == "chunk"]
        assert [c["step"] for c in chunks] == list(range(29))
        assert ["".join(c["text"][i] for c in chunks) for i in range(2)] == samples
        assert streamed[-1] == ("done", {"model": MODEL, "version": 1, "seed": 3, "steps": 29})

        scored = client.post(f"/v1/models/{MODEL}/score", json={"inputs": ["The list.", "x"]}).json()["results"]
        assert [r["method"] for r in scored] == ["exact", "exact"]
        completed = client.post(f"/v1/models/{MODEL}/complete",
                                json={"inputs": ["def ", "if"], "n": 3, "length": 5, "seed": 1}).json()
        assert [[len(c) for c in per] for per in completed["completions"]] == [[9] * 3, [7] * 3]

        refused = client.post(f"/v1/models/{MODEL}/sample/stream", json={"prompt": "caf\u00e9"})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "body.prompt"
        ids_out = client.post(f"/v1/models/{MODEL}/sample", json={"format": "array", "length": 4}).json()
        assert len(ids_out["samples"][0]) == 4 and all(isinstance(i, int) for i in ids_out["samples"][0])


# --- gRPC ----------------------------------------------------------------------------------------------------------


def test_grpc_text_stream_adds_up_to_sample_and_texts_score(engine, settings):
    async def main():
        server = build_grpc_server(engine, settings, 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}") as channel:
                stub = pb_grpc.GenserveStub(channel)
                request = pb.SampleRequest(model=MODEL, n=2, seed=4, prompt="if ", length=10, top_k=3)
                whole = await stub.Sample(request, timeout=30)
                chunks = [c async for c in stub.SampleStream(request, timeout=30)]
                assert len(whole.texts) == 2 and all(t.startswith("if ") and len(t) == 13 for t in whole.texts)
                assert ["".join(c.texts[i] for c in chunks) for i in range(2)] == list(whole.texts)
                scored = await stub.Score(pb.ScoreRequest(model=MODEL, texts=["The list.", "x"]), timeout=30)
                want = await engine.score(MODEL, [text.encode(s, engine.data_spec(MODEL)["vocabulary"], "t")
                                                  for s in ["The list.", "x"]])
                assert [r.log_likelihood_nats for r in scored.results] == pytest.approx(
                    [r["log_likelihood_nats"] for r in want])
                completed = await stub.Complete(pb.CompleteRequest(model=MODEL, texts=["def "], n=2, length=4, seed=1),
                                                timeout=30)
                assert [len(t) for t in completed.texts] == [8, 8]
                assert all(t.startswith("def ") for t in completed.texts)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Score(pb.ScoreRequest(model=MODEL, texts=["ok", "caf\u00e9"]), timeout=30)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert info.value.details().startswith("texts[1]")
        finally:  # a failed check must not leave a server behind: the next test's would hang
            await server.stop(grace=None)

    asyncio.run(asyncio.wait_for(main(), 120))


def test_sequences_longer_than_the_limit_are_refused(tiny_text_store):
    limited = Engine(ModelStore(tiny_text_store), Settings(runtime="onnx", intra_op_threads=1, max_sequence_length=8))
    with pytest.raises(InvalidInput) as info:
        run(limited.score(MODEL, [np.ones(8, np.int64), np.ones(9, np.int64)]))
    assert info.value.field == "inputs[1]"
    with pytest.raises(InvalidInput) as info:
        run(limited.sample(MODEL, 1, 0, 1.0, None, length=5, prompt=np.ones(4, np.int64)))
    assert info.value.field == "length"
    assert run(limited.sample(MODEL, 1, 0, 1.0, None, length=4, prompt=np.ones(4, np.int64))).shape == (1, 8)


def test_an_unprompted_sample_plans_no_observed_values(engine):
    """Without a prompt nothing is observed: no [rows, values] zeros are made and held for the request's life (for
    2 rows of 20 s of audio they were 7.5 MB, which a cancelled stream's garbage cycles kept until a full collection:
    the API process grew about 3 MB per cut stream). Served text still equals eager sampling (the test above)."""
    m = engine.model(MODEL)
    cap = m.capability("sample")
    steps, observed, mask, values = engine._plan(m, cap, None, 50, 2)
    assert (observed, mask, values) == (None, None, 50)
    steps, observed, mask, values = engine._plan(m, cap, np.array([1, 2]), 50, 2)
    assert observed.shape == (2, steps * math.prod(cap["step_shape"])) and values == 52
    assert mask[:, :2].all() and not mask[:, 2:].any() and (observed[:, :2] == [1, 2]).all()
