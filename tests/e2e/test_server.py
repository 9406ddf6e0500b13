"""A real `genserve serve` subprocess over the tiny store, driven over HTTP on 127.0.0.1."""

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
MODEL = "pixelcnn"
START_TIMEOUT_S = 60.0
MAX_BODY = 256 * 1024  # GENSERVE_MAX_BODY_BYTES of the test server; small, so refused bodies fit socket buffers
SHAPE = (28, 28)  # the tiny model's [1, 28, 28] travels as [28][28]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(models: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "genserve", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--grpc-port", str(free_port()), "--models", str(models)]


def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    env.update(GENSERVE_INTRA_OP_THREADS="1", GENSERVE_MAX_BODY_BYTES=str(MAX_BODY), PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1")
    return env


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_ready(process: subprocess.Popen, base: str, logs: Path) -> None:
    """Wait (bounded) until the server at `base` answers /readyz; fail with its stderr if it dies or stalls."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{(logs / 'stderr').read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"server not ready in {START_TIMEOUT_S} s:\n{(logs / 'stderr').read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    """The base URL of a running server; the process is always stopped at teardown."""
    logs = tmp_path_factory.mktemp("server")
    port = free_port()
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        process = subprocess.Popen(serve_command(tiny_store, port), cwd=REPO, env=server_env(),
                                   stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base, logs)
        yield base
    finally:
        stop(process)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=30.0) as c:
        yield c


def check_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    return error


def png_levels(text: str) -> np.ndarray:
    """base64 PNG of a binary image -> [H, W] levels 0/1."""
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("L"))
    assert set(np.unique(pixels)) <= {0, 255}
    return (pixels // 255).astype(np.int64)


def sample(client: httpx.Client, **body) -> dict:
    response = client.post(f"/v1/models/{MODEL}/sample", json=body)
    assert response.status_code == 200, response.text
    return response.json()


# --- the contract ------------------------------------------------------------------------------------------------


def test_health(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_models(client):
    response = client.get("/v1/models")
    assert response.status_code == 200
    [model] = response.json()["models"]
    assert model["name"] == MODEL and model["version"] == 1 and model["family"] == "pixelcnn"
    assert set(model["capabilities"]) == {"sample", "score", "complete"}
    assert model["data"]["shape"] == [1, *SHAPE] and model["data"]["levels"] == 2
    assert model["metrics"]["test_nll_nats"] > 0
    assert client.get(f"/v1/models/{MODEL}").json() == model


def test_sample_array_is_seeded(client):
    first = sample(client, n=2, seed=7, format="array")
    assert first["model"] == MODEL and first["version"] == 1 and first["seed"] == 7
    x = np.array(first["samples"])
    assert x.shape == (2, *SHAPE)
    assert set(np.unique(x)) <= {0, 1}
    assert sample(client, n=2, seed=7, format="array")["samples"] == first["samples"]
    assert sample(client, n=2, seed=8, format="array")["samples"] != first["samples"]


def test_sample_png_matches_array(client):
    arrays = sample(client, n=2, seed=7, format="array")["samples"]
    pngs = sample(client, n=2, seed=7, format="png")
    assert pngs["samples"] == sample(client, n=2, seed=7, format="png")["samples"]
    for png, array in zip(pngs["samples"], arrays, strict=True):
        np.testing.assert_array_equal(png_levels(png), np.array(array))


def test_sample_without_seed_echoes_the_seed_it_drew(client):
    drawn = sample(client, n=1)
    assert sample(client, n=1, seed=drawn["seed"])["samples"] == drawn["samples"]


def test_score_both_routes(client):
    inputs = sample(client, n=2, seed=3)["samples"]
    named = client.post("/score", json={"model": MODEL, "inputs": inputs})
    routed = client.post(f"/v1/models/{MODEL}/score", json={"inputs": inputs})
    assert named.status_code == routed.status_code == 200, (named.text, routed.text)
    assert named.json() == routed.json()
    results = routed.json()["results"]
    assert len(results) == 2
    for r in results:
        assert r["log_likelihood_nats"] < 0
        assert r["bits_per_dim"] == pytest.approx(-r["log_likelihood_nats"] / (784 * np.log(2)))
        assert r["method"] == "exact"
        assert 0 <= r["anomaly"]["percentile"] <= 100
        assert isinstance(r["anomaly"]["is_anomaly"], bool)
    # PNG inputs score the same as the arrays they encode
    pngs = sample(client, n=2, seed=3, format="png")["samples"]
    as_png = client.post(f"/v1/models/{MODEL}/score", json={"inputs": pngs}).json()["results"]
    assert [r["log_likelihood_nats"] for r in as_png] == [r["log_likelihood_nats"] for r in results]


def test_complete_keeps_the_observed_half(client):
    x = np.array(sample(client, n=1, seed=5)["samples"][0])
    mask = np.zeros(SHAPE, np.int64)
    mask[: SHAPE[0] // 2] = 1  # top half observed
    body = {"inputs": [x.tolist()], "mask": mask.tolist(), "n": 2, "seed": 1}
    response = client.post(f"/v1/models/{MODEL}/complete", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["seed"] == 1
    out = np.array(payload["completions"])
    assert out.shape == (1, 2, *SHAPE)
    np.testing.assert_array_equal(out[0, :, : SHAPE[0] // 2], np.broadcast_to(x[: SHAPE[0] // 2], (2, 14, 28)))
    again = client.post(f"/v1/models/{MODEL}/complete", json=body).json()
    assert again["completions"] == payload["completions"]


def test_metrics_count_requests(client):
    sample(client, n=1, seed=0)
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert "genserve_http_requests_total" in text
    assert "genserve_http_request_duration_seconds_bucket" in text
    lines = [line for line in text.splitlines()
             if line.startswith("genserve_http_requests_total{") and f'model="{MODEL}"' in line
             and 'endpoint="/v1/models/{name}/sample"' in line and 'code="200"' in line]
    assert len(lines) == 1
    assert float(lines[0].rsplit(" ", 1)[1]) >= 1
    assert "genserve_event_loop_lag_seconds_count" in text  # service.event_loop.watch_lag
    # `genserve serve` times each garbage collection of the API process, by generation (service.main.tune_gc)
    for generation in range(3):
        assert f'genserve_gc_pause_seconds_count{{generation="{generation}"}}' in text


# --- errors --------------------------------------------------------------------------------------------------------


def test_unknown_model_is_404(client):
    error = check_error(client.post("/v1/models/nope/sample", json={"n": 1}), 404)
    assert "nope" in error["message"]
    check_error(client.get("/v1/models/nope"), 404)
    check_error(client.post("/score", json={"model": "nope", "inputs": [[[0] * 28] * 28]}), 404)


def test_bad_inputs_are_4xx_naming_the_field(client):
    error = check_error(client.post(f"/v1/models/{MODEL}/score", json={"inputs": [[[0] * 27] * 28]}), 422)
    assert "inputs[0]" in error["message"]
    error = check_error(client.post(f"/v1/models/{MODEL}/score", json={"inputs": [[[2] * 28] * 28]}), 422)
    assert "inputs[0]" in error["message"]
    error = check_error(client.post(f"/v1/models/{MODEL}/sample", json={"n": 1, "label": 10}), 422)
    assert "label" in error["message"]
    error = check_error(client.post(f"/v1/models/{MODEL}/score", json={"inputs": ["bm90IGEgcG5n"]}), 422)
    assert "inputs[0]" in error["message"]


def padded_score_body(size: int) -> bytes:
    """A valid score request of exactly `size` bytes (JSON allows leading whitespace)."""
    body = json.dumps({"inputs": [[[0] * 28] * 28]}).encode()
    return b" " * (size - len(body)) + body


def test_oversized_body_is_413(client):
    url, headers = f"/v1/models/{MODEL}/score", {"content-type": "application/json"}
    assert client.post(url, content=padded_score_body(MAX_BODY), headers=headers).status_code == 200
    error = check_error(client.post(url, content=padded_score_body(MAX_BODY + 1), headers=headers), 413)
    assert str(MAX_BODY) in error["message"]
    # without a Content-Length (chunked), the limit holds while reading
    body = padded_score_body(2 * MAX_BODY)
    chunks = (body[i : i + 16384] for i in range(0, len(body), 16384))
    check_error(client.post(url, content=chunks, headers=headers), 413)
    assert client.get("/healthz").status_code == 200  # and the server lives on


# --- refusing a corrupted store ------------------------------------------------------------------------------------


def test_server_refuses_a_corrupted_store(tiny_store, tmp_path):
    store = Path(shutil.copytree(tiny_store, tmp_path / "models"))
    manifest = json.loads((store / MODEL / "1" / "manifest.json").read_text())
    filename = sorted(f for f in manifest["files"] if f.endswith(".onnx"))[0]
    path = store / MODEL / "1" / filename
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    process = subprocess.Popen(serve_command(store, free_port()), cwd=REPO, env=server_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        _, stderr = process.communicate(timeout=START_TIMEOUT_S)
    finally:
        stop(process)
    assert process.returncode not in (0, None)
    message = stderr.decode(errors="replace")
    assert filename in message and "sha256" in message, message[-2000:]
