"""Each procedure takes its own options (service.engine.generation.TAKES): any other option a request gives is
refused naming it, whatever the procedure; defaults (temperature 1, REST's empty chords) count as not given;
through the engine, a refusal names the request's field."""

import asyncio

import numpy as np
import pytest

from service.engine.errors import InvalidInput
from service.engine.generation import TAKES, refuse_untaken
from tests.service.shipped import shipped_engine

GIVEN = {"temperature": 0.5, "label": 3, "length": 10, "top_k": 5, "prompt": "a thin seven", "steps": 4,
         "controls": {"code": 0}, "bars": 2, "step_controls": {"chords": ["C"]}}
ABSENT = {"temperature": 1.0, "label": None, "length": None, "top_k": None, "prompt": None, "steps": None,
          "controls": {}, "bars": None, "step_controls": {"chords": []}}


@pytest.mark.parametrize(("capability", "procedure"), sorted(TAKES))
def test_an_option_the_procedure_does_not_take_is_refused_naming_it(capability, procedure):
    for field, value in GIVEN.items():
        if field in TAKES[(capability, procedure)]:
            refuse_untaken("m", capability, procedure, **{field: value})  # taken: no refusal
            continue
        with pytest.raises(InvalidInput) as refused:
            refuse_untaken("m", capability, procedure, **{field: value})
        named = "chords" if field == "step_controls" else field  # the request's field, not the engine's keyword
        assert refused.value.field == named and refused.value.detail.startswith(f"{named}: model 'm' ")
        assert refused.value.detail.endswith(f"takes no {named}")


@pytest.mark.parametrize(("capability", "procedure"), sorted(TAKES))
def test_defaults_are_not_given(capability, procedure):
    refuse_untaken("m", capability, procedure, **ABSENT)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return shipped_engine(tmp_path_factory, ["gan", "pixelcnn"])


def refused_field(call) -> str:
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(call)
    return refused.value.field


def test_through_the_engine_a_refusal_names_the_requests_field(engine):
    """chords travel as the engine's step_controls, but the refusal names chords, as the client sent it."""
    assert refused_field(engine.sample("gan", 1, 0, 1.0, None, step_controls={"chords": ["C"]})) == "chords"
    assert refused_field(engine.sample("gan", 1, 0, 1.0, None, steps=3)) == "steps"


def test_an_image_completion_refuses_top_k_and_length_it_would_ignore(engine):
    digit = np.zeros((1, 1, 28, 28), np.int64)
    mask = np.ones((1, 28, 28), np.int64)
    assert refused_field(engine.complete("pixelcnn", digit, mask, 1, 0, 1.0, top_k=5)) == "top_k"
    assert refused_field(engine.complete("pixelcnn", digit, mask, 1, 0, 1.0, length=5)) == "length"
