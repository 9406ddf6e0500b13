"""A flow's decode of a large finite latent overflows its inverse (the graph casts the NaN through int64, far
outside the levels): that is a 422 naming z, never a 200 of -9.2e18 pixels. The shipped flows (models/) reproduce
it. (A NaN decoding, as vae-gray's at 1e37, is refused by REST's and gRPC's finite checks, as before.)"""

import asyncio
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.settings import Settings
from service.store import ModelStore

MODELS = Path(__file__).resolve().parents[2] / "models"
OVERFLOWING = {"realnvp": 1e37, "maf": 1e37, "nice": 1e38}  # a latent of this value everywhere


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(runtime="onnx", intra_op_threads=1)


@pytest.fixture(scope="module")
def engine(settings) -> Engine:
    return Engine(ModelStore(MODELS), settings)


def latents(engine: Engine, name: str, value: float, rows: int = 1) -> np.ndarray:
    dims = engine.model(name).manifest["functions"]["decode"]["inputs"][0]["shape"][1:]
    return np.full([rows, *dims], value, np.float32)


@pytest.mark.parametrize("name", OVERFLOWING)
def test_an_overflowing_decoding_is_refused_on_z(engine, name):
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(engine.decode(name, latents(engine, name, OVERFLOWING[name])))
    assert refused.value.field == "z" and "latents nearer the prior" in str(refused.value)


@pytest.mark.parametrize("name", ["realnvp", "maf", "nice", "vae", "vae-gray", "hvae", "gan", "wgan-gp"])
def test_latents_near_the_prior_decode_within_the_levels(engine, name):
    """Decodings a hair outside the levels (a GAN's -1.5e-05, a VAE's 255.00005) round to a level: not refused."""
    z = np.random.default_rng(0).standard_normal(latents(engine, name, 0, rows=8).shape).astype(np.float32) * 4
    out = asyncio.run(engine.decode(name, z))
    assert -0.5 <= out.min() and out.max() <= engine.model(name).data["levels"] - 0.5


def test_rest_decode_of_an_overflowing_latent_is_a_422_on_z(engine, settings):
    with TestClient(create_app(engine, settings)) as client:
        response = client.post("/v1/models/realnvp/decode", json={"z": latents(engine, "realnvp", 1e37).tolist()})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "z"


def test_v2_infer_of_a_decode_function_is_held_to_the_levels_too(engine, settings):
    z = latents(engine, "realnvp", 1e37)
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(engine.infer("realnvp", "decode", {"z": z}))
    assert refused.value.field == "z"
    with TestClient(create_app(engine, settings)) as client:
        body = {"inputs": [{"name": "z", "shape": list(z.shape), "datatype": "FP32", "data": z.ravel().tolist()}]}
        response = client.post("/v2/models/realnvp.decode/infer", json=body)
        assert response.status_code == 400 and response.json()["error"].startswith("z: "), response.text
        near = {"inputs": [{**body["inputs"][0], "data": [0.0] * z.size}]}
        assert client.post("/v2/models/realnvp.decode/infer", json=near).status_code == 200
