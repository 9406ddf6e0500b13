"""A state-space model (the tiny DVBF) served: encode, predict (arrays, animations, a gRPC stream) and sample
under actions, through the engine, REST and gRPC. The served roll-outs equal the eager model's; the same seed
gives the same samples whatever n; bad input is a 4xx naming the field."""

import asyncio
import base64
import io
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from service.api import create_app
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_array, to_tensor
from service.settings import Settings
from service.store import ModelStore
from training.data.pendulum import simulate

ROOT = Path(__file__).resolve().parents[2]
OBSERVED, STEPS = 4, 5  # frames observed, frames predicted


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The tiny DVBF run exported: (models directory, run directory)."""
    from training.export import export
    from training.train import train

    root = tmp_path_factory.mktemp("dvbf")
    run = train(ROOT / "training" / "configs" / "dvbf-tiny.json", root / "run")
    export(run, root / "models", name="dvbf", baseline=False)
    return root / "models", run


@pytest.fixture(scope="module")
def sequences():
    """Two sequences of OBSERVED + STEPS frames and their actions: ([2, T, 1, 16, 16] levels, [2, T, 1])."""
    x, u, _ = simulate(2, OBSERVED + STEPS, seed=7)
    return x, u


def settings_for(store) -> Settings:
    return Settings(host="127.0.0.1", models=store[0], intra_op_threads=1, runtime="onnx")


def test_served_prediction_and_states_equal_the_eager_model(store, sequences):
    from training.train import load_model

    model = load_model(store[1])[0]
    x, u = sequences
    engine = Engine(ModelStore(store[0]), settings_for(store))
    out = asyncio.run(engine.predict("dvbf", x[:, :OBSERVED], u[:, :OBSERVED - 1 + STEPS]))
    with torch.no_grad():
        eager = model.predict(torch.from_numpy(x[:, :OBSERVED]).long(), torch.from_numpy(u), STEPS)
        means = model.noise(2, x.shape[1], torch.zeros)
        states = model.filter(torch.from_numpy(x).long(), torch.from_numpy(u), *means)[0]
    assert out["frames"].shape == (2, STEPS, 1, 16, 16) and out["states"].shape == (2, OBSERVED + STEPS, 3)
    assert np.abs(out["frames"].reshape(2, STEPS, -1) - eager.numpy() * 255).max() <= 0.5 + 1e-3  # rounded
    assert np.allclose(out["states"][:, :OBSERVED], states[:, :OBSERVED].numpy(), atol=1e-4)
    encoded = asyncio.run(engine.encode("dvbf", x, actions=u[:, :-1]))["mean"]
    assert np.allclose(encoded, states.numpy(), atol=1e-4)  # encode: the filtered states of every frame


def test_rest_predict_encode_and_sample(store, sequences):
    x, u = sequences
    settings = settings_for(store)
    frames, actions = x[:, :OBSERVED, 0].tolist(), u[:, :OBSERVED - 1 + STEPS].tolist()
    with TestClient(create_app(Engine(ModelStore(store[0]), settings), settings)) as client:
        reply = client.post("/v1/models/dvbf/predict", json={"inputs": frames, "actions": actions})
        assert reply.status_code == 200, reply.text
        predicted = np.asarray(reply.json()["frames"])  # [2, S, 16, 16]
        assert predicted.shape == (2, STEPS, 16, 16)
        as_png = client.post("/v1/models/dvbf/predict", json={"inputs": frames[:1], "actions": actions[0]},
                             headers={"accept": "image/png"})
        assert as_png.headers["content-type"] == "image/png"
        animation = Image.open(io.BytesIO(as_png.content))
        assert animation.n_frames == STEPS
        for t in range(STEPS):  # an animated PNG is lossless
            animation.seek(t)
            assert np.array_equal(np.asarray(animation.convert("L")), predicted[0, t])
        preferring_json = client.post("/v1/models/dvbf/predict", json={"inputs": frames[:1], "actions": actions[0]},
                                      headers={"accept": "image/gif;q=0.5, application/json"})  # q: JSON wins
        assert preferring_json.headers["content-type"] == "application/json"
        gif = client.post("/v1/models/dvbf/predict", json={"inputs": frames, "actions": actions, "format": "gif"})
        assert Image.open(io.BytesIO(base64.b64decode(gif.json()["frames"][1]))).n_frames == STEPS
        encoded = client.post("/v1/models/dvbf/encode", json={"inputs": x[:, :, 0].tolist(),
                                                               "actions": u[:, :-1].tolist()})
        assert np.allclose(np.asarray(encoded.json()["mean"])[:, :OBSERVED],
                           np.asarray(reply.json()["states"])[:, :OBSERVED], atol=1e-5)
        samples = [np.asarray(client.post("/v1/models/dvbf/sample", json={
            "n": n, "seed": 11, "actions": u[0, :STEPS].tolist()}).json()["samples"]) for n in (2, 3, 2)]
        assert samples[0].shape == (2, STEPS + 1, 16, 16)
        assert np.array_equal(samples[0], samples[2]) and np.array_equal(samples[0], samples[1][:2])  # seeded
        assert not np.array_equal(samples[1][0], samples[1][1])  # each sample its own noise


@pytest.mark.parametrize(("body", "field"), [
    ({"actions": np.zeros((2, OBSERVED + STEPS, 1, 1)).tolist()}, "actions"),  # a wrong action shape
    ({"actions": np.zeros((OBSERVED - 2, 1)).tolist()}, "actions"),  # fewer than the observed frames need
    ({"actions": np.zeros((500, 1)).tolist()}, "actions"),  # too many steps
    ({"actions": np.zeros((STEPS, 1)).tolist(), "inputs": [[[[0] * 16] * 16]] * 2}, "inputs"),  # one frame
    ({"actions": np.zeros((STEPS, 1)).tolist(), "format": "jpeg"}, "body.format"),
    ({"actions": np.zeros((OBSERVED - 1, 1)).tolist(), "format": "png"}, "actions"),  # no frame to animate
])
def test_rest_refuses_bad_input_naming_the_field(store, sequences, body, field):
    settings = settings_for(store)
    request = {"inputs": sequences[0][:, :OBSERVED, 0].tolist(), **body}
    with TestClient(create_app(Engine(ModelStore(store[0]), settings), settings)) as client:
        reply = client.post("/v1/models/dvbf/predict", json=request)
    assert reply.status_code == 422 and field in reply.text, reply.text


def test_sample_needs_actions_and_other_models_take_none(store):
    engine = Engine(ModelStore(store[0]), settings_for(store))
    with pytest.raises(InvalidInput) as info:
        asyncio.run(engine.sample("dvbf", 2, 0, 1.0, None))
    assert info.value.field == "actions"
    with pytest.raises(InvalidInput) as info:
        asyncio.run(engine.sample("dvbf", 2, 0, 0.5, None, actions=np.zeros((3, 1))))
    assert info.value.field == "temperature"
    with pytest.raises(InvalidInput) as info:  # a per-step control is refused, not ignored
        asyncio.run(engine.sample("dvbf", 2, 0, 1.0, None, actions=np.zeros((3, 1)), step_controls={"chords": ["C"]}))
    assert info.value.field == "chords"


def test_predict_refuses_more_sequences_or_frames_than_allowed_naming_inputs(store, sequences):
    engine = Engine(ModelStore(store[0]), settings_for(store))
    x = sequences[0][:1, :OBSERVED]
    most = engine.settings.max_inputs_per_request
    with pytest.raises(InvalidInput) as info:
        asyncio.run(engine.predict("dvbf", np.repeat(x, most + 1, 0), np.zeros((OBSERVED - 1 + STEPS, 1))))
    assert info.value.field == "inputs" and str(most) in info.value.message
    longest = engine.model("dvbf").capability("predict")["max_steps"]
    with pytest.raises(InvalidInput) as info:
        asyncio.run(engine.predict("dvbf", np.zeros((1, longest + 1, 1, 16, 16), np.int64), np.zeros((longest, 1))))
    assert info.value.field == "inputs"


def test_grpc_predict_stream_and_sample_agree_with_rest(store, sequences):
    x, u = sequences
    settings = settings_for(store)
    request = pb.PredictRequest(model="dvbf", inputs=to_tensor(x[:, :OBSERVED]),
                                actions=to_tensor(u[:, :OBSERVED - 1 + STEPS]))

    async def over_grpc():
        server = build_grpc_server(Engine(ModelStore(store[0]), settings), settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            stub = pb_grpc.GenserveStub(channel)
            whole = await stub.Predict(request, timeout=20)
            chunks = [chunk async for chunk in stub.PredictStream(request, timeout=20)]
            sample = await stub.Sample(pb.SampleRequest(model="dvbf", n=2, seed=11,
                                                        actions=to_tensor(u[0, :STEPS])), timeout=20)
            encoded = await stub.Encode(pb.EncodeRequest(model="dvbf", inputs=request.inputs,
                                                         actions=to_tensor(u[:, :OBSERVED - 1])), timeout=20)
            unrolled = await stub.Predict(pb.PredictRequest(model="dvbf", inputs=request.inputs,  # S = 0
                                                            actions=to_tensor(u[:, :OBSERVED - 1])), timeout=20)
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.Predict(pb.PredictRequest(model="dvbf", inputs=request.inputs,
                                                     actions=to_tensor(np.zeros((500, 1), np.float32))), timeout=20)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "actions" in bad.value.details()
            return whole, chunks, sample, encoded, unrolled
        finally:
            await channel.close()
            await server.stop(grace=None)

    whole, chunks, sample, encoded, unrolled = asyncio.run(over_grpc())
    frames = to_array(whole.frames, "frames")
    filtered = to_array(encoded.outputs["mean"], "mean")  # the observed frames' filtered states, as Predict's
    assert np.allclose(filtered, to_array(whole.states, "states")[:, :OBSERVED], atol=1e-5)
    assert frames.shape == (2, STEPS, 1, 16, 16)
    assert to_array(whole.states, "states").shape == (2, OBSERVED + STEPS, 3)
    assert [c.step for c in chunks] == list(range(1, STEPS + 1)) and {c.steps for c in chunks} == {STEPS}
    assert np.array_equal(np.stack([to_array(c.frames, "frames") for c in chunks], 1), frames)
    with TestClient(create_app(Engine(ModelStore(store[0]), settings), settings)) as client:
        rest = client.post("/v1/models/dvbf/sample", json={"n": 2, "seed": 11, "actions": u[0, :STEPS].tolist()})
        rest_unrolled = client.post("/v1/models/dvbf/predict", json={"inputs": x[:, :OBSERVED, 0].tolist(),
                                                                      "actions": u[:, :OBSERVED - 1].tolist()})
    assert np.array_equal(to_array(sample.samples, "samples")[:, :, 0], np.asarray(rest.json()["samples"]))
    # S = 0 answers alike: the filtered states, and no frame (REST [[], []]; gRPC [2, 0, 1, 16, 16], no bytes)
    assert rest_unrolled.status_code == 200 and rest_unrolled.json()["frames"] == [[], []]
    assert list(unrolled.frames.shape) == [2, 0, 1, 16, 16] and unrolled.frames.data == b""
    assert np.allclose(to_array(unrolled.states, "states"), rest_unrolled.json()["states"], atol=1e-6)
