"""The per-input typicality score `typical_nll` (Nalisnick et al. 2019's statistic for a batch of one,
service/engine/anomaly.py): |NLL - center|, its sign (too likely is as anomalous as too unlikely), a mix that
carries its center, the manifest schema that refuses an entry without one, and the detector served on the tiny VAE
(tests/conftest.py) as the NLL the service computes, measured from the entry's center."""

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.engine import anomaly
from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore
from service.store.store import manifest_validator

MODELS = Path(__file__).resolve().parents[2] / "models"
QUANTILES = [round(q, 3) for q in np.linspace(0, 1, 21)]


def test_the_score_is_the_distance_from_the_center_in_either_direction():
    nll = np.array([80.0, 100.0, 120.0, 40.0])
    scores = anomaly.per_input_scores("typical_nll", {"nll": nll}, {"center": 100.0})
    np.testing.assert_array_equal(scores, [20.0, 0.0, 20.0, 60.0])
    # the too-likely input (NLL 40) is the most anomalous, where `nll` would rank it the most normal
    assert scores.argmax() == 3 and anomaly.per_input_scores("nll", {"nll": nll}, None).argmin() == 3


def test_a_mix_measures_its_typical_part_from_the_center_its_standardization_carries():
    nll = np.array([70.0, 95.0, 130.0])
    entry = {"mix": {"nll": {"mean": 90.0, "std": 10.0},
                     "typical_nll": {"center": 100.0, "mean": 12.0, "std": 4.0}}}
    want = (nll - 90.0) / 10.0 + (np.abs(nll - 100.0) - 12.0) / 4.0
    np.testing.assert_allclose(anomaly.per_input_scores("mix:nll+typical_nll", {"nll": nll}, entry), want)


def manifest_with(detectors: dict) -> dict:
    manifest = json.loads((MODELS / "vae" / "1" / "manifest.json").read_text())
    manifest["calibration"]["detectors"] = detectors
    return manifest


def entry(**extra) -> dict:
    return {"score": "s", "quantiles": [0.0, 1.0], "values": [0.0, 1.0], "n": 2, "split": "test", **extra}


@pytest.mark.parametrize("detectors, refused", [
    ({"typical_nll": entry(center=90.0)}, False),
    ({"typical_nll": entry()}, True),
    ({"mix:nll+typical_nll": entry(mix={"nll": {"mean": 0, "std": 1}, "typical_nll": {"mean": 0, "std": 1}})}, True),
    ({"mix:nll+typical_nll": entry(mix={"nll": {"mean": 0, "std": 1}})}, True),
    ({"mix:typical_nll+complexity": entry(mix={"complexity": {"mean": 0, "std": 1},
                                                "typical_nll": {"center": 9.0, "mean": 0, "std": 1}})}, False),
    ({"mix:typical_nll+nll": entry(mix={"nll": {"mean": 0, "std": 1},
                                         "typical_nll": {"center": "80", "mean": 0, "std": 1}})}, True),
    ({"mix:nll+complexity": entry(mix={"nll": {"mean": 0, "std": 1}, "complexity": {"mean": 0, "std": 1}})}, False),
])
def test_the_schema_refuses_a_typical_nll_without_its_center(detectors, refused):
    errors = list(manifest_validator().iter_errors(manifest_with(detectors)))
    assert bool(errors) == refused, errors
    if refused:
        assert any("center" in e.message or "typical_nll" in e.message or "center" in e.absolute_path
                   for e in errors), errors


@pytest.fixture(scope="module")
def store(tiny_vae_store, tmp_path_factory):
    """The tiny VAE with a typical_nll entry: center 80 nats, quantiles of |NLL - 80| spread over 0..60."""
    store = tmp_path_factory.mktemp("typical-store")
    shutil.copytree(tiny_vae_store / "vae", store / "vae")
    path = store / "vae" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    held_out = np.linspace(0.0, 60.0, 41)
    manifest["calibration"]["detectors"] = {"typical_nll": {**anomaly.calibration_for(
        held_out, anomaly.SCORE_KINDS["typical_nll"], "synthetic", QUANTILES), "center": 80.0}}
    path.write_text(json.dumps(manifest))
    return store


def test_the_served_score_is_the_served_nll_measured_from_the_center(store):
    engine = Engine(ModelStore(store), Settings(intra_op_threads=1))
    x = (np.random.default_rng(5).random((4, 1, 28, 28)) < 0.2).astype(np.int64)
    x[0] = 0  # a blank image: a likelihood model may find it more likely than any digit

    def served(method: str) -> list[dict]:
        loop = asyncio.new_event_loop()
        try:
            return [r["anomaly"] for r in loop.run_until_complete(engine.score("vae", x, anomaly_method=method,
                                                                               seed=3))]
        finally:
            loop.close()

    nll, typical = served("nll"), served("typical_nll")
    assert [a["method"] for a in typical] == ["typical_nll"] * 4
    np.testing.assert_allclose([a["score"] for a in typical], [abs(a["score"] - 80.0) for a in nll], rtol=1e-12)
