"""The iterative procedures that run in the engine worker, beside the runtimes (issue 16, goal 5): Markov
chains, posterior refinement and importance-weighted bounds.

Their state never leaves the process that holds the model's functions: the API process sends the inputs,
the rows' noise generators and the procedure's options once, and gets the result back. Inside, each
function has one scheduler shared by every request: a chain's transition and a refinement step run on a
ContinuousBatcher (steps of different requests share calls and pay no queue delay), one-shot calls (an
encoder, chunks of importance samples) on a DynamicBatcher. The request's deadline covers every call. The
engine worker and the in-process runner use the same WorkerProcedures, so tests and serving run one code
path, and a row's random numbers are drawn in the same order as anywhere else (its result depends on its
seed alone).

The schedulers' observer events cannot reach the API process's metrics from here, so they are recorded per
function and travel back with the next answer that uses that function (events of a request cancelled by its
client arrive with the following one).
"""

import time
from collections.abc import Awaitable, Callable

import numpy as np

from service.engine import latent
from service.engine.errors import EngineError, Overloaded, VersionGone
from service.engine.procedures import markov_chain, state_outputs
from service.engine.scheduler import (
    BatchingConfig,
    ContinuousBatcher,
    DeadlineExceeded,
    DynamicBatcher,
    Observer,
    Sequence,
)

Arrays = dict[str, np.ndarray]
Call = Callable[[str, str, Arrays], Awaitable[Arrays]]
Event = list  # [hook name, *its arguments]: a call of an Observer hook, as JSON
Events = dict[str, list[Event]]  # function -> its events
Run = Callable[[Arrays], Awaitable[Arrays]]  # one call of a function over a batch
Scheduler = ContinuousBatcher | DynamicBatcher
REFINED = {"mean": "next_mean", "std": "next_std"}  # a refinement step's carried inputs <- its outputs


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


# --- requests (built in the API process; JSON besides their arrays) --------------------------------------------------


def _states(rngs: list[np.random.Generator]) -> list[dict]:
    return [rng.bit_generator.state for rng in rngs]


def chain_request(capability: dict, rngs: list[np.random.Generator], steps: int) -> dict:
    """`steps` transitions of a markov_chain capability from the arrays x, observed and mask -> {"next_x"}."""
    return {"procedure": "markov_chain", "function": capability["function"], "noise": capability["noise"],
            "steps": steps, "rngs": _states(rngs)}


def posterior_spec(encode: dict, rule: dict | None, refine_steps: int) -> dict:
    """q(z | x) from an encode capability's function, then refine_steps steps of the refinement rule
    ({function, noise}: latent.refine_updates)."""
    refine = None if rule is None else {"function": rule["function"], "noise": rule["noise"]}
    return {"encode": {"function": encode["function"], "noise": encode.get("noise", {})}, "refine": refine,
            "refine_steps": refine_steps}


def posterior_request(spec: dict, rngs: list[np.random.Generator]) -> dict:
    """The posterior of the array x under a posterior_spec -> {"mean", "std"}, [B, D] each."""
    return {"procedure": "posterior", **spec, "rngs": _states(rngs)}


def bound_request(capability: dict, posterior: dict | None, k: int, rngs: list[np.random.Generator]) -> dict:
    """k log-weights per input of the array x under an importance capability -> {"log_weight"} [B, k] float64;
    its function takes q's (mean, std) from a posterior_spec, or computes q itself (posterior None)."""
    return {"procedure": "bound", "log_weight": {"function": capability["function"], "noise": capability["noise"]},
            "posterior": posterior, "k": k, "rngs": _states(rngs)}


def _functions(request: dict) -> list[str]:
    """The functions a request calls, whose events travel back with its answer."""
    if request["procedure"] == "markov_chain":
        return [request["function"]]
    posterior = request if request["procedure"] == "posterior" else request["posterior"] or {}
    called = [part["function"] for part in (posterior.get("encode"), posterior.get("refine")) if part]
    return called + ([request["log_weight"]["function"]] if request["procedure"] == "bound" else [])


def _generators(states: list[dict]) -> list[np.random.Generator]:
    rngs = []
    for state in states:
        rng = np.random.default_rng()
        rng.bit_generator.state = state
        rngs.append(rng)
    return rngs


def refusal(code: str, message: str, field: str | None) -> EngineError:
    """The engine's error of this code, as raised in the worker: a scheduler's (a full queue, an expired deadline), or
    UnknownModel (a version whose files went or changed: workers.Functions), as VersionGone."""
    kind = {error.code: error for error in (Overloaded, DeadlineExceeded, VersionGone)}.get(code, EngineError)
    return kind(message, field)


class ProcedureFailed(Exception):
    """A procedure refused or stopped by its scheduler (EngineError), with the events recorded meanwhile."""

    def __init__(self, error: EngineError, events: Events):
        super().__init__(error.message)
        self.error, self.events = error, events


# --- the runner (in the worker) --------------------------------------------------------------------------------------


class WorkerProcedures:
    """Runs procedure requests over `call(model, function, feeds)`, with one scheduler per (model, function)."""

    def __init__(self, call: Call):
        self.call = call
        self.schedulers: dict[tuple[str, str], Scheduler] = {}
        self.recorders: dict[tuple[str, str], Recorder] = {}

    def _run(self, model: str, function: str) -> Run:
        async def run(feeds: Arrays) -> Arrays:
            return await self.call(model, function, feeds)
        return run

    def _scheduler(self, model: str, function: str, make: Callable[[Run, Recorder], Scheduler]) -> Scheduler:
        """The function's one scheduler, made by make(run, its recorder) on first use."""
        if (model, function) not in self.schedulers:
            recorder = self.recorders[model, function] = Recorder()
            self.schedulers[model, function] = make(self._run(model, function), recorder)
        return self.schedulers[model, function]

    def _continuous(self, model: str, function: str, config: BatchingConfig, carried: dict[str, str],
                    emit: str) -> ContinuousBatcher:
        return self._scheduler(model, function, lambda run, recorder: ContinuousBatcher(run, carried, config,
                                                                                        recorder, emit))

    def _dynamic(self, model: str, function: str, config: BatchingConfig) -> DynamicBatcher:
        return self._scheduler(model, function, lambda run, recorder: DynamicBatcher(run, config, recorder))

    def _drain(self, model: str, functions: list[str]) -> Events:
        return {f: self.recorders[model, f].drain() for f in functions if (model, f) in self.recorders}

    async def run(self, model: str, request: dict, arrays: Arrays) -> tuple[Arrays, Events]:
        """(the procedure's outputs, the observer events of its functions since their last answer). The request
        also carries the batching knobs and the seconds left before its deadline. Raises ProcedureFailed for a
        refusal or an expired deadline."""
        config = BatchingConfig(**request["batching"])
        deadline = time.monotonic() + request["seconds_left"]
        rngs = _generators(request["rngs"])
        procedure = {"markov_chain": self._chain, "posterior": self._posterior, "bound": self._bound}
        try:
            outputs = await procedure[request["procedure"]](model, request, arrays, rngs, config, deadline)
        except EngineError as e:
            raise ProcedureFailed(e, self._drain(model, _functions(request))) from None
        return outputs, self._drain(model, _functions(request))

    async def _steps(self, batcher: ContinuousBatcher, sequence: Sequence, deadline: float) -> Arrays:
        """Run a sequence to its end; its last state."""
        sequence.deadline = deadline
        async for _ in batcher.generate(sequence):
            pass
        return sequence.state

    async def _chain(self, model: str, request: dict, arrays: Arrays, rngs: list[np.random.Generator],
                     config: BatchingConfig, deadline: float) -> Arrays:
        carried, emit = state_outputs({"procedure": "markov_chain"})
        batcher = self._continuous(model, request["function"], config, carried, emit)
        sequence = markov_chain(request, rngs, arrays["x"], arrays["observed"], arrays["mask"], request["steps"])
        return {"next_x": (await self._steps(batcher, sequence, deadline))["x"]}

    async def _posterior(self, model: str, spec: dict, arrays: Arrays, rngs: list[np.random.Generator],
                         config: BatchingConfig, deadline: float) -> Arrays:
        """x [B, ...] -> q's mean and std [B, D]: the encoder's, then refine_steps steps of the rule."""
        x, encode = arrays["x"], spec["encode"]
        q = await self._dynamic(model, encode["function"], config).submit(
            {"x": x, **latent.draw(encode["noise"], rngs)}, deadline)
        if not spec["refine_steps"]:
            return {"mean": q["mean"], "std": q["std"]}
        refine = spec["refine"]
        batcher = self._continuous(model, refine["function"], config, REFINED, "next_mean")
        sequence = Sequence(lambda t: {"x": x, **latent.draw(refine["noise"], rngs)},
                            {"mean": q["mean"], "std": q["std"]}, spec["refine_steps"])
        return await self._steps(batcher, sequence, deadline)

    async def _bound(self, model: str, request: dict, arrays: Arrays, rngs: list[np.random.Generator],
                     config: BatchingConfig, deadline: float) -> Arrays:
        posterior = {}
        if request["posterior"] is not None:
            posterior = await self._posterior(model, request["posterior"], arrays, rngs, config, deadline)
        log_weight = request["log_weight"]
        batcher = self._dynamic(model, log_weight["function"], config)

        async def call(function: str, feeds: Arrays) -> Arrays:
            return await batcher.submit(feeds, deadline)

        return {"log_weight": await latent.log_weights(call, log_weight, arrays["x"], rngs, request["k"], posterior)}
