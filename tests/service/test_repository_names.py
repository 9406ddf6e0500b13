"""Which model a load or unload names (service.model_control.store_model): a store model ("pixelcnn") or one of
its V2 models ("pixelcnn.log_prob"), a function its manifest defines; "pixelcnn.nope" and "pixelcnn." name nothing
(404 naming model_name, the model untouched), over REST and gRPC alike. One tiny PixelCNN as version 1."""

import json
import shutil
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine.engine import Engine
from service.grpc.gen_inference import grpc_predict_v2_pb2 as pb
from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as pb_grpc
from service.model_control import stored_functions
from service.settings import Settings
from service.store import ModelStore
from tests.service.test_model_repository import inference_channel

MODEL = "pixelcnn"
ADMIN = "admin-key-1"
TIMEOUT_S = 30.0
NOT_V2_MODELS = [f"{MODEL}.nope", f"{MODEL}.", f"{MODEL}.log_prob.extra", f"{MODEL}.files", "nomodel.log_prob"]


@pytest.fixture
def engine(tiny_store, tmp_path) -> Engine:
    """An engine over a copy of the tiny store (version 1), with an admin key."""
    shutil.copytree(next((tiny_store / MODEL).iterdir()), tmp_path / "store" / MODEL / "1")
    manifest_path = tmp_path / "store" / MODEL / "1" / "manifest.json"
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "version": 1}))
    (tmp_path / "admin").write_text(f"{ADMIN}\n")
    settings = Settings(runtime="onnx", intra_op_threads=1, admin_keys_file=tmp_path / "admin")
    return Engine(ModelStore(tmp_path / "store"), settings)


def control(client: TestClient, name: str, action: str):
    return client.post(f"/v2/repository/models/{name}/{action}", headers={"Authorization": f"Bearer {ADMIN}"})


@pytest.mark.parametrize("name", NOT_V2_MODELS)
def test_a_name_of_no_v2_model_loads_and_unloads_nothing(engine, name):
    with TestClient(create_app(engine, engine.settings)) as client:
        for action in ("unload", "load"):
            refused = control(client, name, action)
            assert refused.status_code == 404, (action, refused.text)
            assert refused.json()["error"].startswith("model_name:"), refused.text
        assert MODEL in engine.versions  # still served
        assert client.get(f"/v2/models/{MODEL}.log_prob/ready").status_code == 200


def test_a_v2_model_names_its_store_model(engine):
    with TestClient(create_app(engine, engine.settings)) as client:
        assert control(client, f"{MODEL}.log_prob", "unload").status_code == 200
        assert MODEL not in engine.versions
        again = control(client, MODEL, "unload")  # a second unload: 404 naming the field, as every V2 refusal
        assert again.status_code == 404 and again.json()["error"].startswith("model_name: "), again.text
        refused = control(client, f"{MODEL}.nope", "load")
        assert refused.status_code == 404 and "log_prob" in refused.json()["error"]  # the functions it has
        assert MODEL not in engine.versions
        assert control(client, f"{MODEL}.sample_step", "load").status_code == 200
        assert client.get(f"/v2/models/{MODEL}.log_prob/ready").status_code == 200


def test_grpc_shares_the_names(engine):
    admin = [("authorization", f"Bearer {ADMIN}")]
    with inference_channel(engine) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name in (f"{MODEL}.nope", f"{MODEL}."):
            with pytest.raises(grpc.RpcError) as refused:
                stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=name), timeout=TIMEOUT_S,
                                           metadata=admin)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND, refused.value.details()
            assert refused.value.details().startswith("model_name:")
        assert MODEL in engine.versions
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=f"{MODEL}.log_prob"),
                                   timeout=TIMEOUT_S, metadata=admin)
        assert MODEL not in engine.versions


def test_a_broken_manifest_adds_no_function(engine):
    root: Path = engine.store.root
    good = stored_functions(root / MODEL)
    assert "log_prob" in good
    for broken in ("{not json", "[1]", '{"functions": ["log_prob"]}', "\udcff"):
        (root / MODEL / "2").mkdir(exist_ok=True)
        (root / MODEL / "2" / "manifest.json").write_text(broken, errors="surrogateescape")
        assert stored_functions(root / MODEL) == good, broken
    assert stored_functions(root / "nomodel") == set()
