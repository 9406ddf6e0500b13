"""Each procedure takes its own options (service.engine.generation.TAKES): any other option a request gives is
refused naming it, whatever the procedure; defaults (temperature 1, gRPC's unset chords) count as not given."""

import pytest

from service.engine.errors import InvalidInput
from service.engine.generation import TAKES, refuse_untaken

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
        assert refused.value.field == field and refused.value.detail.startswith(f"{field}: model 'm' ")
        assert refused.value.detail.endswith(f"takes no {field}")


@pytest.mark.parametrize(("capability", "procedure"), sorted(TAKES))
def test_defaults_are_not_given(capability, procedure):
    refuse_untaken("m", capability, procedure, **ABSENT)

