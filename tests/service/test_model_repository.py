"""Model management, live (service.api.repository): load and unload with an admin key, several versions served
at once, a new version loaded while traffic flows, and the store poll. One tiny PixelCNN, copied as versions 1
and 2 (the same files: the same seed must give the same answer on both, only the `version` differs)."""

import asyncio
import json
import logging
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine.engine import Engine
from service.grpc.gen_inference import grpc_predict_v2_pb2 as pb
from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as pb_grpc
from service.grpc.inference import add_inference_servicer
from service.settings import Settings
from service.store import ModelStore

MODEL = "pixelcnn"
ADMIN, USER = "admin-key-1", "user-key-1"
TIMEOUT_S = 30.0
TRAFFIC = 48  # requests in the traffic test, 4 at a time


def add_version(store: Path, version: int) -> None:
    """models/pixelcnn/<version>/: version 1's files under a manifest that says `version`."""
    source = next((store / MODEL).iterdir())
    target = store / MODEL / str(version)
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({**manifest, "version": version}))


def version_one_store(tiny_store: Path, root: Path) -> Path:
    """A store at `root` holding the tiny pixelcnn as version 1 only."""
    shutil.copytree(next((tiny_store / MODEL).iterdir()), root / MODEL / "1")
    manifest = json.loads((root / MODEL / "1" / "manifest.json").read_text())
    (root / MODEL / "1" / "manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    return root


@pytest.fixture
def store(tiny_store, tmp_path) -> Path:
    return version_one_store(tiny_store, tmp_path / "store")


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "admin").write_text(f"# admins\n{ADMIN}\n")
    (tmp_path / "api").write_text(f"{ADMIN}\n{USER}\n")
    return tmp_path / "admin", tmp_path / "api"


def settings(**kwargs) -> Settings:
    return Settings(runtime="onnx", intra_op_threads=1, **kwargs)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def sample(client, path: str = f"/v1/models/{MODEL}", headers: dict | None = None) -> dict:
    response = client.post(f"{path}/sample", json={"n": 1, "seed": 11}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_store_keeps_every_version_and_rescans_one_model(store):
    add_version(store, 2)
    models = ModelStore(store)
    assert sorted(models.versions[MODEL]) == [1, 2] and models.entries[MODEL].version == 2
    add_version(store, 3)
    (store / MODEL / "3" / "manifest.json").write_text("{not json")
    good, bad = models.scan_model(MODEL)
    assert sorted(good) == [1, 2] and [b.version for b in bad] == ["3"] and "invalid manifest" in bad[0].reason
    assert models.scan_model("..") == ({}, [])  # only model directories of the store


def test_a_live_load_logs_each_version_it_leaves_out(store, caplog):
    engine = Engine(ModelStore(store), settings())
    add_version(store, 2)
    (store / MODEL / "2" / "manifest.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="genserve.engine"):
        assert engine.load_model(MODEL) == [1]  # the good versions are served
    assert f"model {MODEL}: version 2 not loaded: " in caplog.text and "invalid manifest" in caplog.text


def test_the_index_lists_a_refused_version_under_the_v2_names(store):
    with TestClient(create_app(Engine(ModelStore(store), settings()), settings())) as client:
        add_version(store, 2)
        (store / MODEL / "2" / "manifest.json").write_text("{not json")
        index = client.post("/v2/repository/index").json()
    served = {m["name"] for m in index if m["version"] == "1"}
    refused = [m for m in index if m["version"] == "2"]
    assert served and {m["name"] for m in refused} == served, index  # "pixelcnn.log_prob", ...: not "pixelcnn"
    assert all(m["state"] == "UNAVAILABLE" and "invalid manifest" in m["reason"] for m in refused)


def test_load_and_unload_need_an_admin_key(store, keys):
    admin_file, api_file = keys
    with TestClient(create_app(Engine(ModelStore(store), settings()), settings())) as client:
        refused = client.post(f"/v2/repository/models/{MODEL}/load", headers=bearer(ADMIN))
        assert refused.status_code == 403 and "GENSERVE_ADMIN_KEYS_FILE" in refused.json()["error"]
    engine = Engine(ModelStore(store), settings(admin_keys_file=admin_file, api_keys_file=api_file))
    with TestClient(create_app(engine, engine.settings)) as client:
        assert client.post(f"/v2/repository/models/{MODEL}/unload").status_code == 401  # no API key at all
        assert client.post(f"/v2/repository/models/{MODEL}/unload", headers=bearer(USER)).status_code == 403
        assert sample(client, headers=bearer(USER))["version"] == 1  # still served
        answer = client.post(f"/v2/repository/models/{MODEL}/unload", headers=bearer(ADMIN))
        assert answer.status_code == 200 and answer.json() == {}
        gone = client.post(f"/v1/models/{MODEL}/sample", json={"n": 1}, headers=bearer(USER))
        assert gone.status_code == 404 and gone.json()["error"]["field"] == "model"
        index = {(m["name"], m["version"]): m for m in engine.repository_index(True)}
        assert index[f"{MODEL}.log_prob", "1"]["state"] == "UNAVAILABLE"
        assert index[f"{MODEL}.log_prob", "1"]["reason"] == "unloaded"
        assert client.post("/v2/repository/models/nomodel/load", headers=bearer(ADMIN)).status_code == 404
        assert client.post(f"/v2/repository/models/{MODEL}.log_prob/load", headers=bearer(ADMIN)).status_code == 200
        assert all(m["state"] == "READY" for m in engine.repository_index(True))


def test_the_openapi_schema_documents_what_load_and_unload_answer(store):
    with TestClient(create_app(Engine(ModelStore(store), settings()), settings())) as client:
        paths = client.get("/openapi.json").json()["paths"]
    for action in ("load", "unload"):
        documented = set(paths[f"/v2/repository/models/{{model_name}}/{action}"]["post"]["responses"])
        assert {"200", "401", "403", "404", "400", "503"} <= documented, (action, documented)


def test_versions_served_at_once_answer_alike(store, keys):
    engine = Engine(ModelStore(store), settings(admin_keys_file=keys[0]))
    with TestClient(create_app(engine, engine.settings)) as client:
        add_version(store, 2)
        assert sample(client)["version"] == 1  # not loaded yet: the store is not watched
        assert client.post(f"/v2/repository/models/{MODEL}/load", headers=bearer(ADMIN)).status_code == 200
        latest, v1, v2 = (sample(client, path) for path in (
            f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/versions/1", f"/v1/models/{MODEL}/versions/2"))
        assert (latest["version"], v1["version"], v2["version"]) == (2, 1, 2)
        assert latest["samples"] == v1["samples"] == v2["samples"]  # the same files and seed: the same draw
        slash = client.post(f"/v1/models/{MODEL}/versions/1/sample/", json={"n": 1, "seed": 11},
                            follow_redirects=False)  # kept on version 1: no redirect to the unversioned route
        assert slash.status_code == 200 and slash.json()["version"] == 1, slash.text
        assert client.get(f"/v1/models/{MODEL}/versions/1/", follow_redirects=False).json()["version"] == 1
        for huge in ("1" * 5000, "9" * 19):  # past int()'s 4,300 digits, past int64: no version, not a 500
            assert client.post(f"/v1/models/{MODEL}/versions/{huge}/sample", json={"n": 1}).status_code == 404
            assert client.get(f"/v2/models/{MODEL}.log_prob/versions/{huge}/ready").status_code == 404
        missing = client.post(f"/v1/models/{MODEL}/versions/7/sample", json={"n": 1})
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "version"
        x = np.array(v1["samples"], np.int64).reshape(1, 1, 28, 28)  # V2 infer on each version: the same answer
        body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "INT64", "data": x.ravel().tolist()}]}
        answers = [client.post(f"/v2/models/{MODEL}.log_prob/versions/{v}/infer", json=body).json() for v in (1, 2)]
        assert [a.get("model_version") for a in answers] == ["1", "2"], answers
        assert answers[0]["outputs"][0]["data"] == answers[1]["outputs"][0]["data"]
        for path in ("", "/versions/1"):  # every served version is listed, whichever the request names
            assert client.get(f"/v2/models/{MODEL}.log_prob{path}").json()["versions"] == ["1", "2"]
        assert client.get(f"/v2/models/{MODEL}.log_prob/versions/01/ready").json()["ready"] is True  # as on /v1
        refused = client.get(f"/v2/models/{MODEL}.log_prob/versions/3/ready").json()["error"]
        assert refused.endswith("has no version '3'; it has ['1', '2']"), refused
        assert np.isfinite(answers[0]["outputs"][0]["data"]).all()


def test_a_versioned_route_refused_names_the_path_sent(store):
    """/v1/models/{name}/versions/{v}/... runs as the unversioned route; a 404 or 405 names the client's path."""
    with TestClient(create_app(Engine(ModelStore(store), settings()), settings())) as client:
        for method, path, status, words in (("POST", "nosuch", 404, "path: no route"),
                                            ("GET", "sample", 405, "method: GET is not allowed on")):
            refused = client.request(method, f"/v1/models/{MODEL}/versions/1/{path}")
            message = refused.json()["error"]["message"]
            assert refused.status_code == status and message == f"{words} /v1/models/{MODEL}/versions/1/{path}"


def test_loading_a_version_mid_traffic_drops_no_request(store, keys):
    engine = Engine(ModelStore(store), settings(admin_keys_file=keys[0]))
    app = create_app(engine, engine.settings)

    async def traffic() -> list[tuple[int, int, bool]]:
        """(status, version, whether v2 was loaded before the request was sent) per request."""
        loaded = asyncio.Event()
        answers = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=TIMEOUT_S) as client:
            async def one(i: int) -> None:
                after = loaded.is_set()
                r = await client.post(f"/v1/models/{MODEL}/sample", json={"n": 1, "seed": i})
                answers.append((r.status_code, r.json().get("version"), after))

            async def load_midway() -> None:
                while len(answers) < TRAFFIC // 3:
                    await asyncio.sleep(0.01)
                add_version(store, 2)
                r = await client.post(f"/v2/repository/models/{MODEL}/load", headers=bearer(ADMIN))
                assert r.status_code == 200, r.text
                loaded.set()

            async def clients(k: int) -> None:
                for i in range(k, TRAFFIC, 4):
                    await one(i)

            await asyncio.gather(load_midway(), *(clients(k) for k in range(4)))
        return answers

    answers = asyncio.run(traffic())
    assert len(answers) == TRAFFIC and all(status == 200 for status, _, _ in answers)
    assert {version for _, version, _ in answers} == {1, 2}
    assert all(version == 2 for _, version, after in answers if after)  # sent after the load: v2
    assert any(after for _, _, after in answers)


@contextmanager
def inference_channel(engine: Engine) -> Iterator[grpc.Channel]:
    """A blocking channel to `engine`'s V2 gRPC service, served by grpc.aio on an event loop in a thread of its
    own; the server stops on the way out."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start():
        server = grpc.aio.server()
        add_inference_servicer(server, engine)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=TIMEOUT_S)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(timeout=TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)


def test_grpc_load_and_unload_need_an_admin_key(store, keys):
    engine = Engine(ModelStore(store), settings(admin_keys_file=keys[0]))
    with inference_channel(engine) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        unload = pb.RepositoryModelUnloadRequest(model_name=MODEL)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryModelUnload(unload, timeout=TIMEOUT_S, metadata=[("authorization", f"Bearer {USER}")])
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        admin = [("authorization", f"Bearer {ADMIN}")]
        stub.RepositoryModelUnload(unload, timeout=TIMEOUT_S, metadata=admin)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=TIMEOUT_S).models
        assert index and all(m.state == "UNAVAILABLE" and m.reason == "unloaded" for m in index)
        add_version(store, 2)
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=TIMEOUT_S,
                                 metadata=admin)
        ready = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=TIMEOUT_S).models
        assert {m.version for m in ready} == {"1", "2"}
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=f"{MODEL}.log_prob", version="1"),
                                      timeout=TIMEOUT_S)
        assert list(metadata.versions) == ["1", "2"]  # the spec's "versions that may be explicitly requested"


def test_store_poll_loads_a_new_version(store):
    async def poll() -> int:
        engine = Engine(ModelStore(store), settings(store_poll_s=0.05))
        await engine.start()
        try:
            add_version(store, 2)
            for _ in range(200):  # bounded: 10 s
                if engine.model(MODEL).version == 2:
                    break
                await asyncio.sleep(0.05)
            return engine.model(MODEL).version
        finally:
            await engine.stop()

    assert asyncio.run(poll()) == 2
    assert Settings().store_poll_s == 0  # off by default


def test_a_version_of_other_digits_is_no_version(store):
    """str.isdigit takes "²" and "³", which int() refuses: such a version in a path answers 404 (it was a 500), and
    such a directory in the store is no version, not a crash of the scan."""
    (store / MODEL / "²").mkdir()
    models = ModelStore(store)
    assert sorted(models.scan_model(MODEL)[0]) == [1]
    with TestClient(create_app(Engine(models, settings()), settings())) as client:
        for path in (f"/v2/models/{MODEL}.log_prob/versions/²/ready", f"/v2/models/{MODEL}.log_prob/versions/³",
                     "/v2/models/0/versions/²/ready"):
            assert client.get(path).status_code == 404, path
        missing = client.post(f"/v1/models/{MODEL}/versions/³/sample", json={"n": 1})
        assert missing.status_code == 404, missing.text
