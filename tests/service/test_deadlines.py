"""The request deadline (timeout_ms) covers every step of every procedure (issue 15, defect 3): a Markov chain, an
importance-sampled bound and refinement answer DeadlineExceeded once the request's time is spent, even though each
of their calls alone is quick."""

import asyncio
import time

import numpy as np
import pytest

from service.engine.engine import Engine
from service.engine.scheduler import DeadlineExceeded
from service.settings import Settings
from service.store import ModelStore

TIMEOUT_MS = 200


def digits(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 2, size=(n, 1, 28, 28))


def expires(coroutine) -> float:
    """Seconds until the operation raised DeadlineExceeded (it must)."""
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        asyncio.run(coroutine)
    return time.monotonic() - start


def test_a_markov_chain_stops_at_the_deadline(tiny_rbm_store):
    engine = Engine(ModelStore(tiny_rbm_store), Settings(timeout_ms=TIMEOUT_MS, intra_op_threads=1))
    cap = engine.model("rbm").capability("sample")
    # every Gibbs step takes well under TIMEOUT_MS; all max_steps of them take far longer
    assert expires(engine.sample("rbm", 8, 0, 1.0, None, steps=cap["max_steps"])) < 2.0
    assert expires(engine.complete("rbm", digits(2), np.ones((1, 28, 28), np.int64), 4, 0, 1.0,
                                   steps=cap["max_steps"])) < 2.0


def test_an_importance_sampled_bound_and_refinement_stop_at_the_deadline(tiny_vae_store):
    engine = Engine(ModelStore(tiny_vae_store), Settings(timeout_ms=TIMEOUT_MS, intra_op_threads=1))
    cap = engine.model("vae").capability("score")
    assert expires(engine.score("vae", digits(16), k=cap["max_k"])) < 2.0
    most = engine.model("vae").capability("encode")["refine"]["max_steps"]
    assert expires(engine.encode("vae", digits(64), refine_steps=most)) < 2.0
