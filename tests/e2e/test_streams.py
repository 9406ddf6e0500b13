"""Streaming end to end on a real `genserve serve` (worker process included): text as server-sent events and
gRPC chunks, audio as a chunked WAV file and gRPC PCM chunks; each stream adds up to the unstreamed answer."""

import io
import json
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from test_faults import metric
from test_server import REPO, free_port, server_env, stop, wait_ready

from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc

HAS_ESPEAK = shutil.which("espeak-ng") is not None


@pytest.fixture(scope="module")
def store(tiny_text_store, request, tmp_path_factory) -> Path:
    """charrnn, and wavenet where espeak-ng can make its training speech."""
    models = tmp_path_factory.mktemp("stream-models")
    shutil.copytree(tiny_text_store / "charrnn", models / "charrnn")
    if HAS_ESPEAK:
        shutil.copytree(request.getfixturevalue("tiny_audio_store") / "wavenet", models / "wavenet")
    return models


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """(base URL, gRPC target) of a running server; the process is always stopped at teardown."""
    logs = tmp_path_factory.mktemp("stream-server")
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "genserve", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--grpc-port", str(grpc_port), "--models", str(store)]
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        process = subprocess.Popen(command, cwd=REPO, env=server_env(), stdout=out, stderr=err,
                                   stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base, logs)
        yield base, f"127.0.0.1:{grpc_port}"
    finally:
        stop(process)


def sse(body: str) -> list[tuple[str, str]]:
    """Server-sent events -> [(event, data)]."""
    return [tuple(line.split(": ", 1)[1] for line in block.splitlines()) for block in body.strip().split("\n\n")]


def test_text_streams_over_rest_and_grpc_add_up_to_the_sample(server):
    base, target = server
    body = {"n": 2, "seed": 5, "prompt": "The ", "length": 30, "top_k": 10}
    with httpx.Client(base_url=base, timeout=60) as client:
        whole = client.post("/v1/models/charrnn/sample", json=body).json()["samples"]
        with client.stream("POST", "/v1/models/charrnn/sample/stream", json=body) as response:
            assert response.status_code == 200
            events = sse(response.read().decode())
    chunks = [json.loads(data)["text"] for event, data in events if event == "chunk"]
    assert len(chunks) == 34 and events[-1][0] == "done"
    assert ["".join(c[i] for c in chunks) for i in range(2)] == whole

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GenserveStub(channel)
        request = pb.SampleRequest(model="charrnn", n=2, seed=5, prompt="The ", length=30, top_k=10)
        streamed = list(stub.SampleStream(request, timeout=60))
    assert ["".join(c.texts[i] for c in streamed) for i in range(2)] == whole


def test_a_client_that_leaves_a_text_stream_stops_its_generation(server):
    base, _target = server
    labels = {"model": "charrnn", "function": "sample_step"}
    with httpx.Client(base_url=base, timeout=60) as client:
        with client.stream("POST", "/v1/models/charrnn/sample/stream", json={"length": 100_000, "seed": 1}) as response:
            lines = response.iter_lines()
            assert next(lines) == "event: chunk"  # generating; then the client closes the connection
    gone = time.monotonic()
    while metric(base, "genserve_inference_inflight_request_count", **labels) > 0:
        assert time.monotonic() - gone < 5, "the abandoned stream still holds its rows"
        time.sleep(0.05)
    steps = metric(base, "genserve_inference_exec_count_total", **labels)
    time.sleep(0.5)
    assert metric(base, "genserve_inference_exec_count_total", **labels) == steps  # nothing runs any more
    assert metric(base, "genserve_inference_request_total", outcome="cancelled", **labels) >= 1


@pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng is not installed (make speech-deps): no tiny WaveNet")
def test_audio_streams_over_rest_and_grpc_add_up_to_the_sample(server):
    base, target = server
    body = {"seconds": 0.1, "voice": 1, "seed": 2}
    with httpx.Client(base_url=base, timeout=60) as client:
        wav_file = client.post("/v1/models/wavenet/sample", json=body, headers={"accept": "audio/wav"}).content
        with client.stream("POST", "/v1/models/wavenet/sample/stream", json={**body, "chunk_ms": 20}) as response:
            assert response.headers["content-type"] == "audio/wav"
            parts = list(response.iter_bytes())
    with wave.open(io.BytesIO(wav_file)) as w:
        pcm = w.readframes(w.getnframes())
    assert len(pcm) == 2 * 1600
    assert b"".join(parts) == wav_file  # the header declares the whole file, as the unstreamed answer's does
    assert int(response.headers["content-length"]) == len(wav_file)

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GenserveStub(channel)
        chunks = list(stub.SampleStream(pb.SampleRequest(model="wavenet", seed=2, seconds=0.1, label=1, chunk_ms=20),
                                        timeout=60))
    assert [len(c.pcm) for c in chunks] == [2 * 320] * 5
    assert np.array_equal(np.frombuffer(b"".join(c.pcm for c in chunks), "<i2"), np.frombuffer(pcm, "<i2"))


@pytest.mark.skipif(not HAS_ESPEAK, reason="the tiny WaveNet trains on speech from espeak-ng, which is not installed")
def test_an_audio_stream_cut_by_the_deadline_ends_short_of_its_declared_length(store, tmp_path):
    """Issue 15, defect 5: a client tells a cut WAV stream from a whole one by the length its headers declared."""
    port = free_port()
    command = [sys.executable, "-m", "genserve", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--grpc-port", str(free_port()), "--models", str(store)]
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        process = subprocess.Popen(command, cwd=REPO, env={**server_env(), "GENSERVE_TIMEOUT_MS": "3000"},
                                   stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base, tmp_path)
        received = b""
        with httpx.Client(base_url=base, timeout=60) as client:
            for _ in range(60):  # the first calls may time out while the step's kernel compiles (once per machine)
                if client.post("/v1/models/wavenet/sample", json={"length": 16}).status_code == 200:
                    break
                time.sleep(1)
            body = {"seconds": 30.0, "n": 8, "voice": 0, "seed": 1}  # far more than 3 s of work
            with client.stream("POST", "/v1/models/wavenet/sample/stream", json=body) as response:
                declared = int(response.headers["content-length"])
                cut = False
                try:
                    for part in response.iter_bytes():
                        received += part
                except httpx.RemoteProtocolError:  # the connection ended before the declared length
                    cut = True
            assert cut, f"the stream was not cut: {len(received)} of {declared} bytes"
            assert 44 < len(received) < declared == 44 + 2 * 8 * 30 * 16000
            assert client.get("/healthz").status_code == 200
        assert "audio stream cut short (deadline_exceeded)" in (tmp_path / "stderr").read_text()
    finally:
        stop(process)
