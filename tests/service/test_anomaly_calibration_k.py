"""A bound-scored model's detectors score the bound their calibration was computed at (service/engine/anomaly.py:
the entry's `k` and `method`), whatever bound the request asks for, on the tiny VAE of tests/conftest.py.

The store is a copy whose top-level (`nll`) and `complexity` entries are calibrated here on half A of the test
digits at CALIBRATED (the ELBO of 4 draws); requests ask for IWAE_64, a bound higher by about a standard deviation
of the digits' NLL: the answers' log-likelihoods are that bound, their anomaly scores the calibrated one."""

import asyncio
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.engine import anomaly
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.settings import Settings
from service.store import ModelStore

MODEL = "vae"
CALIBRATED = {"k": 4, "method": "elbo"}
ASKED = {"k": 64, "method": "iwae"}
QUANTILES = [round(q, 3) for q in np.linspace(0, 1, 201)]
DETECTORS = ("nll", "complexity", "mix:complexity+nll", "typical_nll", "typicality")


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from training.data import mnist5k_binarized

    return mnist5k_binarized().x_test.astype(np.int64)


@pytest.fixture(scope="module")
def halves(digits) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(0).permutation(len(digits))
    return digits[np.sort(order[:250])], digits[np.sort(order[250:])]


@pytest.fixture(scope="module")
def plain(tiny_vae_store, tmp_path_factory) -> Engine:
    """The exported tiny VAE with its calibration's bound settings taken out (a manifest from before they were
    recorded)."""
    store = tmp_path_factory.mktemp("plain-store")
    shutil.copytree(tiny_vae_store, store, dirs_exist_ok=True)
    path = store / MODEL / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    for setting in ("k", "method"):
        manifest["calibration"].pop(setting)
    path.write_text(json.dumps(manifest))
    return Engine(ModelStore(store), Settings(intra_op_threads=1))


def test_export_records_the_bound_its_calibration_comes_from(tiny_vae_store):
    manifest = json.loads((tiny_vae_store / MODEL / "1" / "manifest.json").read_text())
    score = manifest["capabilities"]["score"]
    assert anomaly.bound_settings(manifest["calibration"]) == (score["k"], score["method"])


@pytest.fixture(scope="module")
def store(tiny_vae_store, tmp_path_factory, plain, halves) -> Path:
    store = tmp_path_factory.mktemp("calibrated-k-store")
    shutil.copytree(tiny_vae_store, store, dirs_exist_ok=True)
    x = halves[0]
    nll = -np.array([r["log_likelihood_nats"] for r in run(plain.score(MODEL, x, seed=0, **CALIBRATED))])
    feats = {"nll": nll, "png_bits": anomaly.png_bits(x, 2)}
    mix = {"mix": {p: {"mean": float(v.mean()), "std": float(v.std())}
                   for p in ("complexity", "nll") for v in [anomaly.per_input_scores(p, feats, None)]}}
    center = {"center": float(nll.mean())}
    path = store / MODEL / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["calibration"].update(anomaly.calibration_for(nll, "nll_nats", "test half A", QUANTILES), **CALIBRATED)
    manifest["calibration"]["detectors"] = {
        "complexity": {**anomaly.calibration_for(anomaly.per_input_scores("complexity", feats, None),
                                                 anomaly.SCORE_KINDS["complexity"], "test half A", QUANTILES),
                       **CALIBRATED},
        "mix:complexity+nll": {**anomaly.calibration_for(anomaly.per_input_scores("mix:complexity+nll", feats, mix),
                                                         "mix", "test half A", QUANTILES), **CALIBRATED, **mix},
        "typical_nll": {**anomaly.calibration_for(anomaly.per_input_scores("typical_nll", feats, center),
                                                  anomaly.SCORE_KINDS["typical_nll"], "test half A", QUANTILES),
                        **CALIBRATED, **center}}
    path.write_text(json.dumps(manifest))
    return store


@pytest.fixture(scope="module")
def engine(store) -> Engine:
    return Engine(ModelStore(store), Settings(intra_op_threads=1))


def scored(engine: Engine, x: np.ndarray, detector: str, **options) -> tuple[np.ndarray, list[dict]]:
    results = run(engine.score(MODEL, x, anomaly_method=detector, **options))
    assert {r["anomaly"]["method"] for r in results} == {detector}
    return np.array([r["log_likelihood_nats"] for r in results]), [r["anomaly"] for r in results]


@pytest.mark.parametrize("detector", DETECTORS)
def test_a_request_at_another_bound_gets_the_calibrated_anomaly_score(engine, halves, detector):
    x = halves[1][:8]
    log_p_calibrated, calibrated = scored(engine, x, detector, seed=5, **CALIBRATED)
    for options in (ASKED, {"k": 2}, {**CALIBRATED, "refine_steps": 3}):
        log_p, answer = scored(engine, x, detector, seed=5, **options)
        assert answer == calibrated, options
        assert not np.allclose(log_p, log_p_calibrated), options  # the log-likelihood is the bound asked for
    if detector == "nll":  # at the calibrated settings the served bound itself is the score
        np.testing.assert_allclose([a["score"] for a in calibrated], -log_p_calibrated)
        assert [a["score"] for a in scored(engine, x, detector, seed=6, **ASKED)[1]] != \
            [a["score"] for a in calibrated]  # and the request's seed draws its noise


def test_without_recorded_settings_the_requests_bound_is_scored(plain, halves):
    log_p, answer = scored(plain, halves[1][:8], "nll", seed=5, **ASKED)
    np.testing.assert_allclose([a["score"] for a in answer], -log_p)


def test_a_calibrated_bound_over_the_request_limit_is_refused_naming_inputs(store, halves):
    engine = Engine(ModelStore(store), Settings(intra_op_threads=1))
    engine.model(MODEL).capabilities["score"]["max_row_steps"] = 20  # 8 inputs: k=2 fits, the calibrated k=4 not
    x = halves[1][:8]
    with pytest.raises(InvalidInput, match="calibrated k") as refused:
        run(engine.score(MODEL, x, k=2, anomaly_method="complexity"))
    assert refused.value.field == "inputs"


def test_the_flag_rate_on_fresh_digits_matches_the_threshold_at_any_requested_k(engine, halves):
    # calibrated on half A at CALIBRATED; half B (never seen by the calibration) is asked for at ASKED
    fresh = halves[1]
    calibration = engine.model(MODEL).manifest["calibration"]
    for detector in ("nll", "complexity", "mix:complexity+nll"):
        log_p, answers = scored(engine, fresh, detector, seed=1, **ASKED)
        pct = np.array([a["percentile"] for a in answers])
        for threshold in (0.5, 0.9, 0.99):
            rate, expected = np.mean(pct >= 100 * threshold), 1 - threshold
            # binomial sampling error of the fresh half, plus that of the 250 calibration digits
            sd = math.sqrt(expected * (1 - expected) * (1 / len(fresh) + 1 / 250))
            assert abs(rate - expected) <= 4 * sd + 1 / 250, (detector, threshold, rate)
    # the test has power: the asked-for bound read against the same quantiles flags far fewer than half
    rate = np.mean(anomaly.percentile(calibration, -log_p) >= 50.0)
    assert rate < 0.5 - 4 * math.sqrt(0.25 * 2 / 250), rate
