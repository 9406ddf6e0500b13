"""The latent Mahalanobis score (Lee et al. 2018 in a model's latent space, service/engine/anomaly.py): its maths
against scipy's Mahalanobis distance, its sign, and the detector over REST and gRPC on the tiny VAE
(tests/conftest.py), refused with a 4xx where it is not calibrated or the model has no encoder.

The store is a copy of the tiny VAE store whose calibration gets a latent_mahalanobis entry: the Gaussian of 200
training digits' posteriors, quantiles from 40 test digits."""

import asyncio
import json
import shutil

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy.spatial.distance import mahalanobis

from service.api import create_app
from service.engine import anomaly, procedures
from service.engine.engine import Engine
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.genserve_servicer import to_tensor
from service.settings import Settings
from service.store import ModelStore
from tests.service.grpc_score import grpc_scores

QUANTILES = [round(q, 3) for q in np.linspace(0, 1, 21)]
LOOP = asyncio.new_event_loop()  # one loop for the module's in-process engines: their schedulers live in it


def run(coroutine):
    return LOOP.run_until_complete(asyncio.wait_for(coroutine, 60.0))


def engine_of(store) -> Engine:
    return Engine(ModelStore(store), Settings(intra_op_threads=1))


def posterior(engine: Engine, x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return run(engine._encode(engine.model("vae"), x, 0, procedures.row_generators(seed, len(x))))


@pytest.fixture(scope="module")
def data():
    from training.data import mnist5k_binarized

    return mnist5k_binarized()


@pytest.fixture(scope="module")
def store(tiny_vae_store, data, tmp_path_factory):
    store = tmp_path_factory.mktemp("latent-store")
    shutil.copytree(tiny_vae_store / "vae", store / "vae")
    engine = engine_of(store)
    gaussian = anomaly.latent_gaussian(*posterior(engine, data.x_train[:200].astype(np.int64)))
    held_out = anomaly.latent_mahalanobis(*posterior(engine, data.x_test[:40].astype(np.int64)), gaussian)
    path = store / "vae" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["calibration"]["detectors"] = {"latent_mahalanobis": {**anomaly.calibration_for(
        held_out, anomaly.SCORE_KINDS["latent_mahalanobis"], "test digits 0-39", QUANTILES), "latent": gaussian}}
    path.write_text(json.dumps(manifest))
    return store


# --- maths -----------------------------------------------------------------------------------------------------------


def test_the_distance_is_scipys_mahalanobis_under_the_ridged_covariance_and_zero_at_the_training_mean():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(300, 3)) @ rng.normal(size=(3, 3)) + 5.0  # correlated posterior means
    std = np.exp(rng.normal(-1.0, 0.3, size=(300, 3)))
    gaussian = anomaly.latent_gaussian(mean, std)
    assert gaussian["features"] == ["mean", "log_std"]
    f = np.concatenate([mean, np.log(std)], axis=1)
    covariance = np.cov(f, rowvar=False)
    inverse = np.linalg.inv(covariance + anomaly.LATENT_RIDGE * np.diag(covariance).mean() * np.eye(6))
    want = [mahalanobis(row, f.mean(axis=0), inverse) for row in f[:20]]
    np.testing.assert_allclose(anomaly.latent_mahalanobis(mean[:20], std[:20], gaussian), want, rtol=1e-9)
    centre = f.mean(axis=0)
    assert anomaly.latent_mahalanobis(centre[None, :3], np.exp(centre[None, 3:]), gaussian)[0] == \
        pytest.approx(0.0, abs=1e-9)


def test_a_deterministic_encoder_is_measured_by_its_mean_alone():
    mean = np.random.default_rng(1).normal(size=(100, 4))
    gaussian = anomaly.latent_gaussian(mean, np.zeros_like(mean))  # a BiGAN's encoder: std 0
    assert gaussian["features"] == ["mean"] and np.shape(gaussian["precision"]) == (4, 4)
    assert np.isfinite(anomaly.latent_mahalanobis(mean, np.zeros_like(mean), gaussian)).all()


def test_a_latent_farther_from_the_training_latents_scores_higher():
    rng = np.random.default_rng(2)
    mean, std = rng.normal(size=(200, 4)), np.exp(rng.normal(-1.0, 0.1, (200, 4)))
    gaussian = anomaly.latent_gaussian(mean, std)
    centre, typical_std = np.asarray(gaussian["mean"][:4]), np.exp(gaussian["mean"][4:])
    steps = np.array([0.0, 1.0, 3.0, 10.0])[:, None] * np.ones(4)  # along one direction, farther each row
    scores = anomaly.latent_mahalanobis(centre + steps, np.tile(typical_std, (4, 1)), gaussian)
    assert scores[0] == pytest.approx(0.0, abs=1e-9) and (np.diff(scores) > 0).all()
    assert scores[-1] > anomaly.latent_mahalanobis(mean, std, gaussian).max()


# --- serving: REST and gRPC alike; refused where not calibrated or not computable ------------------------------------


def test_the_served_score_is_the_distance_of_the_served_posterior(store, data):
    engine = engine_of(store)
    x = data.x_test[40:46].astype(np.int64)
    results = run(engine.score("vae", x, anomaly_method="latent_mahalanobis", seed=4))
    gaussian = anomaly.fitted_latent_gaussian(engine.model("vae").manifest)
    want = anomaly.latent_mahalanobis(*posterior(engine, x, seed=4), gaussian)
    np.testing.assert_allclose([r["anomaly"]["score"] for r in results], want, rtol=1e-9)


def test_the_gaussian_is_built_once_at_load_and_requests_read_its_arrays(store, data, tiny_vae_store):
    """The loaded model holds the fitted Gaussian as float64 arrays equal to the manifest's lists, built when the
    engine loads it; a request reads those arrays, not the manifest's JSON lists: with the lists spoiled after load,
    the served scores stay the same. A model without the entry holds none."""
    engine = engine_of(store)
    m = engine.model("vae")
    latent = m.manifest["calibration"]["detectors"]["latent_mahalanobis"]["latent"]
    gaussian = m.latent_gaussian
    assert gaussian["precision"].dtype == gaussian["mean"].dtype == np.float64
    assert gaussian["precision"].shape == (len(latent["mean"]),) * 2
    np.testing.assert_array_equal(gaussian["precision"], latent["precision"])
    np.testing.assert_array_equal(gaussian["mean"], latent["mean"])
    x = data.x_test[40:44].astype(np.int64)

    def served() -> list[float]:
        return [r["anomaly"]["score"] for r in run(engine.score("vae", x, anomaly_method="latent_mahalanobis"))]

    before = served()
    latent["mean"], latent["precision"] = [0.0] * len(latent["mean"]), None  # what a per-request read would meet
    assert served() == before and m.latent_gaussian is gaussian
    assert engine_of(tiny_vae_store).model("vae").latent_gaussian is None


def test_inputs_far_from_the_training_digits_score_higher_through_the_served_encoder(store, data):
    engine = engine_of(store)
    digits = data.x_test[40:80].astype(np.int64)
    noise = (np.random.default_rng(3).random(digits.shape) < 0.5).astype(np.int64)

    def scores(x):
        results = run(engine.score("vae", x, anomaly_method="latent_mahalanobis"))
        return np.array([r["anomaly"]["score"] for r in results])

    typical = np.quantile(scores(digits), 0.9)
    assert np.median(scores(1 - digits)) > typical and np.median(scores(noise)) > typical


def test_rest_and_grpc_answer_it_named_with_its_held_out_percentile(store, data):
    x = np.concatenate([data.x_test[40:43], np.ones((1, 1, 28, 28), np.int64)]).astype(np.int64)
    entry = engine_of(store).model("vae").manifest["calibration"]["detectors"]["latent_mahalanobis"]
    client = TestClient(create_app(engine_of(store), Settings()))
    rest = client.post("/score", json={"model": "vae", "inputs": x.tolist(), "seed": 3,
                                       "anomaly_method": "latent_mahalanobis"})
    assert rest.status_code == 200, rest.text
    (answer,) = grpc_scores(store, [pb.ScoreRequest(model="vae", inputs=to_tensor(x), seed=3,
                                                    anomaly_method="latent_mahalanobis")])
    for got, b in zip(answer.results, rest.json()["results"], strict=True):
        a, b = got.anomaly, b["anomaly"]
        assert a.method == b["method"] == "latent_mahalanobis"
        assert a.score_kind == b["score_kind"] == anomaly.SCORE_KINDS["latent_mahalanobis"]
        assert a.score == pytest.approx(b["score"], rel=1e-9)
        percentile = float(anomaly.percentile(entry, np.array([b["score"]]))[0])
        assert a.percentile == pytest.approx(b["percentile"]) and b["percentile"] == pytest.approx(percentile)
        assert a.is_anomaly == b["is_anomaly"] == (percentile >= 99.0)


@pytest.mark.parametrize("method", ["latent_mahalanobis", "latent_mahalanobis_typo"])
def test_uncalibrated_or_unknown_is_refused_with_a_4xx_naming_the_field(tiny_vae_store, data, method):
    """The tiny VAE store as exported: its calibration has no latent_mahalanobis entry."""
    x = data.x_test[:2].astype(np.int64)
    rest = TestClient(create_app(engine_of(tiny_vae_store), Settings())).post(
        "/score", json={"model": "vae", "inputs": x.tolist(), "anomaly_method": method})
    assert 400 <= rest.status_code < 500 and rest.json()["error"]["field"] == "anomaly_method"
    assert method in rest.json()["error"]["message"]
    (error,) = grpc_scores(tiny_vae_store, [pb.ScoreRequest(model="vae", inputs=to_tensor(x), anomaly_method=method)])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(error.trailing_metadata() or ())["genserve-error-field"] == "anomaly_method"


@pytest.mark.parametrize("dim, offered", [(32, True), (anomaly.LATENT_MAX_DIM, True),
                                          (anomaly.LATENT_MAX_DIM + 1, False), (784, False), (-1, False)])
def test_a_latent_too_large_for_a_precision_matrix_in_the_manifest_is_not_offered(tiny_vae_store, dim, offered):
    """A flow's z is as large as x (784): its Gaussian's 784 x 784 precision would be 22 MB of manifest JSON."""
    manifest = json.loads((tiny_vae_store / "vae" / "1" / "manifest.json").read_text())
    for output in manifest["functions"]["encode"]["outputs"]:
        output["shape"] = [-1, dim]
    inputs = {name: [t["name"] for t in f["inputs"]] for name, f in manifest["functions"].items()}
    detectors = anomaly.computable(manifest, manifest["capabilities"]["score"], inputs.__getitem__)
    assert ("latent_mahalanobis" in detectors) == offered
