"""Schedulers decide what runs; the runtime runs it. Neither imports torch.

DynamicBatcher (Triton style) merges one-shot requests into batches of up to
`max_batch_size` rows (and, where given, of up to `max_values` values: a sequence
score's limit per request), waiting at most `max_queue_delay_us` for the batch to
fill. It merges only requests whose inputs agree in all but the batch axis
(a function of any sequence length gets requests of many), and a merged batch
that fails runs again one request at a time, so that an input the runtime
refuses fails its own request only. ContinuousBatcher (Orca/vLLM style) runs
an autoregressive step function over a running batch that sequences join and
leave at step boundaries.

Both take `run`, an async function of named numpy arrays (service.engine.workers
sends it to a worker process). A full queue raises Overloaded at once; an expired request
raises DeadlineExceeded (both batchers: a sequence's deadline covers all its steps); a consumer
that goes away frees its rows within one step.

Both report to an optional Observer (service.engine.metrics records them in
Prometheus); the default one does nothing, so the schedulers need no prometheus.
"""

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from service.engine.errors import EngineError, Overloaded

Arrays = dict[str, np.ndarray]

SUCCESS, REJECTED, CANCELLED, TIMEOUT, ERROR = OUTCOMES = ("success", "rejected", "cancelled", "timeout", "error")


class DeadlineExceeded(EngineError):
    status = 504
    code = "deadline_exceeded"


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    max_queue_delay_us: int = 2000
    max_queue_size: int = 256
    timeout_ms: int = 60000


def rows_of(arrays: Arrays) -> int:
    return len(next(iter(arrays.values())))


def values_of(arrays: Arrays) -> int:
    """A request's work as a values budget counts it: its largest input's size (a sequence score's x: rows x
    values)."""
    return max(value.size for value in arrays.values())


def merge_key(arrays: Arrays) -> tuple:
    """What requests must share to run in one batch: each input's name, dtype and shape past the batch axis."""
    return tuple((name, value.dtype.str, value.shape[1:]) for name, value in arrays.items())


class Observer:
    """What a scheduler tells about its requests, one observer per (model, function). These hooks do nothing.

    Every request is either rejected(), or queued() and then finished() exactly once;
    dequeued() comes once in between, when it leaves the queue (into a batch, or answered while waiting).
    """

    def rejected(self) -> None:
        """Refused at once: the queue was full."""

    def queued(self) -> None:
        """Accepted into the queue."""

    def dequeued(self) -> None:
        """Left the queue."""

    def batch(self, rows: int) -> None:
        """One call of the run function over `rows` rows (failed calls included)."""

    def finished(self, outcome: str, request_s: float, queue_s: float, compute_s: float) -> None:
        """Answered: outcome in OUTCOMES but REJECTED; seconds since queued, in the queue, and computing."""

    def generated(self, rows: int) -> None:
        """`rows` sequences ran all their steps (continuous batching)."""


def _finish(observer: Observer, request: "_Request | Sequence", outcome: str) -> None:
    now = time.monotonic()
    if request.started is None:  # answered while still waiting
        observer.dequeued()
        queued = now - request.arrived
    else:
        queued = request.started - request.arrived
    observer.finished(outcome, now - request.arrived, queued, request.compute)


Run = Callable[[Arrays], Awaitable[Arrays]]


async def _timed(run: Run, feeds: Arrays) -> tuple[Arrays, float]:
    start = time.perf_counter()
    outputs = await run(feeds)
    return outputs, time.perf_counter() - start


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class _Request:
    inputs: Arrays
    rows: int
    values: int  # values_of(inputs)
    deadline: float
    future: asyncio.Future
    key: tuple  # merge_key(inputs)
    arrived: float = field(default_factory=time.monotonic)
    started: float | None = None  # when it left the queue for a batch
    compute: float = 0.0  # seconds its batch ran


class DynamicBatcher:
    def __init__(self, run: Run, config: BatchingConfig, observer: Observer | None = None,
                 max_values: float = math.inf):
        """`max_values`: the most values (values_of) one batch may hold (by default no limit but its rows)."""
        self.run, self.config = run, config
        self.max_values = max_values
        self.observer = observer or Observer()
        self.queue: deque[_Request] = deque()
        self.queued = 0  # rows in the queue
        self.queued_values = 0  # their values (values_of)
        self.filled: asyncio.Future | None = None  # while the batch loop waits for a full batch
        self.task: asyncio.Task | None = None

    def queued_rows(self) -> int:
        return self.queued

    def idle(self) -> bool:
        """Nothing queued or running: the batcher can be dropped."""
        return not self.queue and (self.task is None or self.task.done())

    async def submit(self, inputs: Arrays, deadline: float | None = None) -> Arrays:
        """Run `inputs` ([B, ...] each) in some batch; returns this request's [B, ...] outputs.

        `deadline` (time.monotonic()): when the request gives up with DeadlineExceeded; default timeout_ms from
        now. A procedure of many calls passes one deadline to all of them, so it covers every step.
        A request of more rows than the queue holds is sent in parts of max_queue_size rows, one after
        another (it could never fit whole); each part is refused if the queue is full when it arrives."""
        deadline = time.monotonic() + self.config.timeout_ms / 1000 if deadline is None else deadline
        rows = rows_of(inputs)
        if rows > self.config.max_queue_size:
            parts = [await self.submit({name: value[start: start + self.config.max_queue_size]
                                        for name, value in inputs.items()}, deadline)
                     for start in range(0, rows, self.config.max_queue_size)]
            return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        if self.queued + rows > self.config.max_queue_size:
            self.observer.rejected()
            raise Overloaded(f"queue full ({self.config.max_queue_size} rows); retry later", field="inputs")
        loop = asyncio.get_running_loop()
        request = _Request(inputs, rows, values_of(inputs), deadline, loop.create_future(), merge_key(inputs))
        self.queue.append(request)
        self.queued += rows
        self.queued_values += request.values
        self.observer.queued()
        if self._full() and self.filled is not None:
            _settle(self.filled)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._serve())
        expiry = loop.call_later(max(deadline - time.monotonic(), 0.0), self._expire, request.future)
        outcome = CANCELLED  # unless the await below returns or raises
        try:
            outputs = await request.future
            outcome = SUCCESS
            return outputs
        except DeadlineExceeded:
            outcome = TIMEOUT
            raise
        except Exception:
            outcome = ERROR
            raise
        finally:
            expiry.cancel()
            request.future.cancel()  # no-op when done; otherwise the batch loop skips it
            _finish(self.observer, request, outcome)

    def _expire(self, future: asyncio.Future) -> None:
        if not future.done():
            future.set_exception(DeadlineExceeded(f"request timed out after {self.config.timeout_ms} ms",
                                                  field="timeout_ms"))

    def _take_batch(self) -> list[_Request]:
        """Pop the oldest queued request and, oldest first, those that merge with it and fit, up to max_batch_size
        rows and max_values values (one oversized request runs alone); the others stay queued, in order."""
        batch, rows, values, now, left = [], 0, 0, time.monotonic(), []
        while self.queue and rows < self.config.max_batch_size:
            request = self.queue.popleft()
            if request.future.done() or request.deadline <= now:
                self.queued -= request.rows
                self.queued_values -= request.values
                continue  # cancelled or expired while queued: its caller has already been answered
            if batch and (request.key != batch[0].key or rows + request.rows > self.config.max_batch_size
                          or values + request.values > self.max_values):
                left.append(request)
                continue
            self.queued -= request.rows
            self.queued_values -= request.values
            request.started = now
            self.observer.dequeued()
            batch.append(request)
            rows += request.rows
            values += request.values
        self.queue.extendleft(reversed(left))
        return batch

    def _full(self) -> bool:
        """No more could join the next batch: max_batch_size rows or max_values values are queued (merge keys
        aside)."""
        return self.queued >= self.config.max_batch_size or self.queued_values >= self.max_values

    async def _wait_to_fill(self) -> None:
        """Wait until the batch is full or the oldest request has waited max_queue_delay_us (submit wakes it
        when full; a request that is not the last needed does not)."""
        left = self.queue[0].arrived + self.config.max_queue_delay_us / 1e6 - time.monotonic()
        if self._full() or left <= 0:
            return
        loop = asyncio.get_running_loop()
        self.filled = loop.create_future()
        timer = loop.call_later(left, _settle, self.filled)
        try:
            await self.filled
        finally:
            timer.cancel()
            self.filled = None

    async def _serve(self) -> None:
        while self.queue:
            await self._wait_to_fill()
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Request]) -> None:
        """Run the batch's requests as one call and answer each with its rows. When a merged call fails other
        than by an EngineError (a refusal, a lost worker: the same for every request), each request runs again
        alone, so that the error reaches only the request whose input caused it."""
        try:
            merged = {k: np.concatenate([r.inputs[k] for r in batch]) for k in batch[0].inputs}
            self.observer.batch(rows_of(merged))
            outputs, seconds = await _timed(self.run, merged)
        except EngineError as e:
            return _fail(batch, e)
        except Exception as e:  # noqa: BLE001 - answered below: to the request alone, or to the whole batch
            if len(batch) == 1:
                return _fail(batch, e)
            for r in batch:
                if not r.future.done():
                    await self._run_batch([r])
            return
        start = 0
        for r in batch:
            r.compute = seconds
            if not r.future.done():
                r.future.set_result({k: v[start: start + r.rows] for k, v in outputs.items()})
            start += r.rows


def _fail(batch: list[_Request], error: Exception) -> None:
    for r in batch:
        if not r.future.done():
            r.future.set_exception(error)


@dataclass
class Sequence:
    """One request's rows in the running batch: its own state, noise generators and inputs per step."""

    feeds: Callable[[int], Arrays]  # step t -> this sequence's per-step inputs (noise, observed, ...)
    state: Arrays  # the inputs that carry over between steps, [rows, ...] each
    steps: int
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    t: int = 0
    cancelled: bool = False
    arrived: float = field(default_factory=time.monotonic)  # reset when it joins a batcher's queue
    started: float | None = None  # when it joined the running batch
    compute: float = 0.0  # seconds of the steps it ran in
    deadline: float | None = None  # time.monotonic() when it gives up; default: timeout_ms after it arrives

    @property
    def rows(self) -> int:
        return rows_of(self.state)



class ContinuousBatcher:
    """Runs `run(feeds) -> outputs` once per step over every active sequence.

    `state_names` maps each state input to the output that replaces it after a
    step (x_prev <- x, h <- next_h, ...); each step's output `emit` goes to the
    sequence's consumer (x for autoregressive steps, next_x for a Markov chain).
    Sequences join when there is room in max_batch_size and leave when done or
    cancelled, at step boundaries; a step waits for no queue delay.
    """

    def __init__(self, run: Run, state_names: dict[str, str], config: BatchingConfig,
                 observer: Observer | None = None, emit: str = "x"):
        self.run, self.state_names, self.config, self.emit = run, state_names, config, emit
        self.observer = observer or Observer()
        self.waiting: deque[Sequence] = deque()
        self.active: list[Sequence] = []
        self.task: asyncio.Task | None = None
        self.steps_run = 0

    def running_rows(self) -> int:
        return sum(s.rows for s in self.active)

    def idle(self) -> bool:
        """No sequence waiting or running: the batcher can be dropped."""
        return not self.waiting and not self.active and (self.task is None or self.task.done())

    async def generate(self, sequence: Sequence) -> AsyncIterator[np.ndarray]:
        """Yield the sequence's output of every step; stopping early frees its rows at the next boundary.

        A sequence not done by its deadline (default: timeout_ms after it arrived) raises DeadlineExceeded and
        is freed the same way.
        """
        if sum(s.rows for s in self.waiting) + sequence.rows > self.config.max_queue_size:
            self.observer.rejected()
            raise Overloaded(f"queue full ({self.config.max_queue_size} rows); retry later", field="n")
        sequence.arrived = time.monotonic()
        self.waiting.append(sequence)
        self.observer.queued()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._serve())
        outcome, answered = CANCELLED, False  # cancelled unless it gets every step's output or an error
        deadline = sequence.arrived + self.config.timeout_ms / 1000 if sequence.deadline is None else sequence.deadline
        try:
            for step in range(sequence.steps):
                try:  # (not wait_for: on Python 3.11 it can swallow a cancellation when an item is ready)
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                        item = await sequence.outbox.get()
                except TimeoutError:
                    outcome = TIMEOUT
                    raise DeadlineExceeded(f"request timed out after {self.config.timeout_ms} ms",
                                           field="timeout_ms") from None
                if isinstance(item, BaseException):
                    outcome = ERROR
                    raise item
                if step == sequence.steps - 1:  # answered in full, whenever the consumer comes back
                    answered = True
                    _finish(self.observer, sequence, SUCCESS)
                yield item
        finally:
            sequence.cancelled = True
            if not answered:
                _finish(self.observer, sequence, outcome)

    def _admit(self) -> None:
        self.active = [s for s in self.active if not s.cancelled]
        for s in list(self.waiting):
            if s.cancelled:
                self.waiting.remove(s)
            elif not self.active or self.running_rows() + s.rows <= self.config.max_batch_size:
                self.waiting.remove(s)
                s.started = time.monotonic()
                self.observer.dequeued()
                self.active.append(s)

    async def _serve(self) -> None:
        while self.waiting or self.active:
            await asyncio.sleep(0)  # a step boundary: consumers read their outputs and may leave before the next step
            self._admit()
            if not self.active:
                continue
            batch = list(self.active)
            try:
                per_sequence = [{**s.state, **s.feeds(s.t)} for s in batch]
                merged = {k: np.concatenate([f[k] for f in per_sequence]) for k in per_sequence[0]}
                self.observer.batch(rows_of(merged))
                outputs, seconds = await _timed(self.run, merged)
            except Exception as e:  # noqa: BLE001 - every sequence in the step shares the failure
                for s in batch:
                    s.outbox.put_nowait(e)
                    s.cancelled = True
                continue
            self.steps_run += 1
            for s in batch:
                s.compute += seconds
            self._scatter(batch, outputs)

    def _scatter(self, batch: list[Sequence], outputs: Arrays) -> None:
        start = 0
        for s in batch:
            mine = {k: v[start: start + s.rows] for k, v in outputs.items()}
            start += s.rows
            s.state = {name: mine[out] for name, out in self.state_names.items()}
            s.t += 1
            s.outbox.put_nowait(mine[self.emit])
            if s.t == s.steps:
                s.cancelled = True  # finished: leaves at this boundary
                self.observer.generated(s.rows)
