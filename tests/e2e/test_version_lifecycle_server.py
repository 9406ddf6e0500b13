"""A version's life on a real `genserve serve` (its engine worker process): started with skip-bad over a version it
cannot serve (vector data), a version reloaded with new files runs the new files, and one whose directory went
before its first use is a 404 naming `version`; on 127.0.0.1, bounded."""

import shutil
import subprocess
import sys

import httpx

from tests.e2e.test_server import MODEL, REPO, free_port, server_env, stop, wait_ready
from tests.service.test_version_lifecycle import X, add_version, halve_weights

ADMIN = "admin-key-e2e"


def test_skip_bad_serves_the_good_versions_and_a_reload_runs_the_new_files(tiny_store, tmp_path):
    shutil.copytree(next((tiny_store / MODEL).iterdir()), tmp_path / "source")
    store = tmp_path / "store"
    add_version(store, 1)
    add_version(store, 2, kind="vector")
    (tmp_path / "admins").write_text(f"{ADMIN}\n")
    command = [sys.executable, "-m", "genserve", "serve", "--host", "127.0.0.1", "--port", str(port := free_port()),
               "--grpc-port", str(free_port()), "--models", str(store)]
    env = server_env() | {"GENSERVE_ADMIN_KEYS_FILE": str(tmp_path / "admins"), "GENSERVE_SKIP_BAD_MODELS": "1"}
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    base, admin = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {ADMIN}"}
    body = {"inputs": [{"name": "x", "shape": list(X.shape), "datatype": "INT64", "data": X.ravel().tolist()}]}
    try:
        wait_ready(process, base, tmp_path)  # was: exit 1, "cannot serve the model store: ... vector data"
        with httpx.Client(base_url=base, timeout=60.0) as client:

            def log_prob(version: int) -> list:
                answer = client.post(f"/v2/models/{MODEL}.log_prob/versions/{version}/infer", json=body)
                assert answer.status_code == 200, answer.text
                return answer.json()["outputs"][0]["data"]

            assert client.post(f"/v1/models/{MODEL}/sample", json={"n": 1, "seed": 1}).json()["version"] == 1
            index = {m["version"]: m for m in client.post("/v2/repository/index").json()
                     if m["name"] == f"{MODEL}.log_prob"}
            assert "vector data is not served" in index["2"]["reason"], index
            add_version(store, 3)
            assert client.post(f"/v2/repository/models/{MODEL}/load", headers=admin).status_code == 200
            old = log_prob(3)
            assert client.post(f"/v2/repository/models/{MODEL}/unload", headers=admin).status_code == 200
            halve_weights(store / MODEL / "3")
            assert client.post(f"/v2/repository/models/{MODEL}/load", headers=admin).status_code == 200
            assert log_prob(3) != old  # was: the old weights' answer, byte for byte
            add_version(store, 4)
            assert client.post(f"/v2/repository/models/{MODEL}/load", headers=admin).status_code == 200
            shutil.rmtree(store / MODEL / "4")
            gone = client.post(f"/v1/models/{MODEL}/versions/4/sample", json={"n": 1, "seed": 1})
            assert gone.status_code == 404 and gone.json()["error"]["field"] == "version", gone.text  # was: 500
    finally:
        stop(process)
