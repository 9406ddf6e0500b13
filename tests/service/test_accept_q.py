"""REST v1 honours an Accept header's q-values: a file (MIDI, piano roll, WAV) is answered instead of JSON only when
the header prefers it to JSON; `audio/midi;q=0.5, application/json` was MIDI. A tie still goes to the file."""

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.api.accept import wanted_file
from service.settings import Settings
from tests.service.shipped import shipped_engine

MUSIC = ("audio/midi", "image/png")


@pytest.mark.parametrize("accept, wanted", [
    ("audio/midi;q=0.5, application/json", None),
    ("application/json;q=0.4, audio/midi;q=0.5", "audio/midi"),
    ("audio/midi, application/json", "audio/midi"),  # a tie: the file, as before
    ("audio/midi", "audio/midi"),
    ("image/png; q=0.9, audio/midi;q=0.8", "image/png"),
    ("audio/midi;q=0, */*", None),
    ("audio/midi;q=0.3, */*;q=0.5", None),
    ("audio/midi;q=nan", None),
    ("audio/midi;q=2", None),
    ("*/*", None),
    ("audio/midi;q=0.5, application/json;q=0, */*", "audio/midi"),  # the most specific range decides JSON's q
    ("audio/midi;q=0.5, application/json;q=0.1, */*;q=0.8", "audio/midi"),
    ("", None),
    ("audio/*", "audio/midi"),  # a type range asks for its files (RFC 9110, 12.5.1); was JSON
    ("image/*", "image/png"),
    ("audio/*;q=0.5, application/json", None),
    ("audio/midi;q=0, audio/*", None),  # the file's own type is more specific than its range
    ("audio/*, image/png;q=0.5", "audio/midi"),
])
def test_the_file_only_when_preferred_to_json(accept, wanted):
    assert wanted_file(accept, MUSIC) == wanted


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return TestClient(create_app(shipped_engine(tmp_path_factory, ["midinet"]), Settings()))


@pytest.mark.parametrize("accept, media", [("audio/midi;q=0.5, application/json", "application/json"),
                                           ("audio/midi, application/json;q=0.5", "audio/midi")])
def test_rest_sample_answers_the_preferred_type(client, accept, media):
    response = client.post("/v1/models/midinet/sample", json={"n": 1, "seed": 1, "bars": 1}, headers={"accept": accept})
    assert response.status_code == 200 and response.headers["content-type"].startswith(media)
