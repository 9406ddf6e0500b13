"""A music request whose chords set its number of bars (no `bars` given) and are too many is refused naming
chords, the field it sent, not bars. The shipped MidiNet (models/) answers it over REST."""

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine import step_controls
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.settings import Settings
from service.store import ModelStore

MODELS = Path(__file__).resolve().parents[2] / "models"
CAP = {"procedure": "autoregressive", "steps": 8, "max_steps": 64, "max_row_steps": 2048,
       "step_controls": {"chords": {"names": ["N", "C"], "default": "N"}}}


@pytest.mark.parametrize("rows, bars, chords, field", [
    (1, None, 65, "chords"),  # too many bars, set by the chords
    (40, None, 64, "chords"),  # samples x bars over max_row_steps, the bars set by the chords
    (1, 65, None, "bars"), (40, 64, None, "bars"), (1, 65, 65, "bars"),  # bars given: bars set them
])
def test_the_refusal_names_the_field_that_set_the_bars(rows, bars, chords, field):
    with pytest.raises(InvalidInput) as refused:
        step_controls.plan("midinet", CAP, rows, bars, None if chords is None else {"chords": ["C"] * chords})
    assert refused.value.field == field and str(refused.value).startswith(f"{field}: ")


def test_shipped_midinet_refuses_65_chords_naming_chords():
    settings = Settings(runtime="onnx", intra_op_threads=1)
    engine = Engine(ModelStore(MODELS), settings)
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(engine.sample("midinet", 1, 0, 1.0, None, step_controls={"chords": ["C"] * 65}))
    assert refused.value.field == "chords" and "1..64 bars, not 65" in str(refused.value)
    with TestClient(create_app(engine, settings)) as client:
        reply = client.post("/v1/models/midinet/sample", json={"chords": ["C"] * 65, "format": "array"})
    assert reply.status_code == 422 and reply.json()["error"]["field"] == "chords", reply.text
