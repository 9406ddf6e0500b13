"""The anomaly flag's false-positive rate (service/engine/anomaly.py): a threshold read off 250 held-out
in-distribution scores flags fresh in-distribution inputs at its nominal rate, on average over calibrations; and a
mix whose part has no calibration entry of its own is refused with a 4xx naming `anomaly_method`, on the tiny VAE
(tests/conftest.py), where it used to fail inside the service."""

import asyncio
import hashlib
import json
import shutil

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save_file
from scipy import stats

from service.api import create_app
from service.engine import anomaly, procedures
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.genserve_servicer import to_tensor
from service.settings import Settings
from service.store import ModelStore
from tests.service.grpc_score import grpc_scores

QUANTILES = [round(q, 3) for q in np.linspace(0, 1, 201)]  # the grid benchmarks/anomaly.py calibrates on
HELD_OUT = 250  # the size of a shipped calibration (the test split's half A)
CALIBRATIONS = 1000
MIX = "mix:latent_mahalanobis+nll"


@pytest.mark.parametrize("distribution", [stats.norm(), stats.expon()])
def test_a_calibration_on_250_held_out_scores_flags_fresh_inputs_at_its_threshold(distribution):
    """Each calibration's false-positive rate at threshold q is exactly the distribution's survival function at the
    threshold it reads off its held-out scores; over many seeded calibrations its mean is 1 - q within 4 standard
    errors (numpy's default linear quantile fails it: with 250 scores it flags 1.39% at 0.99, 10.3% at 0.9)."""
    rng = np.random.default_rng(0)
    for q in (0.9, 0.95, 0.99):
        fpr = []
        for _ in range(CALIBRATIONS):
            entry = anomaly.calibration_for(distribution.rvs(HELD_OUT, random_state=rng), "synthetic", "draws",
                                            QUANTILES)
            threshold = np.interp(q, entry["quantiles"], entry["values"])  # percentile >= 100 q from here up
            fpr.append(distribution.sf(threshold))
        standard_error = np.std(fpr) / np.sqrt(CALIBRATIONS)
        assert abs(np.mean(fpr) - (1 - q)) <= 4 * standard_error, (q, np.mean(fpr), standard_error)


def test_the_served_flag_on_fresh_draws_keeps_a_binomial_false_positive_rate():
    """One calibration of 250 scores per seed, 400 fresh draws each through `answer`'s flag at 0.99: the pooled
    flag count lies within the 0.1-99.9% range of its distribution when every calibration is exact in the mean
    (Binomial(n, 0.01), widened by the calibrations' own spread, Beta(2.5, 248.5) for the rank at 0.99)."""
    rng = np.random.default_rng(1)
    flags, n = 0, 0
    for _ in range(300):
        entry = anomaly.calibration_for(rng.normal(size=HELD_OUT), "synthetic", "draws", QUANTILES)
        answers = anomaly.answer("nll", entry, 0.99, rng.normal(size=400))
        flags += sum(a["is_anomaly"] for a in answers)
        n += len(answers)
    rate = stats.beta(0.01 * (HELD_OUT + 1), 0.99 * (HELD_OUT + 1)).rvs((200, 300), random_state=rng)
    pooled = stats.binom.rvs(400, rate, random_state=rng).sum(axis=1)  # the count when calibrations are exact
    low, high = np.quantile(pooled, [0.001, 0.999])
    assert low <= flags <= high, (flags, n, low, high)


def engine_of(store) -> Engine:
    return Engine(ModelStore(store), Settings(intra_op_threads=1))


@pytest.fixture(scope="module")
def digits():
    from training.data import mnist5k_binarized

    data = mnist5k_binarized()
    return data.x_train[:200].astype(np.int64), data.x_test[:40].astype(np.int64)


def store_with(tiny_vae_store, tmp_path, digits, default: str | None, with_part: bool):
    """The tiny VAE with the mix of the latent Mahalanobis score and the NLL calibrated, its part's own entry only
    where with_part; the mix the default where default says so."""
    store = tmp_path / "store"
    shutil.copytree(tiny_vae_store / "vae", store / "vae")
    engine = engine_of(store)
    train, test = digits

    async def scores():
        gaussian = anomaly.latent_gaussian(*await engine._encode(engine.model("vae"), train, 0,
                                                                 procedures.row_generators(0, len(train))))
        mean, std = await engine._encode(engine.model("vae"), test, 0, procedures.row_generators(0, len(test)))
        nll = np.array([r["anomaly"]["score"] for r in await engine.score("vae", test, anomaly_method="nll")])
        return gaussian, {"latent_mahalanobis": anomaly.latent_mahalanobis(mean, std, gaussian), "nll": nll}

    gaussian, feats = asyncio.run(scores())
    mix = {"mix": {p: {"mean": float(feats[p].mean()), "std": float(feats[p].std())} for p in ("latent_mahalanobis",
                                                                                             "nll")}}
    path = store / "vae" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    detectors = {MIX: {**anomaly.calibration_for(anomaly.per_input_scores(MIX, feats, mix), "mix", "test 0-39",
                                                 QUANTILES), **mix}}
    if with_part:  # the Gaussian in its file, listed with its sha256, as benchmarks/anomaly.py --write puts it
        detectors["latent_mahalanobis"] = {**anomaly.calibration_for(feats["latent_mahalanobis"], "mahalanobis",
                                                                     "test 0-39", QUANTILES),
                                           "latent": anomaly.latent_entry(gaussian)}
        save_file(anomaly.latent_arrays(gaussian), str(path.parent / anomaly.LATENT_FILE))
        manifest["files"][anomaly.LATENT_FILE] = hashlib.sha256((path.parent / anomaly.LATENT_FILE).read_bytes()
                                                                ).hexdigest()
    manifest["calibration"]["detectors"] = detectors
    if default:
        manifest["calibration"]["default"] = default
    path.write_text(json.dumps(manifest))
    return store


def test_a_mix_with_every_part_calibrated_is_served(tiny_vae_store, tmp_path, digits):
    store = store_with(tiny_vae_store, tmp_path, digits, MIX, with_part=True)
    answers = asyncio.run(engine_of(store).score("vae", digits[1][:4]))
    assert [a["anomaly"]["method"] for a in answers] == [MIX] * 4


def test_a_mix_whose_part_has_no_entry_is_refused_naming_the_field(tiny_vae_store, tmp_path, digits):
    """Named in the request: a 4xx (REST's for invalid input, 422) / INVALID_ARGUMENT naming anomaly_method and the
    part; the base detector still answers when named. (As the manifest's default, the engine refuses it at load:
    test_anomaly_default_at_load.py.)"""
    store = store_with(tiny_vae_store, tmp_path, digits, None, with_part=False)
    x = digits[1][:2]
    asked = {"anomaly_method": MIX}
    with pytest.raises(InvalidInput, match="latent_mahalanobis") as error:
        asyncio.run(engine_of(store).score("vae", x, **asked))
    assert error.value.field == "anomaly_method"
    rest = TestClient(create_app(engine_of(store), Settings())).post(
        "/score", json={"model": "vae", "inputs": x.tolist(), **asked})
    assert 400 <= rest.status_code < 500 and rest.json()["error"]["field"] == "anomaly_method"
    assert "latent_mahalanobis" in rest.json()["error"]["message"]
    (refused, nll) = grpc_scores(store, [pb.ScoreRequest(model="vae", inputs=to_tensor(x), **asked),
                                         pb.ScoreRequest(model="vae", inputs=to_tensor(x), anomaly_method="nll")])
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(refused.trailing_metadata() or ())["genserve-error-field"] == "anomaly_method"
    assert [r.anomaly.method for r in nll.results] == ["nll", "nll"]
