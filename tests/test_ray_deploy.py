"""deploy/ray (issue 18): the Ray Serve config is one that Ray accepts, and a replica answers byte for byte as
`genserve serve`'s app does. No Ray cluster is started here: the whole loop (a local cluster, 2 replicas, one killed
under traffic) is `make ray-test` (scripts/ray_test.py). Skipped where ray[serve] is not installed."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install -e '.[ray]')")

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "deploy" / "ray" / "serve.yaml"


def load_app_module():
    spec = importlib.util.spec_from_file_location("genserve_ray_app", REPO / "deploy" / "ray" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_config_is_one_ray_accepts_with_autoscaling_in_bounds():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (application,) = config.applications
    (deployment,) = application.deployments
    scaling = deployment.autoscaling_config
    assert application.import_path == "deploy.ray.app:build"
    assert deployment.name == load_app_module().Genserve.name  # Ray refuses a config naming another deployment
    assert 1 <= scaling["min_replicas"] <= scaling["initial_replicas"] <= scaling["max_replicas"]
    assert 0 < scaling["target_ongoing_requests"] <= deployment.max_ongoing_requests
    assert isinstance(load_app_module().build(application.args), serve.Application)


@pytest.fixture()
def replica_and_reference(tmp_path, monkeypatch):
    """A Genserve replica (the class under Ray's ingress wrapper: the wrapper's lifespan is Ray's to run), over a
    store holding the shipped VAE, next to genserve's own app over the same store."""
    from service.api import create_app
    from service.engine.engine import Engine
    from service.settings import Settings
    from service.store import ModelStore

    (tmp_path / "vae").symlink_to(REPO / "models" / "vae")
    module = load_app_module()
    monkeypatch.setattr(module.serve, "get_replica_context",
                        lambda: SimpleNamespace(replica_id=SimpleNamespace(unique_id="replica-1")))
    replica_class = module.Genserve.func_or_class.__bases__[0]  # the class under Ray's ingress wrapper
    replica = replica_class({"models": str(tmp_path), "intra_op_threads": 1})
    settings = Settings(models=tmp_path, intra_op_threads=1)
    return replica, create_app(Engine(ModelStore(tmp_path), settings), settings)


def test_a_replica_answers_byte_for_byte_as_genserve(replica_and_reference):
    from fastapi.testclient import TestClient

    replica, reference = replica_and_reference
    replica.check_health()  # Ray's health check passes once the models are loaded
    z = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    requests = [
        ("/v1/models/vae/sample", {"n": 2, "seed": 7, "format": "array"}),
        ("/v1/models/vae/sample", {"n": 2, "seed": 8, "format": "array"}),
        ("/v2/models/vae.decode/infer", {"inputs": [{"name": "z", "shape": [2, 32], "datatype": "FP32",
                                                      "data": z.ravel().tolist()}]}),
        ("/v1/models/vae/sample", {"n": 0}),  # refused: 422 naming the field, the same on both
    ]
    with TestClient(replica.__serve_build_asgi_app__()) as on_ray, TestClient(reference) as plain:
        answers = [(on_ray.post(path, json=body), plain.post(path, json=body)) for path, body in requests]
    for ray_answer, plain_answer in answers:
        assert ray_answer.status_code == plain_answer.status_code
        assert ray_answer.content == plain_answer.content
        assert ray_answer.headers["x-genserve-replica"] == "replica-1"
    assert [a.status_code for a, _ in answers] == [200, 200, 200, 422]
    assert answers[0][0].content != answers[1][0].content  # the seed decides the samples
    assert "n" in answers[3][0].text
