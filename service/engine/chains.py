"""Markov chains run beside the runtimes, in the engine worker (issue 16, goal 5).

A chain's state never leaves the process that holds the model's functions: the API process sends
the start, the rows' noise generators and the step count once, and gets the last state back.
Chains of different requests share steps on one ContinuousBatcher per (model, function), pay no
queue delay, and stop at their own deadline. The engine worker and the in-process runner use the
same ChainRunner, so tests and serving run one code path.

The scheduler's observer events cannot reach the API process's metrics from here, so they are
recorded and travel back with the next answer about that function (events of a chain cancelled
by its client arrive with the following one).
"""

import dataclasses
import time
from collections.abc import Awaitable, Callable

import numpy as np

from service.engine import procedures
from service.engine.errors import EngineError, Overloaded
from service.engine.scheduler import BatchingConfig, ContinuousBatcher, DeadlineExceeded, Observer

Arrays = dict[str, np.ndarray]
Call = Callable[[str, str, Arrays], Awaitable[Arrays]]
Event = list  # [hook name, *its arguments]: a call of an Observer hook, as JSON


class Recorder(Observer):
    """An Observer that keeps its calls, to be replayed on the real one (replay)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def rejected(self) -> None:
        self.events.append(["rejected"])

    def queued(self) -> None:
        self.events.append(["queued"])

    def dequeued(self) -> None:
        self.events.append(["dequeued"])

    def batch(self, rows: int) -> None:
        self.events.append(["batch", rows])

    def finished(self, outcome: str, request_s: float, queue_s: float, compute_s: float) -> None:
        self.events.append(["finished", outcome, request_s, queue_s, compute_s])

    def generated(self, rows: int) -> None:
        self.events.append(["generated", rows])

    def drain(self) -> list[Event]:
        events, self.events = self.events, []
        return events


def replay(events: list[Event], observer: Observer) -> None:
    for name, *arguments in events:
        getattr(observer, name)(*arguments)


def chain_request(capability: dict, rngs: list[np.random.Generator], steps: int, config: BatchingConfig,
                  deadline: float) -> dict:
    """What a worker needs, besides the arrays x, observed and mask, to run a chain (JSON): the noise spec, each
    row's generator state, the step count, the batching knobs and the seconds left before `deadline`."""
    return {"noise": capability["noise"], "rngs": [rng.bit_generator.state for rng in rngs], "steps": steps,
            "batching": dataclasses.asdict(config), "seconds_left": deadline - time.monotonic()}


def _generators(states: list[dict]) -> list[np.random.Generator]:
    rngs = []
    for state in states:
        rng = np.random.default_rng()
        rng.bit_generator.state = state
        rngs.append(rng)
    return rngs


def refusal(code: str, message: str, field: str | None) -> EngineError:
    """The scheduler's error of this code, as raised in the worker (a full queue, an expired deadline)."""
    kind = {error.code: error for error in (Overloaded, DeadlineExceeded)}.get(code, EngineError)
    return kind(message, field)


class ChainFailed(Exception):
    """A chain refused or stopped by its scheduler (EngineError), with the events recorded meanwhile."""

    def __init__(self, error: EngineError, events: list[Event]):
        super().__init__(error.message)
        self.error, self.events = error, events


class ChainRunner:
    """Runs chain requests over `call(model, function, feeds)`, one ContinuousBatcher per (model, function)."""

    def __init__(self, call: Call):
        self.call = call
        self.batchers: dict[tuple[str, str], tuple[ContinuousBatcher, Recorder]] = {}

    def _batcher(self, model: str, function: str, config: BatchingConfig) -> tuple[ContinuousBatcher, Recorder]:
        if (model, function) not in self.batchers:
            async def run(feeds: Arrays) -> Arrays:
                return await self.call(model, function, feeds)

            recorder = Recorder()
            state, emit = procedures.state_outputs({"procedure": "markov_chain"})
            batcher = ContinuousBatcher(run, state, config, recorder, emit)
            self.batchers[model, function] = batcher, recorder
        return self.batchers[model, function]

    async def run(self, model: str, function: str, request: dict, arrays: Arrays) -> tuple[Arrays, list[Event]]:
        """({"next_x": the state [rows, *shape] after request["steps"] transitions from arrays["x"]}, the observer
        events of this function since the last answer). Raises ChainFailed for a refusal or an expired deadline."""
        batcher, recorder = self._batcher(model, function, BatchingConfig(**request["batching"]))
        sequence = procedures.markov_chain({"noise": request["noise"]}, _generators(request["rngs"]), arrays["x"],
                                           arrays["observed"], arrays["mask"], request["steps"])
        sequence.deadline = time.monotonic() + request["seconds_left"]
        x = arrays["x"]
        try:
            async for state in batcher.generate(sequence):
                x = state
        except EngineError as e:
            raise ChainFailed(e, recorder.drain()) from None
        return {"next_x": x}, recorder.drain()
