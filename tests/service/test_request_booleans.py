"""JSON true or false, or a string, for a number of a REST request is a 422 naming the field, never read as 1 or 0
(a `label` of true sampled class 1) or as the number it spells ("3"); JSON numbers still work, 3.0 included, and the
OpenAPI schema keeps its bounds."""

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.settings import Settings
from tests.service.test_api import FakeEngine

SAMPLE = "/v1/models/binary/sample"
SCORE = "/v1/models/binary/score"
GOOD = [[0] * 8 for _ in range(8)]

# (route, body with one boolean, the field the 422 names)
BOOLEANS = [
    (SAMPLE, {"n": 1, "label": True}, "body.label"),
    (SAMPLE, {"n": True}, "body.n"),
    (SAMPLE, {"seed": False}, "body.seed"),
    (SAMPLE, {"temperature": True}, "body.temperature"),
    (SAMPLE, {"top_k": True}, "body.top_k"),
    (SAMPLE, {"length": True}, "body.length"),
    (SAMPLE, {"seconds": True}, "body.seconds"),
    (SAMPLE, {"voice": True}, "body.voice"),
    (SAMPLE, {"chunk_ms": True}, "body.chunk_ms"),
    (SAMPLE, {"steps": True}, "body.steps"),
    (SAMPLE, {"bars": True}, "body.bars"),
    (SAMPLE, {"controls": {"code": True}}, "body.controls.code"),
    (SAMPLE, {"controls": {"style": [True, 0.5]}}, "body.controls.style"),
    (SCORE, {"inputs": [GOOD], "labels": [True]}, "body.labels[0]"),
    (SCORE, {"inputs": [GOOD], "k": True}, "body.k"),
    (SCORE, {"inputs": [GOOD], "seed": True}, "body.seed"),
    (SCORE, {"inputs": [GOOD], "refine_steps": False}, "body.refine_steps"),
    ("/score", {"model": "binary", "inputs": [GOOD], "k": True}, "body.k"),
    ("/v1/models/binary/complete", {"inputs": [GOOD], "mask": GOOD, "n": True}, "body.n"),
    ("/v1/models/binary/encode", {"inputs": [GOOD], "refine_steps": True}, "body.refine_steps"),
    ("/v1/models/binary/decode", {"z": [[True, 0.5]]}, "body.z[0][0]"),
    ("/v1/models/binary/interpolate", {"inputs": [GOOD, GOOD], "steps": True}, "body.steps"),
]

# (route, body with one number given as a string, the field the 422 names, what its message says)
STRINGS = [
    (SAMPLE, {"n": "3"}, "body.n", "not a string"),
    (SAMPLE, {"seed": "7"}, "body.seed", "not a string"),
    (SAMPLE, {"temperature": "0.5"}, "body.temperature", "not a string"),
    (SAMPLE, {"label": "1"}, "body.label", "not a string"),
    (SAMPLE, {"controls": {"style": ["0.5"]}}, "body.controls.style", "a list of finite numbers"),
    (SCORE, {"inputs": [GOOD], "k": "4"}, "body.k", "not a string"),
    ("/v1/models/binary/decode", {"z": [["0.5", 0.5]]}, "body.z[0][0]", "not a string"),
]


@pytest.fixture(scope="module")
def engine():
    return FakeEngine()


@pytest.fixture(scope="module")
def client(engine):
    settings = Settings(max_samples_per_request=16, max_inputs_per_request=8)
    with TestClient(create_app(engine, settings), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(("route", "body", "field"), BOOLEANS)
def test_a_boolean_for_a_number_is_a_422_naming_the_field(client, route, body, field):
    reply = client.post(route, json=body)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["code"] == "invalid_request" and error["field"] == field, error


@pytest.mark.parametrize(("route", "body", "field", "says"), STRINGS)
def test_a_string_for_a_number_is_a_422_naming_the_field(client, route, body, field, says):
    reply = client.post(route, json=body)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["field"] == field and says in error["message"], error


def test_numbers_still_pass_and_reach_the_engine_as_given(client, engine):
    engine.calls.clear()
    for label in (0, 1, 7.0):
        reply = client.post(SAMPLE, json={"n": 2.0, "label": label, "seed": 3, "temperature": 1})
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["samples"]) == 2
    sampled = [call[2:] for call in engine.calls if call[0] == "sample"]  # (n, seed, temperature, label)
    assert sampled == [(2, 3, 1.0, 0), (2, 3, 1.0, 1), (2, 3, 1.0, 7)]
    assert all(type(value) is int for n, seed, _, label in sampled for value in (n, seed, label))
    assert client.post(SCORE, json={"inputs": [GOOD, GOOD], "labels": [1, None]}).status_code == 200


def test_the_openapi_schema_keeps_integer_bounds(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    sample = next(s for name, s in schemas.items() if name.startswith("SampleRequest"))["properties"]
    assert sample["n"] == {"default": 1, "description": "number of samples", "maximum": 16, "minimum": 1,
                           "title": "N", "type": "integer"}
    label = next(branch for branch in sample["label"]["anyOf"] if branch.get("type") == "integer")
    assert label["minimum"] == 0 and label["maximum"] == 2**31 - 1


def test_a_boolean_voice_is_refused_as_neither_index_nor_name(client):
    """voice takes an index or a name, and its refusal says so (not "must be a number")."""
    error = client.post(SAMPLE, json={"voice": False}).json()["error"]
    assert error["field"] == "body.voice" and "index or name" in error["message"], error


def test_a_voice_by_name_is_still_a_string(client):
    """voice takes a name: a string there is not refused as a number's would be."""
    reply = client.post(SAMPLE, json={"voice": "alice"})
    assert "not a string" not in reply.text
