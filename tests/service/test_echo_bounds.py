"""A REST v1 refusal quotes a client's string bounded (validation.brief), never whole: a 300 KB voice, unknown body key
or controls key, and a 400 KB prompt of unknown words were echoed in 300-600 KB answers (the shipped models)."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine import captions
from service.engine.errors import InvalidInput
from service.settings import Settings
from tests.service.shipped import shipped_engine

HUGE = "q" * 300_000
MOST_BYTES = 4_000


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    engine = shipped_engine(tmp_path_factory, ["midinet", "wavenet", "stackgan", "infogan"])
    return TestClient(create_app(engine, Settings()))


@pytest.mark.parametrize("model, body, field", [
    ("wavenet", {"voice": HUGE}, "body.voice"),
    ("midinet", {HUGE: 1}, None),  # an unknown key: the field is its bounded name
    ("infogan", {"controls": {HUGE: 1}}, None),
    ("stackgan", {"prompt": " ".join(f"w{i}" for i in range(50_000))}, "prompt"),  # unknown words, too many of them
    ("stackgan", {"prompt": "a " + HUGE}, "prompt"),  # one long unknown word
])
def test_a_long_client_string_is_echoed_bounded(client, model, body, field):
    response = client.post(f"/v1/models/{model}/sample", json={"n": 1, "seed": 1, **body})
    assert response.status_code == 422, response.text[:300]
    assert len(response.content) < MOST_BYTES, response.text[:300]
    if field is not None:
        assert response.json()["error"]["field"] == field


def test_unknown_words_are_listed_bounded():
    spec = {"vocabulary": ["", "a", "seven"], "max_words": 100}
    with pytest.raises(InvalidInput, match=r"prompt: unknown words \['w0', 'w1', .*\.\.\.\]") as info:
        captions.encode(" ".join(f"w{i}" for i in range(100)), spec)
    assert len(str(info.value)) < 500
    np.testing.assert_array_equal(captions.encode("a seven", spec)[:3], [1, 2, 0])
