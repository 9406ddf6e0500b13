"""`genserve serve` with GENSERVE_LOG_FORMAT=json: every line on stderr, from the API process (uvicorn's
included) and the engine worker, is one JSON object, and the access line of a request carries its id."""

import json

import httpx

from tests.e2e.test_drain import start_server
from tests.e2e.test_server import MODEL, free_port, stop, wait_ready

GIVEN = "e2e-request-7"


def test_json_logs_one_object_per_line_with_the_request_id(tiny_store, tmp_path):
    port = free_port()
    process = start_server(tiny_store, port, free_port(), tmp_path, GENSERVE_LOG_FORMAT="json",
                           GENSERVE_ACCESS_LOG="true")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(process, base, tmp_path)
        response = httpx.post(f"{base}/v1/models/{MODEL}/sample", json={"n": 1, "seed": 1},
                              headers={"X-Request-ID": GIVEN}, timeout=60)
        assert response.status_code == 200 and response.headers["x-request-id"] == GIVEN
    finally:
        stop(process)
    lines = (tmp_path / "stderr").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]  # fails on any line that is not JSON
    assert all({"timestamp", "level", "logger", "message"} <= set(e) for e in entries)
    loggers = {e["logger"] for e in entries}
    assert {"genserve", "genserve.workers", "uvicorn.error", "uvicorn.access"} <= loggers, loggers
    assert any(e["message"].endswith(" s") and "functions loaded" in e["message"] for e in entries)  # the worker's
    access = [e for e in entries if e["logger"] == "uvicorn.access" and f"/v1/models/{MODEL}/sample" in e["message"]]
    assert [e["request_id"] for e in access] == [GIVEN]
    assert all("request_id" not in e for e in entries if e["logger"] != "uvicorn.access")  # none outside requests
