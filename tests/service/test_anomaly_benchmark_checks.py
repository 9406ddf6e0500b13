"""benchmarks/anomaly.py's calibration check and --recalibrate: the permutation p-value counts the observed split
((1 + #{permuted >= observed}) / (1 + draws), never 0), a check with no fresh digits and entries of differing k
stop with an error that says what was expected and found, and the half-A split text is computed from the test
split's size (the shipped manifests' entries are recognized by it)."""

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import anomaly as bench

MODELS = Path(__file__).resolve().parents[2] / "models"


def row(model: str, held_out: np.ndarray, fresh: np.ndarray) -> dict:
    flags = int(np.count_nonzero(fresh >= np.quantile(held_out, 0.99, method="weibull")))
    return {"model": model, "n_cal": len(held_out), "n_fresh": len(fresh), "expected_fpr": 0.01, "flags": flags,
            "quantile_method": "weibull", "held_out_scores": held_out.tolist(), "fresh_scores": fresh.tolist()}


def test_the_permutation_p_value_counts_the_observed_split():
    counts = np.array([0, 1, 1, 2, 3, 5])
    assert bench.permutation_p(counts, 2) == (1 + 3) / (1 + 6)
    assert bench.permutation_p(counts, 9) == 1 / 7  # beyond every permutation: the smallest p, not 0
    assert bench.permutation_p(counts, 0) == 1.0


def test_a_shifted_fresh_half_gets_the_smallest_p_value_and_an_exchangeable_one_a_large_one():
    """Fresh scores above every held-out one flag all 250, which no random split of the pooled scores reaches: p is
    1 / (1 + draws), for the row and for all rows together; fresh draws from the held-out distribution do not."""
    rng = np.random.default_rng(0)
    shifted = row("shifted", rng.normal(size=250), rng.normal(size=250) + 100.0)
    same = row("same", rng.normal(size=250), rng.normal(size=250))
    joint = bench.permutation_tests([shifted, same, {"model": "critic", "n_fresh": 0}], seed=0)
    assert shifted["exchangeable_p"] == joint["exchangeable_p"] == 1 / (1 + bench.PERMUTATIONS)
    assert same["exchangeable_p"] > 0.01 and joint["flags"] == 250 + same["flags"] and joint["models"] == 2


def test_a_check_without_fresh_digits_says_so():
    rows = [{"model": "gan", "n_fresh": 0}, {"model": "wgan", "n_fresh": 0}]
    with pytest.raises(SystemExit, match=r"no fresh digits to test: every model of \['gan', 'wgan'\] .* not on "
                                         r"half A \(250 of 250, seed 3\)"):
        bench.permutation_tests(rows, seed=3)


def test_recalibrate_refuses_entries_of_differing_k_saying_which():
    split = "mnist5k-binarized/test, " + bench.half_a_split(250, 0)
    detectors = {"complexity": {"split": split, "k": 100}, "likelihood_ratio": {"split": split, "k": 1000},
                 "other": {"split": "elsewhere", "k": 7}}  # not calibrated on half A: not rescored
    engine = SimpleNamespace(model=lambda name: SimpleNamespace(manifest={"calibration": {"detectors": detectors}}))
    with pytest.raises(SystemExit, match=r"vae: .* k must agree; found k \{'complexity': 100, 'likelihood_ratio': "
                                         r"1000\}"):
        asyncio.run(bench.recalibrate(engine, Path("unused"), "vae", 0))


def test_the_half_a_split_text_follows_the_test_split_size(monkeypatch):
    """The shipped entries calibrated on all of half A end with the computed text; another split size changes it,
    and the calibration table's sizes with it."""
    splits = [e["split"] for p in MODELS.glob("*/1/manifest.json")
              for e in json.loads(p.read_text()).get("calibration", {}).get("detectors", {}).values()]
    assert splits and all(s.endswith(bench.half_a_split(250, 0)) for s in splits)
    monkeypatch.setattr(bench, "TEST_SIZE", 400)
    assert bench.half_a_split(200, 1) == "half A (200 of 200, seed 1)"
    text = bench.calibration_table([], {"models": 0, "flags": 0, "fresh": 1, "exchangeable_mean": 0.0,
                                        "exchangeable_p": 1.0}, "cmd")
    assert "half B (200 digits)" in text and "pooled 400 scores" in text and "250" not in text
