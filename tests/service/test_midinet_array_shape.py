"""An array answer drops only an image's channel of 1 ([1,H,W] -> [H][W]): a music sample of one bar keeps its bars
axis ([1][16], as gRPC's [n, 1, 16] and the docs' [bars][16]), through the codec and the shipped midinet over REST."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import codecs, create_app
from service.settings import Settings
from tests.service.shipped import shipped_engine

MUSIC = {"kind": "music", "shape": [16], "levels": 33}
IMAGE = {"kind": "image", "shape": [1, 4, 4], "levels": 2}


@pytest.mark.parametrize("bars", [1, 2])
def test_a_music_sample_keeps_its_bars_axis(bars):
    x = np.arange(bars * 16).reshape(bars, 16) % 33
    assert np.shape(codecs.encode_sample(x, MUSIC, "array")) == (bars, 16)


def test_only_the_data_shape_channel_is_dropped():
    assert np.shape(codecs.encode_sample(np.zeros((1, 4, 4), np.int64), IMAGE, "array")) == (4, 4)
    assert np.shape(codecs.encode_sample(np.zeros((1, 4), np.int64), IMAGE, "array")) == (1, 4)  # not an image
    text = {"kind": "text", "shape": [8], "levels": 4, "vocabulary": list("abcd")}
    assert codecs.encode_sample(np.array([2]), text, "array") == [2]
    audio = {"kind": "audio", "shape": [8], "levels": 256, "sample_rate": 16000}
    assert codecs.encode_sample(np.array([7, 9]), audio, "array") == [7, 9]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return TestClient(create_app(shipped_engine(tmp_path_factory, ["midinet"]), Settings()))


@pytest.mark.parametrize("bars", [1, 2])
def test_rest_array_samples_are_n_bars_16(client, bars):
    response = client.post("/v1/models/midinet/sample", json={"format": "array", "bars": bars, "n": 2, "seed": 1})
    assert response.status_code == 200, response.text
    assert np.shape(response.json()["samples"]) == (2, bars, 16)
