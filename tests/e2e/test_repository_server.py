"""Model management on a real `genserve serve` (its engine worker process, not the in-process runner): version 2
loaded while two clients send requests, both versions served at once, then unloaded; on 127.0.0.1, bounded."""

import subprocess
import sys
import threading

import httpx

from tests.e2e.test_server import MODEL, REPO, free_port, server_env, stop, wait_ready
from tests.service.test_model_repository import add_version, version_one_store

ADMIN = "admin-key-e2e"
REQUESTS = 40  # in all, from 2 clients


def test_load_mid_traffic_then_unload_on_a_real_server(tiny_store, tmp_path):
    store = version_one_store(tiny_store, tmp_path / "store")
    (tmp_path / "admins").write_text(f"{ADMIN}\n")
    command = [sys.executable, "-m", "genserve", "serve", "--host", "127.0.0.1", "--port", str(port := free_port()),
               "--grpc-port", str(free_port()), "--models", str(store)]
    env = server_env() | {"GENSERVE_ADMIN_KEYS_FILE": str(tmp_path / "admins")}
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base, tmp_path)
        answers: list[tuple[int, int | None, bool]] = []  # status, version, sent after the load answered
        loaded = threading.Event()

        def client(offset: int) -> None:
            with httpx.Client(base_url=base, timeout=60.0) as c:
                for seed in range(offset, REQUESTS, 2):
                    after = loaded.is_set()
                    r = c.post(f"/v1/models/{MODEL}/sample", json={"n": 1, "seed": seed})
                    answers.append((r.status_code, r.json().get("version"), after))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        with httpx.Client(base_url=base, timeout=60.0) as admin:
            while len(answers) < REQUESTS // 4 and any(t.is_alive() for t in threads):
                threading.Event().wait(0.01)
            add_version(store, 2)
            assert admin.post(f"/v2/repository/models/{MODEL}/unload").status_code == 403  # no admin key
            load = admin.post(f"/v2/repository/models/{MODEL}/load", headers={"Authorization": f"Bearer {ADMIN}"})
            assert load.status_code == 200, load.text
            loaded.set()
            for thread in threads:
                thread.join(timeout=120)
            assert len(answers) == REQUESTS and all(status == 200 for status, _, _ in answers)
            assert all(version == 2 for _, version, after in answers if after) and any(a for _, _, a in answers)
            on = {v: admin.post(f"/v1/models/{MODEL}/versions/{v}/sample", json={"n": 1, "seed": 3}).json()
                  for v in (1, 2)}  # version 2 runs in the worker from its directory, read on first use
            assert (on[1]["version"], on[2]["version"]) == (1, 2) and on[1]["samples"] == on[2]["samples"]
            assert admin.post(f"/v2/repository/models/{MODEL}/unload",
                              headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
            gone = admin.post(f"/v1/models/{MODEL}/sample", json={"n": 1})
            assert gone.status_code == 404 and gone.json()["error"]["field"] == "model"
    finally:
        stop(process)
