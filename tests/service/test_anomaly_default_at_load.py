"""A manifest whose `calibration.default` could never answer is an exporter's mistake that the engine refuses when it
loads the model, naming the model and the part (service/engine/anomaly.py's default_problem, LoadedModel), instead of
a 4xx on every request that names no detector; no shipped manifest trips it."""

import copy
import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from service.engine import anomaly
from service.engine.engine import Engine
from service.engine.errors import UnknownModel, UnsupportedModel
from service.settings import Settings
from service.store import ModelStore
from service.store.store import SCHEMA_PATH

MODELS = Path(__file__).resolve().parents[2] / "models"
MIX = "mix:complexity+nll"
STATES = "states:complexity+nll"
ENTRY = {"score": "s", "quantiles": [0.0, 1.0], "values": [0.0, 1.0], "n": 2, "split": "test"}


@pytest.fixture(scope="module")
def manifest(tiny_vae_store) -> dict:
    """The tiny VAE's manifest (an importance-scored model with an encoder, no background model)."""
    return json.loads((tiny_vae_store / "vae" / "1" / "manifest.json").read_text())


def with_calibration(manifest: dict, default: str, detectors: dict) -> dict:
    out = copy.deepcopy(manifest)
    out["calibration"] |= {"default": default, "detectors": detectors}
    return out


def standardized(parts: list[str], key: str = "mix") -> dict:
    return {**ENTRY, key: {p: {"mean": 0.0, "std": 1.0} for p in parts}}


def states(parts: list[str], size: int) -> dict:
    return {**standardized(parts, "states"), "precision": np.eye(size).tolist()}


@pytest.mark.parametrize(("default", "detectors", "problem"), [
    (MIX, {MIX: standardized(["complexity", "nll"])}, "no calibration entry for ['complexity']"),
    ("complexity", {}, "no calibration entry for ['complexity']"),
    (MIX, {"complexity": ENTRY}, f"{MIX!r}: no calibration entry of its own"),
    (MIX, {"complexity": ENTRY, MIX: standardized(["nll"])}, "no `mix` standardization for ['complexity']"),
    ("class", {"class": ENTRY}, "the model cannot compute ['class']"),  # the VAE has no classes
    ("critic", {}, "the model cannot compute ['critic']"),
    (STATES, {"complexity": ENTRY, STATES: standardized(["complexity", "nll"], "states")},
     "`precision` must be 2 x 2"),
    (STATES, {"complexity": ENTRY, STATES: states(["complexity", "nll"], 3)}, "`precision` must be 2 x 2"),
    (STATES, {"complexity": ENTRY, STATES: states(["nll"], 2)}, "no `states` standardization for ['complexity']"),
    (STATES, {STATES: states(["complexity", "nll"], 2)}, "no calibration entry for ['complexity']"),
])
def test_a_default_that_could_never_answer_is_named_with_its_part(manifest, default, detectors, problem):
    assert problem in anomaly.default_problem(with_calibration(manifest, default, detectors))


@pytest.mark.parametrize(("default", "detectors"), [
    (MIX, {"complexity": ENTRY, MIX: standardized(["complexity", "nll"])}),
    (STATES, {"complexity": ENTRY, STATES: states(["complexity", "nll"], 2)}),
    ("nll", {}),
    ("typicality", {}),  # rides on the top-level nll entry
    ("likelihood_ratio", {"likelihood_ratio": {**ENTRY, "background": "absent"}}),  # served: falls back to nll
])
def test_a_default_that_can_answer_passes(manifest, default, detectors):
    assert anomaly.default_problem(with_calibration(manifest, default, detectors)) is None


@pytest.mark.parametrize(("detectors", "problem"), [
    ({"complexity": ENTRY, STATES: states(["complexity", "nll"], 3)}, f"{STATES!r}: its entry's `precision` must be"),
    ({"complexity": ENTRY, STATES: states(["nll"], 2)}, f"{STATES!r}: its entry has no `states` standardization"),
])
def test_a_combination_entry_that_could_not_score_is_refused_at_load_though_not_the_default(manifest, detectors,
                                                                                           problem):
    # the default (nll) answers; a request naming the broken detector would have failed with a 500
    broken = with_calibration(manifest, "nll", detectors)
    assert anomaly.default_problem(broken) is None
    assert problem in anomaly.calibration_problem(broken)


def test_the_engine_refuses_it_at_start_and_at_a_live_load_naming_the_model_and_the_part(tiny_vae_store, manifest,
                                                                                          tmp_path):
    """At start the engine is not built (`genserve serve` stops with the message); a live load of a version with
    such a manifest loads nothing and answers as for a model with no good version."""
    store = tmp_path / "store"
    shutil.copytree(tiny_vae_store / "vae", store / "vae")
    manifest_path = store / "vae" / "1" / "manifest.json"
    manifest_path.write_text(json.dumps(with_calibration(manifest, MIX, {MIX: standardized(["complexity", "nll"])})))
    with pytest.raises(UnsupportedModel, match=r"model 'vae': .*no calibration entry for \['complexity'\]"):
        Engine(ModelStore(store), Settings())
    manifest_path.write_text(json.dumps(manifest))
    engine = Engine(ModelStore(store), Settings())
    manifest_path.write_text(json.dumps(with_calibration(manifest, "critic", {})))
    with pytest.raises(UnknownModel, match=r"nothing to load: model 'vae': .*cannot compute \['critic'\]"):
        engine.load_model("vae")
    assert engine.model("vae").manifest == manifest  # the served version stays


def test_no_shipped_manifest_has_a_default_that_could_never_answer():
    manifests = {p.parent.parent.name: json.loads(p.read_text()) for p in MODELS.glob("*/*/manifest.json")}
    defaults = {name: m["calibration"]["default"] for name, m in manifests.items()
                if "default" in m.get("calibration", {})}
    assert len(defaults) >= 13  # the shipped scoring image models' defaults, mixes among them
    assert {name: anomaly.calibration_problem(m) for name, m in manifests.items()} == dict.fromkeys(manifests)


@pytest.mark.parametrize(("entry", "valid"), [
    (states(["complexity", "nll"], 2), True),
    (standardized(["complexity", "nll"], "states"), False),  # no precision
    ({**ENTRY, "precision": np.eye(2).tolist()}, False),  # no standardization
    ({**states(["complexity", "nll"], 2), "states": {"complexity": {"mean": 0.0, "std": 0.0},
                                                     "nll": {"mean": 0.0, "std": 1.0}}}, False),  # a flat part
    ({**states(["complexity", "nll"], 2), "states": {"complexity": {"mean": 0.0, "std": "1"},
                                                     "nll": {"mean": 0.0, "std": 1.0}}}, False),  # not a number
])
def test_the_manifest_schema_requires_a_states_entry_to_carry_its_standardization_and_precision(manifest, entry,
                                                                                                 valid):
    schema = json.loads(SCHEMA_PATH.read_text())
    candidate = with_calibration(manifest, "nll", {"complexity": ENTRY, STATES: entry})
    assert jsonschema.Draft202012Validator(schema).is_valid(candidate) == valid


def test_the_manifest_schema_holds_every_mix_part_to_a_number_mean_and_a_positive_std(manifest):
    schema = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    good = standardized(["complexity", "nll"])
    flat = {**good, "mix": {"complexity": {"mean": 0.0, "std": 0.0}, "nll": {"mean": 0.0, "std": 1.0}}}
    assert schema.is_valid(with_calibration(manifest, "nll", {"complexity": ENTRY, MIX: good}))
    assert not schema.is_valid(with_calibration(manifest, "nll", {"complexity": ENTRY, MIX: flat}))
