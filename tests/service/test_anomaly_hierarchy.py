"""The hierarchical ratio (Havtorn et al. 2021's LLR^{>k}, service/engine/anomaly.py) on the shipped two-layer hvae:
its maths (k = 0 gives 0, the full bound is the served bound, the sign), and the detector over REST and gRPC,
refused with a 4xx for a model without a latent hierarchy (the shipped vae).

The store is a copy of models/hvae and models/vae whose hvae calibration holds a hierarchical_ratio entry fitted
here on test digits at a small k (the vae's copy gets the same entry: it must still be refused)."""

import asyncio
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine import anomaly, latent
from service.engine.engine import Engine
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.genserve_servicer import to_tensor
from service.settings import Settings
from service.store import ModelStore
from tests.service.grpc_score import grpc_scores

MODELS = Path(__file__).resolve().parents[2] / "models"
QUANTILES = [round(q, 3) for q in np.linspace(0, 1, 21)]
K, SKIP = 8, 1  # the detector's draws and skipped layers, as calibrated here


LOOP = asyncio.new_event_loop()  # one loop for the module's in-process engines: their schedulers live in it


def run(coroutine):
    return LOOP.run_until_complete(asyncio.wait_for(coroutine, 120.0))


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from training.data import mnist5k_binarized

    return mnist5k_binarized().x_test[:40].astype(np.int64)


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits) -> Path:
    store = tmp_path_factory.mktemp("hierarchy-store")
    for name in ("hvae", "vae"):
        shutil.copytree(MODELS / name, store / name)
    plain = Engine(ModelStore(store), Settings(intra_op_threads=1))
    m = plain.model("hvae")
    held_out = anomaly.hierarchical_ratio(
        run(plain._hierarchy_log_weights(m, m.capability("score"), digits[8:], K, 0)), "iwae", SKIP)
    entry = {**anomaly.calibration_for(held_out, anomaly.SCORE_KINDS["hierarchical_ratio"], "test digits 8-39",
                                       QUANTILES), "skip": SKIP, "k": K, "method": "iwae"}
    for name in ("hvae", "vae"):
        path = store / name / "1" / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["calibration"]["detectors"] = {"hierarchical_ratio": entry}
        # the vae's default becomes its nll: the store refuses a default that cannot answer (it cannot compute the
        # hierarchical ratio, and its shipped default's entry is gone)
        manifest["calibration"]["default"] = "hierarchical_ratio" if name == "hvae" else "nll"
        path.write_text(json.dumps(manifest))
    return store


@pytest.fixture(scope="module")
def engine(store) -> Engine:
    return Engine(ModelStore(store), Settings(intra_op_threads=1))


def ratio(engine: Engine, x: np.ndarray, **options) -> np.ndarray:
    results = run(engine.score("hvae", x, anomaly_method="hierarchical_ratio", k=2, **options))
    assert {r["anomaly"]["method"] for r in results} == {"hierarchical_ratio"}
    return np.array([r["anomaly"]["score"] for r in results])


# --- maths ---------------------------------------------------------------------------------------------------------


def test_skipping_no_layer_gives_zero_and_one_layer_the_difference_of_the_two_bounds():
    log_w = np.random.default_rng(0).normal(-90.0, 3.0, (5, 7, 2))
    for method in ("iwae", "elbo"):
        assert (anomaly.hierarchical_ratio(log_w, method, 0) == 0.0).all()  # L against itself
        want = latent.bound(log_w[:, :, 0], method)[0] - latent.bound(log_w[:, :, 1], method)[0]
        np.testing.assert_array_equal(anomaly.hierarchical_ratio(log_w, method, 1), want)
    with pytest.raises(ValueError, match="2 latent layers"):
        anomaly.hierarchical_ratio(log_w, "iwae", 2)


def test_the_full_bound_is_the_served_bound_under_the_same_seed_and_k(engine, digits):
    m = engine.model("hvae")
    log_w = run(engine._hierarchy_log_weights(m, m.capability("score"), digits[:4], 16, 5))
    assert log_w.shape == (4, 16, 2)
    served = [r["log_likelihood_nats"] for r in run(engine.score("hvae", digits[:4], k=16, seed=5))]
    np.testing.assert_array_equal(latent.bound(log_w[:, :, 0], "iwae")[0], served)


def test_a_more_anomalous_input_scores_higher(engine, digits):
    """Inverted digits and noise with the digits' ink density: only low-level statistics explain them."""
    rng = np.random.default_rng(1)
    normal = ratio(engine, digits[:8])
    inverted = ratio(engine, 1 - digits[:8])
    permuted = ratio(engine, np.stack([rng.permutation(x.ravel()).reshape(x.shape) for x in digits[:8]]))
    assert inverted.min() > normal.max() and permuted.min() > normal.max()


def test_the_score_uses_the_calibrated_k_whatever_the_request_asks(engine, digits):
    np.testing.assert_array_equal(ratio(engine, digits[:3], seed=2),
                                  [r["anomaly"]["score"] for r in run(engine.score(
                                      "hvae", digits[:3], anomaly_method="hierarchical_ratio", k=50, seed=2))])


# --- serving: REST and gRPC alike; refused where there is no hierarchy ------------------------------------------------


def test_rest_and_grpc_serve_it_with_its_held_out_percentile(store, engine, digits):
    x = np.concatenate([digits[:3], 1 - digits[:1]])
    entry = engine.model("hvae").manifest["calibration"]["detectors"]["hierarchical_ratio"]
    client = TestClient(create_app(Engine(ModelStore(store), Settings(intra_op_threads=1)), Settings()))
    rest = client.post("/score", json={"model": "hvae", "inputs": x.tolist(), "k": 4, "seed": 3,
                                       "anomaly_method": "hierarchical_ratio"})
    assert rest.status_code == 200, rest.text
    default = client.post("/score", json={"model": "hvae", "inputs": x.tolist(), "k": 4, "seed": 3})
    assert default.json()["results"] == rest.json()["results"]  # the calibrated default here
    (answer,) = grpc_scores(store, [pb.ScoreRequest(model="hvae", inputs=to_tensor(x), k=4, seed=3,
                                                    anomaly_method="hierarchical_ratio")])
    want = ratio(engine, x, seed=3)
    for got, b, score in zip(answer.results, rest.json()["results"], want, strict=True):
        a, b = got.anomaly, b["anomaly"]
        assert a.method == b["method"] == "hierarchical_ratio"
        assert a.score_kind == b["score_kind"] == anomaly.SCORE_KINDS["hierarchical_ratio"]
        assert a.score == pytest.approx(b["score"], rel=1e-9) and b["score"] == pytest.approx(score, rel=1e-9)
        percentile = float(anomaly.percentile(entry, np.array([score]))[0])
        assert a.percentile == pytest.approx(b["percentile"]) and b["percentile"] == pytest.approx(percentile)
        assert a.is_anomaly == b["is_anomaly"] == (percentile >= 99.0)
    assert rest.json()["results"][-1]["anomaly"]["is_anomaly"]  # the inverted digit


def test_a_model_without_a_latent_hierarchy_is_refused_with_a_4xx_naming_the_field(store, digits):
    body = {"model": "vae", "inputs": digits[:2].tolist(), "anomaly_method": "hierarchical_ratio"}
    app = create_app(Engine(ModelStore(store), Settings(intra_op_threads=1)), Settings())
    rest = TestClient(app).post("/score", json=body)
    assert rest.status_code == 422 and rest.json()["error"]["field"] == "anomaly_method"
    assert "hierarchical_ratio" in rest.json()["error"]["message"]
    (error,) = grpc_scores(store, [pb.ScoreRequest(model="vae", inputs=to_tensor(digits[:2]),
                                                   anomaly_method="hierarchical_ratio")])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(error.trailing_metadata() or ())["genserve-error-field"] == "anomaly_method"
