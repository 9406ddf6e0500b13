"""Issue 15, "Security", on a real `genserve serve`: API keys and TLS over REST and gRPC, health open, the /metrics
rule, 415 for a text/plain V2 infer, CORS for the configured origin only, and no key in the log.

The server gets a keys file, a self-signed certificate made here with `openssl req`, GENSERVE_CORS_ORIGINS
and GENSERVE_ACCESS_LOG=true (so that the log holds a line per request, which must still hold no key).
"""

import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from tests.e2e.test_drain import start_server
from tests.e2e.test_server import MODEL, REPO, START_TIMEOUT_S, free_port, server_env, stop

KEYS = ("e2e-key-3b9f0c71", "e2e-key-second-a41d")
ORIGIN = "https://app.example"
RPC_S = 30.0
STARTUP_ERROR_S = 60.0


class Secure(NamedTuple):
    base: str  # https://127.0.0.1:PORT
    target: str  # 127.0.0.1:GRPC_PORT
    port: int
    cert: bytes  # the self-signed certificate, PEM: the clients' only root
    verify: ssl.SSLContext
    logs: Path


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate to test TLS with")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    return cert, key


def wait_ready(process: subprocess.Popen, base: str, verify: ssl.SSLContext, logs: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{(logs / 'stderr').read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", verify=verify, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not ready in {START_TIMEOUT_S} s:\n{(logs / 'stderr').read_text()[-3000:]}")


@pytest.fixture(scope="module")
def secure(tiny_store, tmp_path_factory):
    logs = tmp_path_factory.mktemp("secure")
    cert, key = make_certificate(logs)
    keys_file = logs / "keys"
    keys_file.write_text(f"# e2e keys\n{KEYS[0]}\n\n{KEYS[1]}\n")
    port, grpc_port = free_port(), free_port()
    process = start_server(tiny_store, port, grpc_port, logs, GENSERVE_API_KEYS_FILE=str(keys_file),
                           GENSERVE_TLS_CERT=str(cert), GENSERVE_TLS_KEY=str(key), GENSERVE_CORS_ORIGINS=ORIGIN,
                           GENSERVE_ACCESS_LOG="true")
    base = f"https://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=str(cert))
    try:
        wait_ready(process, base, verify, logs)
        yield Secure(base, f"127.0.0.1:{grpc_port}", port, cert.read_bytes(), verify, logs)
    finally:
        stop(process)


@pytest.fixture
def client(secure):
    with httpx.Client(base_url=secure.base, verify=secure.verify, timeout=30.0) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_rest_over_tls_needs_a_key_except_health(secure, client):
    refused = client.get("/v1/models")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized", refused.text
    assert refused.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/models", headers=bearer(KEYS[0] + "0")).status_code == 401
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    [model] = client.get("/v1/models", headers=bearer(KEYS[0])).json()["models"]
    assert model["name"] == MODEL
    sampled = client.post(f"/v1/models/{MODEL}/sample", json={"n": 1, "seed": 5}, headers=bearer(KEYS[1]))
    assert sampled.status_code == 200 and sampled.json()["seed"] == 5
    assert client.post(f"/v1/models/{MODEL}/sample", json={"n": 1}).status_code == 401
    with pytest.raises(httpx.TransportError):  # TLS only: plain HTTP gets no answer
        httpx.get(f"http://127.0.0.1:{secure.port}/healthz", timeout=5.0)


def test_metrics_need_a_key_and_hold_none(client):
    assert client.get("/metrics").status_code == 401
    metrics = client.get("/metrics", headers=bearer(KEYS[0]))
    assert metrics.status_code == 200 and 'code="401"' in metrics.text
    assert not any(key in metrics.text for key in KEYS)


def test_a_text_plain_v2_infer_is_415(client):
    body = b'{"inputs": [{"name": "x", "shape": [1, 1, 28, 28], "datatype": "INT64", "data": [0]}]}'
    response = client.post(f"/v2/models/{MODEL}.log_prob/infer", content=body,
                           headers={"Content-Type": "text/plain", "Origin": "https://evil.example", **bearer(KEYS[0])})
    assert response.status_code == 415, response.text
    assert "text/plain" in response.json()["error"]
    assert "access-control-allow-origin" not in response.headers


def test_cors_answers_the_configured_origin_only(client):
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = client.options(f"/v1/models/{MODEL}/sample", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = client.options(f"/v1/models/{MODEL}/sample", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    listed = client.get("/v1/models", headers={"Origin": ORIGIN, **bearer(KEYS[0])})
    assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == ORIGIN


def test_grpc_over_tls_needs_a_key_except_health(secure):
    credentials = grpc.ssl_channel_credentials(root_certificates=secure.cert)
    with grpc.secure_channel(secure.target, credentials) as channel:
        stub = pb_grpc.GenserveStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListModels(pb.ListModelsRequest(), timeout=RPC_S)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: missing" in refused.value.details()
        listed = stub.ListModels(pb.ListModelsRequest(), timeout=RPC_S,
                                 metadata=[("authorization", f"Bearer {KEYS[1]}")])
        assert [m.name for m in listed.models] == [MODEL]
        checked = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=RPC_S)
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(secure.target) as plain:  # TLS only
        with pytest.raises(grpc.RpcError) as failed:
            health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_log_tells_the_guard_and_never_holds_a_key(secure, client):
    client.get("/v1/models", headers=bearer(KEYS[0]))
    client.get("/v1/models", headers=bearer(KEYS[1] + "x"))
    time.sleep(0.5)  # the access log lines are written
    log = (secure.logs / "stderr").read_text() + (secure.logs / "stdout").read_text()
    assert "API keys: 2 from" in log and "TLS: on" in log and "no GENSERVE_API_KEYS_FILE" not in log
    assert '"GET /v1/models HTTP/1.1" 401' in log and '"GET /v1/models HTTP/1.1" 200' in log  # GENSERVE_ACCESS_LOG
    assert not any(key in log for key in KEYS)


def test_half_a_tls_pair_stops_the_server_at_start(tmp_path):
    cert, _key = make_certificate(tmp_path)
    command = [sys.executable, "-m", "genserve", "serve", "--port", str(free_port()), "--grpc-port",
               str(free_port()), "--models", str(tmp_path / "nomodels")]
    ended = subprocess.run(command, cwd=REPO, env=server_env() | {"GENSERVE_TLS_CERT": str(cert)},
                           capture_output=True, text=True, timeout=STARTUP_ERROR_S)
    assert ended.returncode != 0
    assert "GENSERVE_TLS_KEY: not set, but GENSERVE_TLS_CERT is" in ended.stderr, ended.stderr[-3000:]
