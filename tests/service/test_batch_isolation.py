"""One request cannot fail the others batched with it: requests of other shapes are never merged, a merged call
that fails runs again one request at a time, and index inputs out of range are refused before they are queued."""

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.engine.engine import LoadedModel
from service.engine.errors import WorkerLost
from service.engine.scheduler import BatchingConfig, DynamicBatcher
from service.store import ModelStore

MODELS = Path(__file__).resolve().parents[2] / "models"
GATHER = BatchingConfig(max_batch_size=64, max_queue_delay_us=20000)  # 20 ms: concurrent submits share a batch


class Model:
    """Sums each row of x; refuses (as a runtime does) any batch holding a negative value; records each call."""

    def __init__(self, error: type[Exception] = ValueError):
        self.calls: list[tuple[int, ...]] = []
        self.error = error

    async def __call__(self, feeds):
        x = feeds["x"]
        self.calls.append(x.shape)
        if (x < 0).any():
            raise self.error("index out of range")
        return {"total": x.reshape(len(x), -1).sum(axis=1)}


def submit_all(batcher: DynamicBatcher, inputs: list[np.ndarray]) -> list:
    async def main():
        return await asyncio.gather(*[batcher.submit({"x": x}) for x in inputs], return_exceptions=True)

    return asyncio.run(asyncio.wait_for(main(), 20))


def test_requests_of_other_lengths_are_answered_each_from_a_batch_of_one_length():
    model = Model()
    inputs = [np.full((1, length), length, np.int64) for length in (5, 9, 5, 12, 9, 5)]
    answers = submit_all(DynamicBatcher(model, GATHER), inputs)
    assert [a["total"].tolist() for a in answers] == [[length * length] for length in (5, 9, 5, 12, 9, 5)]
    assert sorted(model.calls) == [(1, 12), (2, 9), (3, 5)]  # one call per length, never a mixed one


def test_a_refused_input_fails_its_own_request_only():
    model = Model()
    inputs = [np.full((1, 3), value, np.int64) for value in (1, 2, -1, 4)]
    answers = submit_all(DynamicBatcher(model, GATHER), inputs)
    assert isinstance(answers[2], ValueError)
    assert [answers[i]["total"].tolist() for i in (0, 1, 3)] == [[3], [6], [12]]
    assert model.calls == [(4, 3), (1, 3), (1, 3), (1, 3), (1, 3)]  # the merged call, then each request alone


def test_an_engine_error_reaches_the_whole_batch_without_a_rerun():
    """A lost worker is no one request's fault: every request gets it, and nothing runs again."""
    model = Model(error=WorkerLost)
    answers = submit_all(DynamicBatcher(model, GATHER), [np.full((1, 3), v, np.int64) for v in (1, -1, 2)])
    assert all(isinstance(a, WorkerLost) for a in answers)
    assert model.calls == [(3, 3)]


@pytest.fixture(scope="module")
def store():
    return ModelStore(MODELS)


@pytest.mark.parametrize(("model", "tensor", "levels"), [
    ("lagan", "class", 2),  # a categorical control: jet class qcd or w
    ("infogan", "code", 10),
    ("stackgan", "caption", 23),  # the prompt's word ids: its vocabulary
    ("cyclegan", "source", 256),  # a translation's source image
    ("midinet", "chords", 25),  # a per-step control
])
def test_an_index_input_has_its_range(store, model, tensor, levels):
    assert LoadedModel(store.entries[model]).input_levels[tensor] == levels
