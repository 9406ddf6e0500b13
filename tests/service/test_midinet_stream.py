"""A music stream on the shipped midinet: each chunk carries every sample's melody so far as a MIDI file, so a note
held across a bar line stays one note and the last chunk's file is, byte for byte, the file a sample request
answers with the same seed (REST server-sent events and gRPC SampleStream); gRPC chunks say how many bars come."""

import asyncio
import base64
import io
import json
import shutil
from pathlib import Path

import grpc
import mido
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine import midi
from service.engine.engine import Engine
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_array
from service.settings import Settings
from service.store import ModelStore
from tests.service.test_midi import SPEC, R, read_notes

MODELS = Path(__file__).resolve().parents[2] / "models"
SEEDS = range(6)
N = 2


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("models")
    shutil.copytree(MODELS / "midinet", store / "midinet")
    return store


@pytest.fixture(scope="module")
def settings(store) -> Settings:
    return Settings(host="127.0.0.1", models=store, intra_op_threads=1)


def engine(store: Path) -> Engine:
    return Engine(ModelStore(store), Settings(runtime="onnx", intra_op_threads=1))


def held_across_a_bar_line(bars: np.ndarray) -> bool:
    """Whether some note of one sample's bars [T, 16] sounds on both sides of a bar line."""
    return any(start // 16 != (start + length - 1) // 16 for _, start, length in midi.notes(bars, SPEC))


def mido_file(bars: np.ndarray) -> bytes:
    """The file as mido writes it from the same notes (the reference the codec's own writer must match)."""
    ticks = midi.TICKS_PER_BEAT // SPEC["steps_per_beat"]
    events = sorted([(s * ticks, 0, "note_on", p) for p, s, _ in midi.notes(bars, SPEC)]
                    + [((s + n) * ticks, -1, "note_off", p) for p, s, n in midi.notes(bars, SPEC)])
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(SPEC["tempo_bpm"]), time=0),
                            mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0)])
    now = 0
    for time, _, kind, pitch in events:
        track.append(mido.Message(kind, note=pitch, velocity=midi.VELOCITY if kind == "note_on" else 0,
                                  time=time - now))
        now = time
    track.append(mido.MetaMessage("end_of_track", time=np.asarray(bars).size * ticks - now))
    out = io.BytesIO()
    mido.MidiFile(type=0, ticks_per_beat=midi.TICKS_PER_BEAT, tracks=[track]).save(file=out)
    return out.getvalue()


def test_a_melody_given_bar_by_bar_is_its_file_so_far_and_mido_writes_the_same_bytes():
    bars = np.array([[0] * 4 + [2] * 12,  # the 2 is held into the next bar
                     [2] * 4 + [R] * 8 + [31] * 4,  # the 31 is held to the end
                     [31] * 16,
                     [5, 6, 5, 6] * 4])
    assert held_across_a_bar_line(bars)
    melody = midi.Melody(SPEC)
    for t in range(len(bars)):
        assert melody.add(bars[t]).file() == midi.to_midi(bars[: t + 1], SPEC) == mido_file(bars[: t + 1])
    assert read_notes(midi.to_midi(bars, SPEC))[0] == [(55, 0, 4), (57, 4, 16), (86, 28, 20), *(
        (55 + p, 48 + s, 1) for s, p in enumerate([5, 6] * 8))]
    rng = np.random.default_rng(0)
    for _ in range(20):  # long runs of few pitches, and rests
        rows = np.repeat(rng.choice([0, 7, 31, R], size=(5, 8)), 2, axis=1)
        assert midi.to_midi(rows, SPEC) == mido_file(rows)


def rest_stream(client: TestClient, seed: int) -> tuple[list[list[str]], list[bytes]]:
    """(each chunk's base64 MIDI files, the sample request's files) for one seed."""
    body = {"n": N, "seed": seed}
    events = client.post("/v1/models/midinet/sample/stream", json=body).text
    chunks = [json.loads(line[6:])["values"] for line in events.splitlines() if line.startswith('data: {"step"')]
    reply = client.post("/v1/models/midinet/sample", json=body)
    assert reply.status_code == 200, reply.text
    return chunks, [base64.b64decode(s) for s in reply.json()["samples"]]


def test_a_rest_stream_ends_with_the_sample_files_and_holds_notes_across_bar_lines(store, settings):
    served, held = engine(store), 0
    with TestClient(create_app(served, settings)) as client:
        for seed in SEEDS:
            chunks, files = rest_stream(client, seed)
            bars = asyncio.run(served.sample("midinet", N, seed, 1.0, None))  # [N, 8, 16]
            assert len(chunks) == 8 and [base64.b64decode(f) for f in chunks[-1]] == files
            for t, chunk in enumerate(chunks):  # each chunk: the melody so far
                assert [base64.b64decode(f) for f in chunk] == [midi.to_midi(b[: t + 1], SPEC) for b in bars]
            for sample, file in zip(bars, files, strict=True):
                assert read_notes(file)[0] == midi.notes(sample, SPEC)
                held += held_across_a_bar_line(sample)
    assert held >= 3  # the seeds hold notes across bar lines: a stream that split them would fail above


def test_a_grpc_stream_ends_with_the_sample_files_and_says_how_many_bars_come(store, settings):
    async def run() -> list[tuple[pb.SampleResponse, list[pb.SampleChunk]]]:
        server = build_grpc_server(engine(store), settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            stub, out = pb_grpc.GenserveStub(channel), []
            for request in [pb.SampleRequest(model="midinet", n=N, seed=seed) for seed in SEEDS] + [
                    pb.SampleRequest(model="midinet", n=1, seed=1, bars=3),
                    pb.SampleRequest(model="midinet", n=1, seed=1, chords=["C", "G", "Am", "F", "C"])]:
                out.append((await stub.Sample(request, timeout=20),
                            [chunk async for chunk in stub.SampleStream(request, timeout=20)]))
            return out
        finally:
            await channel.close()
            await server.stop(grace=None)

    answers, held = asyncio.run(asyncio.wait_for(run(), 120)), 0
    for answer, chunks in answers:
        samples = to_array(answer.samples, "samples")
        bars = samples.shape[1]
        assert [c.step for c in chunks] == list(range(bars)) and {c.steps for c in chunks} == {bars}
        assert list(chunks[-1].midis) == list(answer.midis)
        for t, chunk in enumerate(chunks):
            assert list(chunk.midis) == [midi.to_midi(s[: t + 1], SPEC) for s in samples]
        held += sum(held_across_a_bar_line(s) for s in samples)
    assert [to_array(a.samples, "samples").shape[1] for a, _ in answers[-2:]] == [3, 5]
    assert held >= 3
