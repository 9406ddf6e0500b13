"""The anomaly detectors' maths (service/engine/anomaly.py) and their contract through Engine.score, on the tiny
PixelCNN of tests/conftest.py: sign conventions, the typicality p-value's uniformity under in-distribution
batches, and the flag's false-positive rate on fresh in-distribution inputs."""

import asyncio
import json
import math
import shutil

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from service.engine import anomaly
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.settings import Settings
from service.store import ModelStore

MODEL = "pixelcnn"
STATES = "states:class+complexity+nll"
QUANTILES = [round(q, 3) for q in np.linspace(0, 1, 201)]


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from training.data import mnist5k_binarized

    return mnist5k_binarized().x_test.astype(np.int64)  # 500, the split of the tiny model's calibration


@pytest.fixture(scope="module")
def base_engine(tiny_store) -> Engine:
    return Engine(ModelStore(tiny_store), Settings(intra_op_threads=1))


@pytest.fixture(scope="module")
def test_nll(base_engine, digits) -> np.ndarray:
    """Every test digit's NLL (nats) under the tiny model, scored once."""
    return np.array([r["anomaly"]["score"] for r in run(base_engine.score(MODEL, digits))])


@pytest.fixture(scope="module")
def halves(digits) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(0).permutation(len(digits))
    return order[:250], order[250:]


def features(engine: Engine, x: np.ndarray) -> dict[str, np.ndarray]:
    """What the class, complexity and nll detectors read, for inputs x."""
    m = engine.model(MODEL)
    results = run(engine.score(MODEL, x))
    return {"nll": np.array([r["anomaly"]["score"] for r in results]), "png_bits": anomaly.png_bits(x, 2),
            "log_joint": run(engine._class_log_joint(m, m.capability("score"), x))}


@pytest.fixture(scope="module")
def states_entry(base_engine) -> dict:
    """The density of states of class, complexity and nll, fitted on 250 training digits."""
    from training.data import mnist5k_binarized

    fit = features(base_engine, mnist5k_binarized().x_train[:250].astype(np.int64))
    parts = anomaly.components(STATES)
    standardization = {p: {"mean": float(v.mean()), "std": float(v.std())}
                       for p in parts for v in [anomaly.per_input_scores(p, fit, None)]}
    z = anomaly.standardized(parts, fit, standardization)
    return {"states": standardization, "precision": anomaly.states_precision(z).tolist()}


@pytest.fixture(scope="module")
def engine(states_entry, tiny_store, tmp_path_factory, base_engine, digits, halves) -> Engine:
    """The tiny store copied, with `complexity`, `class`, a mix and a density of states calibrated on half A of
    the test split (the density of states fitted on training digits, as benchmarks/anomaly.py fits it)."""
    store = tmp_path_factory.mktemp("anomaly-store")
    shutil.copytree(tiny_store, store, dirs_exist_ok=True)
    path = store / MODEL / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    feats = features(base_engine, digits[halves[0]])
    detectors = {}
    for d in ("complexity", "class"):
        detectors[d] = anomaly.calibration_for(anomaly.per_input_scores(d, feats, None), anomaly.SCORE_KINDS[d],
                                               "test half A", QUANTILES)
    mix = {"mix": {p: {"mean": float(v.mean()), "std": float(v.std())}
                   for p in ("class", "nll") for v in [anomaly.per_input_scores(p, feats, None)]}}
    detectors["mix:class+nll"] = {**anomaly.calibration_for(anomaly.per_input_scores("mix:class+nll", feats, mix),
                                                            "mix", "test half A", QUANTILES), **mix}
    detectors[STATES] = {**anomaly.calibration_for(anomaly.per_input_scores(STATES, feats, states_entry),
                                                   "states", "test half A", QUANTILES), **states_entry}
    manifest["calibration"]["detectors"] = detectors
    manifest["calibration"]["default"] = "complexity"
    path.write_text(json.dumps(manifest))
    return Engine(ModelStore(store), Settings(intra_op_threads=1))


# --- sign conventions: a more anomalous input scores higher -------------------------------------------------------


def test_nll_and_critic_signs():
    assert list(anomaly.per_input_scores("nll", {"nll": np.array([80.0, 120.0])}, None)) == [80.0, 120.0]
    # a critic scores real data higher: its negation is the anomaly score
    assert list(anomaly.per_input_scores("critic", {"critic": np.array([2.0, -3.0])}, None)) == [-2.0, 3.0]


def test_complexity_is_nll_bits_minus_png_bits():
    feats = {"nll": np.array([100.0, 100.0, 150.0]), "png_bits": np.array([500.0, 400.0, 500.0])}
    s = anomaly.per_input_scores("complexity", feats, None)
    np.testing.assert_allclose(s, feats["nll"] / math.log(2) - feats["png_bits"])
    assert s[1] > s[0] and s[2] > s[0]  # simpler input at the same NLL, or higher NLL at the same complexity


def test_class_score_is_zero_for_one_explaining_class_and_log_c_for_none():
    confident = np.log([[1 - 9e-12] + [1e-12] * 9])
    ambiguous = np.log(np.full((1, 10), 0.1))
    s = anomaly.class_score(np.concatenate([confident, ambiguous]) - 50.0)  # shifting log p(x) changes nothing
    assert s[0] == pytest.approx(0.0, abs=1e-9)
    assert s[1] == pytest.approx(math.log(10))
    assert (anomaly.class_score(np.random.default_rng(0).normal(size=(100, 10))) >= 0).all()


def test_a_mix_rises_with_each_part():
    entry = {"mix": {"class": {"mean": 0.5, "std": 0.2}, "nll": {"mean": 90.0, "std": 10.0}}}
    joint = np.log([[0.9] + [0.1 / 9] * 9, [0.9] + [0.1 / 9] * 9, [0.5, 0.5] + [1e-9] * 8])
    feats = {"nll": np.array([90.0, 120.0, 90.0]), "log_joint": joint}
    s = anomaly.per_input_scores("mix:class+nll", feats, entry)
    assert s[1] > s[0] and s[2] > s[0]
    assert s[1] - s[0] == pytest.approx(3.0)  # 30 nats = 3 standard deviations


def test_a_density_of_states_is_the_squared_mahalanobis_distance_of_the_standardized_scores(states_entry):
    rng = np.random.default_rng(3)
    feats = {"nll": rng.normal(90, 10, 20), "png_bits": rng.normal(60, 5, 20),
             "log_joint": rng.normal(-90, 9, (20, 10))}
    parts = anomaly.components(STATES)
    z = np.stack([(anomaly.per_input_scores(p, feats, None) - states_entry["states"][p]["mean"])
                  / states_entry["states"][p]["std"] for p in parts], axis=1)
    expected = [distance.mahalanobis(v, np.zeros(len(parts)), np.array(states_entry["precision"])) ** 2 for v in z]
    np.testing.assert_allclose(anomaly.per_input_scores(STATES, feats, states_entry), expected, rtol=1e-10)


def test_a_density_of_states_is_two_sided_where_a_mix_is_not():
    # an input far MORE likely than any training digit (a blank or smooth image) is atypical too
    entry = {"states": {"nll": {"mean": 90.0, "std": 10.0}}, "precision": [[1.0]],
             "mix": {"nll": {"mean": 90.0, "std": 10.0}, "complexity": {"mean": 0.0, "std": 1.0}}}
    feats = {"nll": np.array([40.0, 90.0, 140.0]), "png_bits": np.array([40.0, 90.0, 140.0]) / math.log(2)}
    np.testing.assert_allclose(anomaly.per_input_scores("states:nll", feats, entry), [25.0, 0.0, 25.0])
    mix = anomaly.per_input_scores("mix:nll+complexity", feats, entry)
    assert mix[0] < mix[1] < mix[2]  # a sum ranks the likeliest input the most normal


def test_the_states_precision_whitens_correlated_scores_to_chi_square_distances():
    # fitted on one sample of correlated standardized scores, fresh draws' distances follow chi-square(F)
    rng = np.random.default_rng(5)
    covariance = np.array([[1.0, 0.8, -0.3], [0.8, 1.0, -0.1], [-0.3, -0.1, 1.0]])
    fit, fresh = (rng.multivariate_normal(np.zeros(3), covariance, size) for size in (20_000, 2_000))
    precision = anomaly.states_precision(fit)
    d2 = np.einsum("bi,ij,bj->b", fresh, precision, fresh)
    assert stats.kstest(d2, stats.chi2(3).cdf).pvalue > 0.001
    np.testing.assert_allclose(precision @ covariance, np.eye(3), atol=0.05)


def test_typicality_p_value_falls_as_the_batch_mean_moves_away():
    entry = {"quantiles": QUANTILES, "values": list(stats.norm.ppf(np.clip(QUANTILES, 1e-4, 1 - 1e-4), 100, 10))}
    p = [anomaly.typicality_p_value(np.full(8, 100.0 + shift), entry)[1] for shift in (0, 5, 10, -10)]
    assert p[0] > 0.9 and p[0] > p[1] > p[2] and p[2] < 0.01 and p[3] < 0.01  # two-sided: too likely is atypical


# --- the engine's contract ----------------------------------------------------------------------------------------


def test_the_default_detector_and_every_named_one_answer_with_the_contract(engine, digits):
    x = digits[:6]
    default = run(engine.score(MODEL, x))
    assert {r["anomaly"]["method"] for r in default} == {"complexity"}
    nll = run(engine.score(MODEL, x, anomaly_method="nll"))
    expected = np.array([-r["log_likelihood_nats"] for r in nll]) / math.log(2) - anomaly.png_bits(x, 2)
    np.testing.assert_allclose([r["anomaly"]["score"] for r in default], expected, rtol=1e-5)
    for method in ("nll", "complexity", "class", "mix:class+nll", STATES, "typicality"):
        for r in run(engine.score(MODEL, x, anomaly_method=method)):
            a = r["anomaly"]
            assert a["method"] == method
            assert 0.0 <= a["percentile"] <= 100.0
            assert a["is_anomaly"] == (a["percentile"] >= 99.0 if method != "typicality" else a["p_value"] <= 0.01)
    with pytest.raises(InvalidInput, match="anomaly_method"):
        run(engine.score(MODEL, x, anomaly_method="likelihood_ratio"))


def test_the_class_detector_agrees_with_the_per_class_scores(engine, digits):
    x = digits[:3]
    m = engine.model(MODEL)
    log_prior = np.log(m.data["class_prior"])
    per_class = np.stack([[r["log_likelihood_nats"] for r in run(engine.score(MODEL, x, [y] * len(x)))]
                          for y in range(10)], axis=1) + log_prior
    results = run(engine.score(MODEL, x, anomaly_method="class"))
    np.testing.assert_allclose([r["anomaly"]["score"] for r in results], anomaly.class_score(per_class),
                               rtol=1e-4, atol=1e-4)
    # the marginal from the same rows equals the model's own marginal
    marginal = [r["log_likelihood_nats"] for r in run(engine.score(MODEL, x))]
    np.testing.assert_allclose([r["log_likelihood_nats"] for r in results], marginal, rtol=1e-5)


def test_an_anomalous_input_scores_higher_than_digits_on_every_detector(engine, digits):
    # the greedy sample of each class, inverted: every pixel takes its less likely value (uniform noise is no
    # anomaly for the barely trained tiny model, which finds it about as likely as digits)
    modes = np.concatenate([run(engine.sample(MODEL, 1, seed=0, temperature=1e-4, label=y)) for y in range(4)])
    odd_inputs = 1 - modes
    for method in ("nll", "complexity", "mix:class+nll", STATES):
        normal = [r["anomaly"]["score"] for r in run(engine.score(MODEL, digits[:4], anomaly_method=method))]
        odd = [r["anomaly"]["score"] for r in run(engine.score(MODEL, odd_inputs, anomaly_method=method))]
        assert min(odd) > max(normal), method
    batch = run(engine.score(MODEL, odd_inputs, anomaly_method="typicality"))
    assert {r["anomaly"]["p_value"] for r in batch} == {batch[0]["anomaly"]["p_value"]}  # one value per batch
    assert batch[0]["anomaly"]["is_anomaly"]
    assert not run(engine.score(MODEL, digits[:4], anomaly_method="typicality"))[0]["anomaly"]["is_anomaly"]


# --- calibration: uniform p-values and honest false-positive rates ------------------------------------------------


def test_typicality_p_value_is_uniform_under_in_distribution_batches(base_engine, test_nll):
    # the calibration quantiles are those of this split's NLL: batches drawn from it are in-distribution
    entry = base_engine.model(MODEL).manifest["calibration"]
    rng = np.random.default_rng(17)
    for size in (1, 8, 32):
        p = [anomaly.typicality_p_value(test_nll[rng.integers(0, len(test_nll), size)], entry, draws=1000)[1]
             for _ in range(300)]
        assert stats.kstest(p, "uniform").pvalue > 0.001, size


def test_the_flag_rate_on_fresh_digits_matches_the_threshold(engine, digits, halves):
    # calibrated on half A; half B was never seen by the calibration
    fresh = digits[halves[1]]
    m = engine.model(MODEL)
    for method in ("complexity", "class", "mix:class+nll", STATES):
        scores = np.array([r["anomaly"]["score"] for r in run(engine.score(MODEL, fresh, anomaly_method=method))])
        entry = m.manifest["calibration"]["detectors"][method]
        pct = anomaly.percentile(entry, scores)
        for threshold in (0.5, 0.9, 0.99):
            rate = np.mean(pct >= 100 * threshold)
            expected = 1 - threshold
            # binomial sampling error of the fresh half, plus that of the 250 calibration digits
            sd = math.sqrt(expected * (1 - expected) * (1 / len(fresh) + 1 / 250))
            assert abs(rate - expected) <= 4 * sd + 1 / 250, (method, threshold, rate)


def test_rest_score_takes_anomaly_method_and_names_a_bad_one(engine, digits):
    """REST /score passes anomaly_method to the engine; an unknown detector is refused naming the field."""
    from fastapi.testclient import TestClient

    from service.api import create_app

    client = TestClient(create_app(engine, Settings()))
    body = {"model": "pixelcnn", "inputs": digits[:2].tolist()}
    chosen = client.post("/score", json={**body, "anomaly_method": "complexity"})
    assert chosen.status_code == 200
    assert [r["anomaly"]["method"] for r in chosen.json()["results"]] == ["complexity", "complexity"]
    refused = client.post("/score", json={**body, "anomaly_method": "no_such_detector"})
    assert 400 <= refused.status_code < 500 and refused.json()["error"]["field"] == "anomaly_method"
