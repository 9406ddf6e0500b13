"""The REST API over the real engine and the tiny exported VAE: encode, decode, reconstruct, interpolate,
importance-sampled scores, Markov-chain completion, and the refusals of the latent-variable operations."""

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api import create_app
from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore

MODEL = "vae"
URL = f"/v1/models/{MODEL}"


@pytest.fixture(scope="module")
def client(tiny_vae_store):
    settings = Settings(models=tiny_vae_store, intra_op_threads=1)
    with TestClient(create_app(Engine(ModelStore(tiny_vae_store), settings), settings)) as c:
        yield c


@pytest.fixture(scope="module")
def capabilities(tiny_vae_store) -> dict:
    return ModelStore(tiny_vae_store).entries[MODEL].manifest["capabilities"]


def images(count: int, seed: int = 0) -> list:
    """Binary [28][28] images as nested lists (the channel left out, as the codecs accept)."""
    return np.random.default_rng(seed).integers(0, 2, size=(count, 28, 28)).tolist()


def post(client: TestClient, route: str, body: dict) -> dict:
    response = client.post(f"{URL}/{route}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_encode_decode_reconstruct_interpolate_agree(client):
    x = images(3)
    encoded = post(client, "encode", {"inputs": x})
    mean, std = np.array(encoded["mean"]), np.array(encoded["std"])
    assert encoded["model"] == MODEL and mean.ndim == 2 and mean.shape == std.shape and len(mean) == 3
    assert (std > 0).all() and np.isfinite(mean).all()

    decoded = np.array(post(client, "decode", {"z": encoded["mean"]})["images"])
    assert decoded.shape == (3, 1, 28, 28) and decoded.min() >= 0.0 and decoded.max() <= 1.0  # levels 2: 0..1
    reconstructed = np.array(post(client, "reconstruct", {"inputs": x})["images"])
    np.testing.assert_allclose(reconstructed, decoded, rtol=0, atol=1e-6)

    line = post(client, "interpolate", {"inputs": x[:2], "steps": 5})
    z, pictures = np.array(line["z"]), np.array(line["images"])
    assert z.shape == (5, mean.shape[1]) and pictures.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(z[[0, -1]], mean[:2])  # the ends are the posterior means, exactly
    np.testing.assert_allclose(pictures[[0, -1]], decoded[:2], rtol=0, atol=1e-5)
    assert len(post(client, "interpolate", {"inputs": x[:2]})["z"]) == 8  # the default


def test_png_images_and_refinement(client):
    x = images(2, seed=1)
    as_png = post(client, "reconstruct", {"inputs": x, "format": "png"})["images"]
    as_array = np.array(post(client, "reconstruct", {"inputs": x})["images"])
    for b64, expected in zip(as_png, as_array, strict=True):
        picture = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert picture.format == "PNG" and picture.mode == "L" and picture.size == (28, 28)
        np.testing.assert_array_equal(np.asarray(picture), np.rint(expected[0] * 255).astype(np.uint8))
    plain = post(client, "encode", {"inputs": x})
    refined = post(client, "encode", {"inputs": x, "refine_steps": 3, "seed": 5})
    assert refined == post(client, "encode", {"inputs": x, "refine_steps": 3, "seed": 5})  # the seed's noise
    assert refined["mean"] != plain["mean"]
    refined_images = post(client, "reconstruct", {"inputs": x, "refine_steps": 3, "seed": 5})["images"]
    assert refined_images == post(client, "decode", {"z": refined["mean"]})["images"]


def test_score_bounds(client, capabilities):
    x = images(3, seed=2)
    default = post(client, "score", {"inputs": x})["results"]
    cap = capabilities["score"]
    assert all(r["method"] == cap["method"] and r["k"] == cap["k"] and r["refine_steps"] == 0 for r in default)
    assert all(r["is_lower_bound"] is True and isinstance(r["stderr"], float) for r in default)
    assert "free_energy" not in default[0]  # only the fields the engine gives
    bounds = {method: post(client, "score", {"inputs": x, "method": method, "k": 12, "seed": 9})["results"]
              for method in ("elbo", "iwae")}
    for elbo, iwae in zip(bounds["elbo"], bounds["iwae"], strict=True):
        assert (elbo["method"], iwae["method"], elbo["k"], iwae["k"]) == ("elbo", "iwae", 12, 12)
        assert elbo["stderr"] > 0 and iwae["stderr"] > 0
        # the same seed and k: the same k log-weights, and log mean exp >= mean (Jensen)
        assert iwae["log_likelihood_nats"] >= elbo["log_likelihood_nats"] - 1e-9
    single = post(client, "score", {"inputs": x[:1], "method": "elbo", "k": 1})["results"][0]
    assert single["k"] == 1 and single["stderr"] is None
    refined = post(client, "score", {"inputs": x, "refine_steps": 2, "seed": 9})["results"]
    assert [r["refine_steps"] for r in refined] == [2, 2, 2]
    assert refined == post(client, "score", {"inputs": x, "refine_steps": 2, "seed": 9})["results"]


def test_sample_and_complete(client):
    first = post(client, "sample", {"n": 3, "seed": 4})["samples"]
    assert first == post(client, "sample", {"n": 3, "seed": 4})["samples"]
    assert first != post(client, "sample", {"n": 3, "seed": 5})["samples"]
    assert np.array(first).shape == (3, 28, 28)

    x = np.array(images(2, seed=3))
    mask = np.zeros((28, 28), int)
    mask[:14] = 1  # the top half observed
    body = {"inputs": x.tolist(), "mask": mask.tolist(), "n": 2, "seed": 1, "steps": 3}
    completions = np.array(post(client, "complete", body)["completions"])
    assert completions.shape == (2, 2, 28, 28) and set(np.unique(completions)) <= {0, 1}
    for given, per_input in zip(x, completions, strict=True):
        for completion in per_input:
            np.testing.assert_array_equal(completion[:14], given[:14])
    assert post(client, "complete", body)["completions"] == completions.tolist()


WIDTH = 4  # training/configs/vae-tiny.json: latent
GOOD = images(1)[0]


@pytest.mark.parametrize("route, body, status, field", [
    ("score", {"inputs": [GOOD], "k": 0}, 422, "body.k"),
    ("score", {"inputs": [GOOD], "k": 10**6}, 422, "k"),
    ("score", {"inputs": [GOOD], "method": "exact"}, 422, "method"),
    ("score", {"inputs": [GOOD], "refine_steps": 10**4}, 422, "refine_steps"),
    ("score", {"inputs": [GOOD], "refine_steps": -1}, 422, "body.refine_steps"),
    ("score", {"inputs": [GOOD], "seed": -1}, 422, "body.seed"),
    ("score", {"inputs": [GOOD], "labels": [1]}, 422, "labels"),
    ("score", {"inputs": [GOOD], "labels": [None]}, 422, "labels"),
    ("encode", {"inputs": [GOOD], "refine_steps": 10**4}, 422, "refine_steps"),
    ("encode", {"inputs": [[[2] * 28] * 28]}, 422, "inputs[0]"),
    ("encode", {}, 422, "body.inputs"),
    ("decode", {"z": [[0.0] * (WIDTH + 1)]}, 422, "z"),
    ("decode", {"z": [[0.0] * WIDTH, [0.0] * (WIDTH - 1)]}, 422, "body.z"),
    ("decode", {"z": []}, 422, "body.z"),
    ("decode", {"z": [[1e39] * WIDTH]}, 422, "body.z"),
    ("decode", {"z": [[3.4e38] * WIDTH]}, 422, "body.z: the model's output 'images' is not finite"),  # not null
    ("decode", {"z": [[0.0] * WIDTH], "formt": "png"}, 422, "body.formt: unknown field"),
    ("decode", {"z": [[0.0] * WIDTH], "format": "wav"}, 422, "body.format"),
    ("reconstruct", {"inputs": [GOOD], "refine_steps": 10**4}, 422, "refine_steps"),
    ("interpolate", {"inputs": [GOOD, GOOD, GOOD]}, 422, "body.inputs"),
    ("interpolate", {"inputs": [GOOD]}, 422, "body.inputs"),
    ("interpolate", {"inputs": [GOOD, GOOD], "steps": 1}, 422, "steps"),
    ("interpolate", {"inputs": [GOOD, GOOD], "steps": 65}, 422, "steps"),
    ("sample", {"steps": 5}, 422, "steps"),  # ancestral sampling: no Markov chain
    ("sample", {"label": 0}, 422, "label"),
    ("sample/stream", {}, 400, "sample"),
    ("complete", {"inputs": [GOOD], "mask": GOOD, "steps": 0}, 422, "body.steps"),
    ("complete", {"inputs": [GOOD], "mask": GOOD, "steps": 10**6}, 422, "steps"),
    ("complete", {"inputs": [GOOD], "mask": GOOD, "temperature": 0.5}, 422, "temperature"),
])
def test_bad_requests_name_the_field(client, route, body, status, field):
    response = client.post(f"{URL}/{route}", json=body)
    assert response.status_code == status, response.text
    assert field in response.json()["error"]["message"], response.json()


def test_missing_model_and_openapi(client):
    assert client.post("/v1/models/nope/encode", json={"inputs": [GOOD]}).status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert {f"/v1/models/{{name}}/{op}" for op in ("encode", "decode", "reconstruct", "interpolate")} <= set(paths)
