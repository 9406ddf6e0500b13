"""A music model served: the engine rolls the step bar by bar (the previous bar as x_prev, a chord per bar) exactly as
the eager model does under the same noise; a seed fixes each row through REST and gRPC; answers are MIDI (base64 in
JSON, or the file itself), a piano-roll PNG or the bars; gRPC streams one bar per chunk; bad bars and chords are
4xx naming the field."""

import asyncio
import base64
import io
import json
from pathlib import Path

import grpc
import mido
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from service.api import create_app
from service.engine import procedures, step_controls
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_array
from service.settings import Settings
from service.store import ModelStore

ROOT = Path(__file__).resolve().parents[2]
CHORDS = ["C", "Am", "F", "G"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The tiny MidiNet run (six chorales, one epoch) exported into a store of its own: (models, run). The parsed
    chorales are cached under the test's own directory, not the user's ~/.cache."""
    pytest.importorskip("music21", reason="music21 (the train extra) reads the chorales")
    from training.data import music
    from training.export import export
    from training.train import train

    root = tmp_path_factory.mktemp("midinet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(music, "CACHE", root / "cache")
        try:
            run = train(ROOT / "training" / "configs" / "midinet-tiny.json", root / "run")
            export(run, root / "models", name="midinet", baseline=False)
        finally:
            torch.set_num_threads(threads)
        yield root / "models", run


def engine(models: Path) -> Engine:
    return Engine(ModelStore(models), Settings(runtime="onnx", intra_op_threads=1))


def test_the_engine_rolls_bars_as_the_eager_model_does(store):
    from training.families import midinet
    from training.train import load_model

    served = engine(store[0])
    x = asyncio.run(served.sample("midinet", 2, 11, 0.8, None, bars=4, step_controls={"chords": CHORDS}))
    model = load_model(store[1])[0]
    cap = served.model("midinet").capability("sample")
    rngs, previous, eager = procedures.row_generators(11, 2), torch.full((2, 16), midinet.REST), []
    names = cap["step_controls"]["chords"]["names"]
    with torch.no_grad():
        for chord in CHORDS:
            noise = torch.from_numpy(procedures.uniform_noise(rngs, cap["noise_shape"]))
            previous = midinet.SampleStep(model)(previous, noise, torch.full((2,), 0.8),
                                                 torch.full((2,), names.index(chord)))
            eager.append(previous.numpy())
    assert x.shape == (2, 4, 16) and np.array_equal(x, np.stack(eager, 1))


def test_a_seed_fixes_each_row_through_rest_and_the_chords_matter(store):
    settings = Settings(host="127.0.0.1", models=store[0], intra_op_threads=1)
    with TestClient(create_app(engine(store[0]), settings)) as client:
        def sample(**body) -> dict:
            reply = client.post("/v1/models/midinet/sample", json={"seed": 5, **body})
            assert reply.status_code == 200, reply.text
            return reply.json()

        three = sample(n=3, format="array", chords=CHORDS)["samples"]
        one = sample(n=1, format="array", chords=CHORDS)["samples"]
        assert np.asarray(three).shape == (3, 4, 16) and one[0] == three[0] and three[1] != three[0]
        assert sample(n=1, format="array", chords=["G", "G", "G", "G"])["samples"] != one
        assert sample(n=1, format="array", bars=4)["samples"] != one  # no chord differs from C Am F G
        default = sample(n=1)  # JSON: a base64 MIDI file, the model's default 8 bars without chords
        midi_file = mido.MidiFile(file=io.BytesIO(base64.b64decode(default["samples"][0])))
        assert default["seed"] == 5 and abs(midi_file.length - 8 * 4 * 60 / 90) < 1e-3
        assert sample(n=1)["samples"] == default["samples"]

        raw = client.post("/v1/models/midinet/sample", json={"seed": 5, "chords": CHORDS},
                          headers={"accept": "audio/midi"})
        assert raw.headers["content-type"] == "audio/midi" and raw.headers["genserve-seed"] == "5"
        assert base64.b64decode(sample(chords=CHORDS)["samples"][0]) == raw.content
        png = client.post("/v1/models/midinet/sample", json={"seed": 5, "bars": 2}, headers={"accept": "image/png"})
        assert png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (2 * 16 * 4, 32 * 4)


@pytest.mark.parametrize("body, field", [
    ({"bars": 0}, "body.bars"), ({"bars": 65}, "bars"), ({"chords": ["C", "H"]}, "chords[1]"),
    ({"bars": 2, "chords": CHORDS}, "chords"), ({"n": 40, "bars": 64}, "bars"), ({"chords": "C"}, "body.chords"),
    ({"n": 2}, "body.n")])
def test_bad_bars_and_chords_are_4xx_naming_the_field(store, body, field):
    settings = Settings(host="127.0.0.1", models=store[0], intra_op_threads=1)
    headers = {"accept": "audio/midi"} if body == {"n": 2} else {}
    with TestClient(create_app(engine(store[0]), settings)) as client:
        reply = client.post("/v1/models/midinet/sample", json=body, headers=headers)
    assert 400 <= reply.status_code < 500 and reply.json()["error"]["field"] == field, reply.text


def test_models_with_a_fixed_number_of_steps_refuse_bars_and_chords():
    for cap in ({"procedure": "ancestral"}, {"procedure": "autoregressive", "steps": 28},
                {"procedure": "markov_chain", "steps": 10, "max_steps": 100}):
        with pytest.raises(InvalidInput) as refused:
            step_controls.plan("m", cap, 1, 3, None)
        assert refused.value.field == "bars"
        with pytest.raises(InvalidInput) as refused:
            step_controls.plan("m", cap, 1, None, {"chords": ["C"]})
        assert refused.value.field == "chords"
        for absent in (None, []):  # gRPC's unset repeated field is []
            assert step_controls.plan("m", cap, 1, None, {"chords": absent}) == (None, {})


def test_grpc_answers_midi_and_streams_one_bar_per_chunk(store):
    settings = Settings(host="127.0.0.1", models=store[0], intra_op_threads=1)

    async def run():
        server = build_grpc_server(engine(store[0]), settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            stub = pb_grpc.GenserveStub(channel)
            request = pb.SampleRequest(model="midinet", n=2, seed=5, chords=CHORDS)
            answer = await stub.Sample(request, timeout=20)
            chunks = [chunk async for chunk in stub.SampleStream(request, timeout=20)]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Sample(pb.SampleRequest(model="midinet", chords=["C", "X"]), timeout=20)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and info.value.details().startswith("chords")
            return answer, chunks
        finally:
            await channel.close()
            await server.stop(grace=None)

    answer, chunks = asyncio.run(asyncio.wait_for(run(), 60))
    samples = to_array(answer.samples, "samples")
    assert samples.shape == (2, 4, 16) and len(answer.midis) == 2
    assert [c.chord for c in chunks] == CHORDS and [c.step for c in chunks] == [0, 1, 2, 3]
    assert np.array_equal(np.stack([to_array(c.values, "values") for c in chunks], 1), samples)
    assert all(len(c.midis) == 2 and c.midis[0].startswith(b"MThd") for c in chunks)
    with TestClient(create_app(engine(store[0]), settings)) as client:
        rest = client.post("/v1/models/midinet/sample", json={"n": 2, "seed": 5, "chords": CHORDS}).json()
        events = client.post("/v1/models/midinet/sample/stream",
                             json={"n": 2, "seed": 5, "chords": CHORDS, "format": "array"}).text
    assert [base64.b64decode(s) for s in rest["samples"]] == list(answer.midis)
    bars = [json.loads(line[6:])["values"] for line in events.splitlines() if line.startswith("data: {\"step\"")]
    assert np.array_equal(np.stack(bars, 1), samples)  # server-sent events: one bar per chunk too


def test_the_manifest_declares_music_data_and_the_melody_metrics(store):
    manifest = json.loads((store[0] / "midinet" / "1" / "manifest.json").read_text())
    assert manifest["data"]["kind"] == "music" and manifest["data"]["rest"] == 32
    sample = manifest["capabilities"]["sample"]
    assert sample["procedure"] == "autoregressive" and sample["step_controls"]["chords"]["default"] == "N"
    from training.data import music

    test = [bars for bars, _ in music.chorales_tiny().pieces_test]  # from the fixture's cache
    in_key = music.statistics(test, music.pitch_class_histogram(test))["in_key"]
    assert manifest["metrics"]["corpus_test_in_key"] == pytest.approx(in_key)
    assert in_key > manifest["metrics"]["random_in_key"]  # chorales in C / Am keep to the key; random pitches do not


def test_the_step_called_directly_refuses_a_chord_index_out_of_range(store):
    """The Open Inference Protocol calls sample_step itself: a chord index outside the names is a 4xx too."""
    feeds = {"x_prev": np.full((1, 16), 32, np.int64), "noise": np.zeros((1, 4 + 33 * 16), np.float32),
             "temperature": np.ones(1, np.float32), "chords": np.array([25])}
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(engine(store[0]).infer("midinet", "sample_step", feeds))
    assert refused.value.field.startswith("chords")
