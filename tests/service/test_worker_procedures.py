"""Iterative procedures run beside the runtime (service.engine.worker_procedures): the same chain in a worker
process and in-process, steps shared between chains, deadlines and refusals carried back as the engine's own
errors, and the scheduler's observer events replayed exactly once."""

import asyncio
import dataclasses

import numpy as np
import pytest

from service.engine import latent, procedures, worker_procedures
from service.engine.errors import Overloaded
from service.engine.scheduler import BatchingConfig, DeadlineExceeded, Observer
from service.engine.workers import InProcess, WorkerPool
from service.store import ModelStore

CAPABILITY = {"function": "step", "noise": {"noise": {"distribution": "uniform", "shape": [4]}}}  # noise: uniform


async def flip_where_noise_is_small(model: str, function: str, feeds: dict) -> dict:
    """A toy chain step: next_x = x XOR (noise < 0.5) where mask is 0, observed where it is 1."""
    await asyncio.sleep(0.001)
    flipped = feeds["x"] ^ (feeds["noise"] < 0.5)
    return {"next_x": np.where(feeds["mask"] == 1, feeds["observed"], flipped)}


def request(seed: int, rows: int, steps: int, seconds_left: float = 10.0, **batching) -> tuple[dict, dict]:
    rngs = procedures.row_generators(seed, rows)
    config = BatchingConfig(**batching)
    zeros = np.zeros((rows, 4), np.int64)
    arrays = {"x": zeros, "observed": zeros, "mask": zeros}
    return in_time(worker_procedures.chain_request(CAPABILITY, rngs, steps), config, seconds_left), arrays


def in_time(request: dict, config: BatchingConfig = BatchingConfig(), seconds_left: float = 60.0) -> dict:
    """The request with the batching knobs and deadline that the engine adds (Engine._in_worker)."""
    return {**request, "batching": dataclasses.asdict(config), "seconds_left": seconds_left}


def naive(seed: int, rows: int, steps: int) -> np.ndarray:
    """The same chain, one step after another, with numpy alone."""
    rngs, x = procedures.row_generators(seed, rows), np.zeros((rows, 4), np.int64)
    for _ in range(steps):
        noise = np.stack([rng.random(4, dtype=np.float32) for rng in rngs])
        x = x ^ (noise < 0.5)
    return x


class Tally(Observer):
    """Counts what the hooks were told."""

    def __init__(self):
        self.arrivals, self.batches, self.outcomes = 0, [], []

    def queued(self):
        self.arrivals += 1

    def batch(self, rows):
        self.batches.append(rows)

    def finished(self, outcome, request_s, queue_s, compute_s):
        self.outcomes.append(outcome)


def test_a_chain_request_gives_the_naive_chain_and_two_chains_share_their_steps():
    runner = worker_procedures.WorkerProcedures(flip_where_noise_is_small)

    async def both():
        return await asyncio.gather(runner.run("m", *request(0, 2, 30)), runner.run("m", *request(1, 3, 30)))

    (first, events_a), (second, events_b) = asyncio.run(both())
    assert np.array_equal(first["next_x"], naive(0, 2, 30))
    assert np.array_equal(second["next_x"], naive(1, 3, 30))
    tally = Tally()
    worker_procedures.replay(events_a["step"] + events_b["step"], tally)
    assert tally.arrivals == 2 and tally.outcomes == ["success", "success"]
    assert 5 in tally.batches  # the two chains' 2 + 3 rows ran in one call
    assert sum(tally.batches) == 2 * 30 + 3 * 30  # every step of every row, each reported once


def test_a_chain_stops_at_its_deadline_and_a_full_queue_refuses_with_the_engine_errors():
    runner = worker_procedures.WorkerProcedures(flip_where_noise_is_small)
    with pytest.raises(worker_procedures.ProcedureFailed) as failed:
        asyncio.run(runner.run("m", *request(0, 1, 100_000, seconds_left=0.1)))
    assert isinstance(failed.value.error, DeadlineExceeded)
    assert ["finished", "timeout"] == failed.value.events["step"][-1][:2]
    with pytest.raises(worker_procedures.ProcedureFailed) as refused:  # a batcher takes its first request's knobs
        asyncio.run(worker_procedures.WorkerProcedures(flip_where_noise_is_small).run(
            "m", *request(0, 8, 3, max_queue_size=4)))
    assert isinstance(refused.value.error, Overloaded) and refused.value.events == {"step": [["rejected"]]}


def test_refusal_rebuilds_the_scheduler_error_by_its_code():
    assert isinstance(worker_procedures.refusal("deadline_exceeded", "late", "timeout_ms"), DeadlineExceeded)
    assert worker_procedures.refusal("overloaded", "full", "n").field == "n"


def test_a_chain_in_a_worker_process_equals_the_chain_in_process(tiny_rbm_store):
    entry = ModelStore(tiny_rbm_store).entries["rbm"]
    directories, cap = {"rbm": entry.directory}, entry.manifest["capabilities"]["sample"]
    rngs = procedures.row_generators(7, 3)
    start = np.stack([rng.integers(0, 2, (1, 28, 28)) for rng in rngs])
    zeros = np.zeros_like(start)
    arrays = {"x": start, "observed": zeros, "mask": zeros}
    chain = in_time(worker_procedures.chain_request(cap, rngs, 25))

    async def in_worker():
        pool = WorkerPool(directories, "onnx", 1)
        await pool.start()
        try:
            answer = await pool.procedure("rbm", chain, arrays)
            endless = in_time(worker_procedures.chain_request(cap, procedures.row_generators(0, 1), 10**6))
            abandoned = asyncio.create_task(pool.procedure("rbm", endless, {name: a[:1] for name, a in arrays.items()}))
            await asyncio.sleep(0.5)
            abandoned.cancel()  # its client went away: the worker drops it at the next step
            await asyncio.sleep(0.2)
            _, later_events = await pool.procedure("rbm", {**chain, "steps": 1}, arrays)
            return answer, later_events
        finally:
            await pool.stop()

    (served, events), later_events = asyncio.run(in_worker())
    assert ["finished", "cancelled"] in [event[:2] for event in later_events[cap["function"]]]
    local, _ = asyncio.run(InProcess(directories, "onnx", 1).procedure("rbm", chain, arrays))
    assert np.array_equal(served["next_x"], local["next_x"])
    assert not np.array_equal(served["next_x"], start)  # 25 Gibbs steps moved the state
    events = events[cap["function"]]
    assert ["batch", 3] in events and events[-1][:2] == ["finished", "success"]


def naive_bound(functions, cap: dict, encode: dict, rule: dict, x: np.ndarray, seed: int, refine_steps: int,
                k: int) -> np.ndarray:
    """The log-weights [B, k] of an importance capability after refine_steps refinements, one direct call after
    another, drawing each row's noise in the same order: encoder, every step, then the k samples."""
    rngs = procedures.row_generators(seed, len(x))
    q = functions["vae", encode["function"]](x=x, **latent.draw(encode.get("noise", {}), rngs))
    for _ in range(refine_steps):
        q = functions["vae", rule["function"]](x=x, mean=q["mean"], std=q["std"], **latent.draw(rule["noise"], rngs))
        q = {"mean": q["next_mean"], "std": q["next_std"]}
    noise = latent.draw(cap["noise"], rngs, count=k)  # [B, k, ...]
    rows = np.repeat(np.arange(len(x)), k)
    feeds = {"x": x[rows], "mean": q["mean"][rows], "std": q["std"][rows],
             **{name: v.reshape(len(x) * k, *v.shape[2:]) for name, v in noise.items()}}
    return functions["vae", cap["function"]](**feeds)["log_weight"].reshape(len(x), k)


def test_a_refined_bound_in_a_worker_process_equals_the_naive_calls_and_shares_refinement_steps(tiny_vae_store):
    entry = ModelStore(tiny_vae_store).entries["vae"]
    directories, caps = {"vae": entry.directory}, entry.manifest["capabilities"]
    encode, cap = caps["encode"], caps["score"]
    rule = latent.refine_updates(encode)["gradient"]
    x = np.random.default_rng(0).integers(0, 2, (3, 1, 28, 28))
    posterior = worker_procedures.posterior_spec(encode, rule, 4)

    def bound(seed: int, rows: slice) -> dict:
        return in_time(worker_procedures.bound_request(cap, posterior, 5, procedures.row_generators(seed, 3)[rows]))

    async def in_worker():
        pool = WorkerPool(directories, "onnx", 1)
        await pool.start()
        try:  # two requests at once: their refinement steps run in the same calls
            return await asyncio.gather(pool.procedure("vae", bound(1, slice(0, 3)), {"x": x}),
                                        pool.procedure("vae", bound(2, slice(0, 2)), {"x": x[:2]}))
        finally:
            await pool.stop()

    (first, events), (second, later_events) = asyncio.run(in_worker())
    local = InProcess(directories, "onnx", 1)
    assert np.allclose(first["log_weight"], naive_bound(local.functions, cap, encode, rule, x, 1, 4, 5), atol=1e-4)
    assert np.allclose(second["log_weight"], naive_bound(local.functions, cap, encode, rule, x[:2], 2, 4, 5),
                       atol=1e-4)
    assert first["log_weight"].shape == (3, 5) and np.isfinite(first["log_weight"]).all()
    in_process, _ = asyncio.run(local.procedure("vae", bound(1, slice(0, 3)), {"x": x}))
    assert np.array_equal(in_process["log_weight"], first["log_weight"])
    assert {encode["function"], rule["function"], cap["function"]} <= set(events)
    steps = events[rule["function"]] + later_events.get(rule["function"], [])
    assert ["batch", 5] in steps  # the two requests' 3 + 2 rows refined in one call
