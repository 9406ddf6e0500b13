"""Anomaly detectors over gRPC and REST alike, and the likelihood ratio's maths, on a store of the tiny PixelCNN
and the tiny RBM (tests/conftest.py), both on binarized digits.

The PixelCNN's calibration gets `complexity` and two likelihood ratios: against the RBM, and against itself (a
copy named `pixelcnn-self`), which must score 0 on every input."""

import asyncio
import json
import shutil

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine import anomaly
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.genserve_servicer import to_tensor
from service.settings import Settings
from service.store import ModelStore
from tests.service.grpc_score import grpc_scores

MODEL = "pixelcnn"
QUANTILES = [round(q, 3) for q in np.linspace(0, 1, 21)]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60.0))


def nll(engine: Engine, name: str, x: np.ndarray) -> np.ndarray:
    return np.array([r["anomaly"]["score"] for r in run(engine.score(name, x, anomaly_method="nll"))])


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from training.data import mnist5k_binarized

    return mnist5k_binarized().x_test[:40].astype(np.int64)


def calibrate(store, name: str, background: str, engine: Engine, x: np.ndarray) -> None:
    """Give `name` complexity and likelihood_ratio (against `background`) entries, calibrated on x."""
    path = store / name / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    feats = {"nll": nll(engine, name, x), "png_bits": anomaly.png_bits(x, 2),
             "background_nll": nll(engine, background, x)}
    manifest["calibration"]["detectors"] = {
        "complexity": anomaly.calibration_for(anomaly.per_input_scores("complexity", feats, None),
                                              anomaly.SCORE_KINDS["complexity"], "test", QUANTILES),
        "likelihood_ratio": {**anomaly.calibration_for(anomaly.per_input_scores("likelihood_ratio", feats, None),
                                                       anomaly.SCORE_KINDS["likelihood_ratio"], "test", QUANTILES),
                             "background": background}}
    path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def store(tiny_store, tiny_rbm_store, tmp_path_factory, digits):
    store = tmp_path_factory.mktemp("anomaly-grpc-store")
    shutil.copytree(tiny_store, store, dirs_exist_ok=True)
    shutil.copytree(tiny_rbm_store, store, dirs_exist_ok=True)
    shutil.copytree(tiny_store / MODEL, store / "pixelcnn-self")
    path = store / "pixelcnn-self" / "1" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "name": "pixelcnn-self"}))
    plain = Engine(ModelStore(store), Settings(intra_op_threads=1))
    calibrate(store, MODEL, "rbm", plain, digits[20:])
    calibrate(store, "pixelcnn-self", "pixelcnn-self", plain, digits[20:])
    return store


@pytest.fixture(scope="module")
def engine(store) -> Engine:
    return Engine(ModelStore(store), Settings(intra_op_threads=1))


# --- the likelihood ratio's maths ----------------------------------------------------------------------------------


def test_the_likelihood_ratio_is_the_nll_minus_the_background_nll(engine, digits):
    x = digits[:6]
    got = [r["anomaly"] for r in run(engine.score(MODEL, x, anomaly_method="likelihood_ratio"))]
    np.testing.assert_allclose([a["score"] for a in got], nll(engine, MODEL, x) - nll(engine, "rbm", x), rtol=1e-6)
    assert {a["method"] for a in got} == {"likelihood_ratio"}
    assert {a["score_kind"] for a in got} == {"nll_minus_background_nll_nats"}
    # sign: an input the model finds less likely, relative to the background, scores higher
    order = np.argsort([a["score"] for a in got])
    assert (np.diff(np.array([a["percentile"] for a in got])[order]) >= 0).all()


def test_a_model_against_itself_scores_zero(engine, digits):
    results = run(engine.score("pixelcnn-self", digits[:8], anomaly_method="likelihood_ratio"))
    assert [r["anomaly"]["score"] for r in results] == [0.0] * 8


def test_the_likelihood_ratio_needs_its_background_served(store, digits, tmp_path):
    shutil.copytree(store / MODEL, tmp_path / MODEL)  # the PixelCNN alone: its background `rbm` is absent
    path = tmp_path / MODEL / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["calibration"]["default"] = "likelihood_ratio"
    path.write_text(json.dumps(manifest))
    alone = Engine(ModelStore(tmp_path), Settings(intra_op_threads=1))
    # the default falls back to the model's own NLL, and says so
    assert {r["anomaly"]["method"] for r in run(alone.score(MODEL, digits[:2]))} == {"nll"}
    with pytest.raises(InvalidInput, match="likelihood_ratio") as info:
        run(alone.score(MODEL, digits[:2], anomaly_method="likelihood_ratio"))
    assert info.value.field == "anomaly_method"
    assert run(alone.score(MODEL, digits[:2], anomaly_method="complexity"))[0]["anomaly"]["method"] == "complexity"


# --- gRPC: the same detectors, the same numbers as REST -----------------------------------------------------------


def test_an_unknown_method_is_invalid_argument_naming_the_field(store, digits):
    (error,) = grpc_scores(store, [pb.ScoreRequest(model=MODEL, inputs=to_tensor(digits[:2]),
                                                   anomaly_method="no_such_detector")])
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("anomaly_method:") and "no_such_detector" in error.details()
    assert dict(error.trailing_metadata() or ())["genserve-error-field"] == "anomaly_method"


def test_an_overlong_method_is_refused_by_its_length_not_echoed(store, digits):
    """By the type REST checks too (service/engine/options.py): the same words as REST's 422."""
    (error,) = grpc_scores(store, [pb.ScoreRequest(model=MODEL, inputs=to_tensor(digits[:2]),
                                                   anomaly_method="q" * 200_000)])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "anomaly_method: String should have at most 128 characters"


def test_each_method_gives_the_same_answer_over_rest_and_grpc(store, digits):
    x = digits[:5]
    methods = [None, "nll", "complexity", "likelihood_ratio", "typicality"]
    answers = grpc_scores(store, [pb.ScoreRequest(model=MODEL, inputs=to_tensor(x), **(
        {"anomaly_method": method} if method else {})) for method in methods])
    client = TestClient(create_app(Engine(ModelStore(store), Settings(intra_op_threads=1)), Settings()))
    for method, answer in zip(methods, answers, strict=True):
        body = {"model": MODEL, "inputs": x.tolist(), **({"anomaly_method": method} if method else {})}
        rest = client.post("/score", json=body)
        assert rest.status_code == 200, rest.text
        for got, want in zip(answer.results, rest.json()["results"], strict=True):
            a, b = got.anomaly, want["anomaly"]
            assert a.method == b["method"] == (method or "nll")
            assert a.score_kind == b["score_kind"]
            assert a.score == pytest.approx(b["score"], rel=1e-9, abs=1e-9)
            assert a.percentile == pytest.approx(b["percentile"], rel=1e-9, abs=1e-9)
            assert a.is_anomaly == b["is_anomaly"]
            assert a.HasField("p_value") == (b.get("p_value") is not None)
            if method == "typicality":
                assert a.p_value == pytest.approx(b["p_value"]) and a.batch_size == b["batch_size"] == len(x)
