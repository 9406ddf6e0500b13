"""A REST request for a capability the model lacks is 400 `missing_capability` naming the field `model` (as gRPC
and an unknown model's 404 do), on every route, `/score` included, whose body has no field `name`."""

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore

ROOT = Path(__file__).resolve().parents[2]
IMAGE = [[0] * 28 for _ in range(28)]

# route -> (a body that passes the request schema, so that the capability check refuses it; the capability named:
# reconstruct and interpolate need encode, then decode)
REQUESTS = {
    "sample": ({}, "sample"),
    "sample/stream": ({}, "sample"),
    "score": ({"inputs": [IMAGE]}, "score"),
    "complete": ({"inputs": [IMAGE], "mask": IMAGE}, "complete"),
    "encode": ({"inputs": [IMAGE]}, "encode"),
    "decode": ({"z": [[0.0]]}, "decode"),
    "reconstruct": ({"inputs": [IMAGE]}, "encode"),
    "interpolate": ({"inputs": [IMAGE, IMAGE]}, "encode"),
    "predict": ({"inputs": [[IMAGE, IMAGE]], "actions": [[0.0]]}, "predict"),
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """pix2pix (translate only) and midinet (sample and stream only), copied from the shipped store."""
    models = tmp_path_factory.mktemp("models")
    for name in ("pix2pix", "midinet"):
        shutil.copytree(ROOT / "models" / name, models / name)
    settings = Settings(host="127.0.0.1", models=models, intra_op_threads=1)
    with TestClient(create_app(Engine(ModelStore(models), settings), settings)) as client:
        yield client


def assert_names_the_model(reply, name: str, capability: str) -> None:
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "missing_capability"
    assert error["field"] == "model"
    assert error["message"].startswith(f"model: model {name!r} has no {capability!r} capability")


@pytest.mark.parametrize("route", sorted(REQUESTS))
def test_every_model_route_names_the_model(client, route):
    body, capability = REQUESTS[route]
    reply = client.post(f"/v1/models/pix2pix/{route}", json=body)
    assert_names_the_model(reply, "pix2pix", capability)
    assert "['translate']" in reply.json()["error"]["message"]  # what it can do instead


def test_the_versioned_route_and_translate_name_the_model(client):
    assert_names_the_model(client.post("/v1/models/pix2pix/versions/1/score", json=REQUESTS["score"][0]),
                           "pix2pix", "score")
    assert_names_the_model(client.post("/v1/models/midinet/translate", json={"inputs": [IMAGE]}),
                           "midinet", "translate")


def test_score_by_body_names_its_model_field(client):
    reply = client.post("/score", json={"model": "pix2pix", "inputs": [IMAGE]})
    assert_names_the_model(reply, "pix2pix", "score")
