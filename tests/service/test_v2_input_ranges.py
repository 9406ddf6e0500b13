"""A V2 call (Engine.infer) is held to the limits the engine's own routes apply: float inputs within their ranges
(temperature, a continuous control as far as it may extrapolate, a state-space model's actions `u`) and a directly
scored sequence model's input within its values per row and per request. Each refusal is an InvalidInput naming the
tensor, before anything is queued. And a sampling refusal names what the client sent."""

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.settings import Settings
from service.store import ModelStore

MODELS = Path(__file__).resolve().parents[2] / "models"


class Runner:
    """Answers every call with zeros of its rows; counts the calls."""

    calls = 0

    async def start(self):
        pass

    def ready(self):
        return True

    async def call(self, model, function, feeds):
        Runner.calls += 1
        return {"out": np.zeros(len(next(iter(feeds.values()))), np.float32)}


@pytest.fixture(scope="module")
def engine():
    return Engine(ModelStore(MODELS), Settings(), runner=Runner())


def infogan_sample(temperature: float = 1.0, style: tuple[float, float] = (0.0, 0.0)) -> dict:
    return {"eps": np.zeros((1, 62), np.float32), "temperature": np.array([temperature], np.float32),
            "code": np.array([3], np.int64), "style": np.array([style], np.float32)}


@pytest.mark.parametrize(("model", "function", "inputs", "field"), [
    ("infogan", "sample", infogan_sample(temperature=0.0), "temperature"),
    ("infogan", "sample", infogan_sample(style=(1e30, 0.0)), "style"),
    ("infogan", "sample", infogan_sample(style=(0.0, -2.5)), "style"),
    ("dvbf", "transition", {"z": np.zeros((1, 6), np.float32), "u": np.full((1, 1), 1e10, np.float32),
                            "noise": np.zeros((1, 2), np.float32)}, "u"),
    ("charrnn", "log_prob", {"x": np.zeros((1, 15001), np.int64)}, "x"),  # over 15,000 per row
    ("charrnn", "log_prob", {"x": np.zeros((8, 15000), np.int64)}, "x"),  # over 110,000 per request
])
def test_a_v2_input_beyond_its_limit_is_refused_naming_it(engine, model, function, inputs, field):
    before = Runner.calls
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(engine.infer(model, function, inputs))
    assert refused.value.field == field, refused.value.message
    assert Runner.calls == before


def test_inputs_within_their_limits_still_run(engine):
    """Extrapolating a control as far as the v1 route allows, and a long sequence within the limits, run."""
    before = Runner.calls
    asyncio.run(engine.infer("infogan", "sample", infogan_sample(temperature=1e-30, style=(1.5, -2.0))))
    asyncio.run(engine.infer("charrnn", "log_prob", {"x": np.zeros((7, 15000), np.int64)}))
    # vrnn's score is importance-sampled (its limits count samples k): its x [B, 8000] is not held to them
    asyncio.run(engine.infer("vrnn", "encode", {"x": np.zeros((2, 8000), np.int64)}))
    assert Runner.calls == before + 3


def test_too_much_sampling_work_names_what_the_client_sent(engine):
    """wavenet: 64 samples of its default length (16,000 values) are over its 860,000 samples x values: the refusal
    names n, which the client sent, unless the client chose the length."""
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(engine.sample("wavenet", 64, 0, 1.0, None))
    assert refused.value.field == "n" and "samples x values" in refused.value.message
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(engine.sample("wavenet", 64, 0, 1.0, None, length=16000))
    assert refused.value.field == "length"


def test_an_index_out_of_range_is_refused_before_queueing(engine):
    """V2 lagan.sample with class 5 (of 2) is refused naming `class` (it reached onnxruntime, failing its batch)."""
    inputs = {"eps": np.zeros((1, 64), np.float32), "temperature": np.ones(1, np.float32),
              "class": np.array([5], np.int64)}
    before = Runner.calls
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(engine.infer("lagan", "sample", inputs))
    assert refused.value.field.startswith("class") and Runner.calls == before
    inputs["class"] = np.array([1], np.int64)
    asyncio.run(engine.infer("lagan", "sample", inputs))
    assert Runner.calls == before + 1
