"""The engine: validates requests against a model's manifest and runs its procedures.

The REST and gRPC adapters call only this class. Its schedulers batch the work and
hand each batch to a runner (service.engine.workers): the engine worker processes
when serving, or this process in tests and benchmarks.
"""

import asyncio
import contextvars
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator

import numpy as np

from service.engine import captions, latent, procedures, worker_procedures
from service.engine.errors import InvalidInput, MissingCapability, UnknownModel, UnsupportedModel
from service.engine.latent_operations import LatentOperations
from service.engine.metrics import EngineMetrics
from service.engine.predict import StateSpaceOperations
from service.engine.scheduler import BatchingConfig, ContinuousBatcher, DynamicBatcher
from service.engine.scoring import ScoringOperations
from service.engine.step_controls import plan as plan_steps
from service.engine.validation import check_batch, check_levels, check_sequence
from service.engine.workers import InProcess, WorkerPool
from service.settings import Settings
from service.store import ModelEntry, ModelStore

SERVED_KINDS = ("image", "text", "audio", "music")
SEQUENCE_KINDS = ("text", "audio")  # any length: generation takes a length and a prompt, scoring any length
MAX_LENGTH_SCHEDULERS = 64  # schedulers kept per input length (sequence scoring) before idle ones are dropped
# (model, version) a request names (/v1/models/{name}/versions/{v}/..., V2's model_version): Engine.model() of
# that model answers with that version; every other model, and a request that names none, gets the latest
PINNED_VERSION: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar("pinned_version", default=None)
log = logging.getLogger("genserve.engine")


class LoadedModel:
    """A store entry's manifest, as the engine reads it (the functions themselves load in the runner)."""

    def __init__(self, entry: ModelEntry, runner_id: str | None = None):
        """runner_id: how the runner knows this version (its model name for the version it started with, else
        its directory, which a worker loads on first use)."""
        self.entry = entry
        self.version = entry.version
        self.runner_id = entry.name if runner_id is None else runner_id
        self.manifest = entry.manifest
        self.data = self.manifest["data"]
        if self.data["kind"] not in SERVED_KINDS:
            raise UnsupportedModel(f"model {entry.name!r}: {self.data['kind']} data is not served yet "
                                   f"(served: {', '.join(SERVED_KINDS)}); remove it from the store", field="model")
        self.shape = list(self.data["shape"])
        self.capabilities = self.manifest["capabilities"]
        self.is_sequence = self.data["kind"] in SEQUENCE_KINDS

    def function_inputs(self, function: str) -> list[str]:
        return [tensor["name"] for tensor in self.manifest["functions"][function]["inputs"]]

    def describe(self) -> dict:
        m = self.manifest
        return {
            "name": m["name"], "version": m["version"], "family": m["family"],
            "description": m.get("description", ""), "capabilities": sorted(self.capabilities),
            "functions": sorted(m["functions"]),
            "data": self.data, "metrics": m["metrics"], "batching": m["batching"],
        }

    def capability(self, name: str) -> dict:
        if name not in self.capabilities:
            raise MissingCapability(f"model {self.manifest['name']!r} cannot {name}; "
                                    f"it can {sorted(self.capabilities)}", field="model")
        return self.capabilities[name]


class Engine(StateSpaceOperations, ScoringOperations, LatentOperations):
    def __init__(self, store: ModelStore, settings: Settings, metrics: EngineMetrics | None = None,
                 runner: InProcess | WorkerPool | None = None):
        """`runner` runs the model functions; by default this process loads and runs them itself."""
        self.settings = settings
        self.metrics = metrics if metrics is not None else EngineMetrics()  # its own registry by default
        self.store = store
        self.models = {name: LoadedModel(entry) for name, entry in store.entries.items()}  # the latest versions
        self.versions = {name: {v: self.models[name] if entry == store.entries[name] else
                                LoadedModel(entry, str(entry.directory.resolve())) for v, entry in versions.items()}
                         for name, versions in getattr(store, "versions", {}).items() if name in self.models}
        for name, m in self.models.items():  # a stand-in store (tests) may list its latest entries only
            self.versions.setdefault(name, {m.version: m})
        self.unloaded: set[str] = set()  # models unloaded through the repository API
        self.unavailable = store.unavailable_models()  # left out of a store served with skip_bad, with the reason
        self._poll: asyncio.Task | None = None
        if runner is None:
            directories = {name: entry.directory for name, entry in store.entries.items()}
            runner = InProcess(directories, settings.runtime, settings.intra_op_threads)
        self.runner = runner
        self._loop: asyncio.AbstractEventLoop | None = None
        # (model, function, length, continuous?) -> its scheduler: a step function called directly (V2) and the
        # same function run as a sequence (sample, complete) need one scheduler of each kind
        self._batchers: dict[tuple[str, str, int | None, bool], DynamicBatcher | ContinuousBatcher] = {}

    async def start(self) -> None:
        """Start the runner (worker processes load the models in the background: see ready())."""
        await self.runner.start()
        if self.settings.store_poll_s:
            self._poll = asyncio.create_task(self._poll_store(self.settings.store_poll_s))

    async def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
        await self.runner.stop()

    def ready(self) -> bool:
        """True when the models are loaded and a worker can run them."""
        return self.runner.ready()

    def model(self, name: str, version: int | None = None) -> LoadedModel:
        """The model's `version`, else the version the request pins (PINNED_VERSION), else its latest."""
        if name not in self.models:
            raise UnknownModel(f"unknown model {name!r}; known: {sorted(self.models)}", field="model")
        pinned = PINNED_VERSION.get()
        version = pinned[1] if version is None and pinned is not None and pinned[0] == name else version
        if version is None:
            return self.models[name]
        if version not in self.versions[name]:
            raise UnknownModel(f"version: model {name!r} has no version {version}; it has "
                               f"{sorted(self.versions[name])}", field="version")
        return self.versions[name][version]

    # --- the repository (Triton's model-repository extension: service.api.repository) --------------------------

    def load_model(self, name: str) -> list[int]:
        """Read the model's directory in the store again and serve every good version in it, the latest on the
        unversioned routes; versions already served keep their schedulers and in-flight requests. Returns the
        versions now served; UnknownModel when the directory holds no good version."""
        good, bad = self.store.scan_model(name)
        if not good:
            reasons = "; ".join(b.reason for b in bad) or f"no <version>/manifest.json under {name!r} in the store"
            raise UnknownModel(f"model {name!r}: nothing to load: {reasons}", field="model")
        served = self.versions.get(name, {})
        loaded = {v: served[v] if v in served and served[v].entry == entry else
                  LoadedModel(entry, str(entry.directory.resolve())) for v, entry in good.items()}
        self.versions[name], self.models[name] = loaded, loaded[max(loaded)]  # one assignment each: no torn read
        self.unloaded.discard(name)
        self.unavailable = [u for u in self.unavailable if u["name"] != name]
        log.info("model %s: loaded, versions %s", name, sorted(loaded))
        return sorted(loaded)

    def unload_model(self, name: str) -> None:
        """Stop serving the model: new requests get UnknownModel; requests in flight finish (they hold it)."""
        self.model(name)
        del self.models[name], self.versions[name]
        self.unloaded.add(name)
        log.info("model %s: unloaded", name)

    def repository_index(self, ready: bool) -> list[dict]:
        """Every version of every V2 model ("<model>.<function>") in the store, Triton's way: name, version, state
        READY or UNAVAILABLE, and the reason (a version that fails its checks: under its model's name). `ready`:
        whether the server is (a served version is UNAVAILABLE while it is not)."""
        index = []
        for name in self.store.model_names():
            good, bad = self.store.scan_model(name)
            served = self.versions.get(name, {})
            for version, entry in sorted(good.items()):
                reason = ("" if ready else "the engine is not ready") if version in served else \
                    "unloaded" if name in self.unloaded else "not loaded; load the model to serve it"
                index += [{"name": f"{name}.{function}", "version": str(version),
                           "state": "UNAVAILABLE" if reason else "READY", "reason": reason}
                          for function in entry.manifest["functions"]]
            index += [{"name": name, "version": b.version, "state": "UNAVAILABLE", "reason": b.reason} for b in bad]
        return index

    async def _poll_store(self, every_s: float) -> None:
        """Load every model whose directory holds a version newer than the one served (GENSERVE_STORE_POLL_S)."""
        while True:
            await asyncio.sleep(every_s)
            for name in self.store.model_names():
                if name in self.unloaded:
                    continue
                try:
                    good, _ = await asyncio.to_thread(self.store.scan_model, name)
                    if good and (name not in self.models or max(good) > self.models[name].version):
                        self.load_model(name)
                except OSError as e:  # a directory being written or removed: the next poll sees it whole
                    log.warning("store poll: model %s: %s", name, e)

    def list_models(self) -> list[dict]:
        return [m.describe() for m in self.models.values()]

    def unavailable_models(self) -> list[dict]:
        """The store's models not served (GENSERVE_SKIP_BAD_MODELS): name, version, available false, reason."""
        return self.unavailable

    def describe(self, name: str) -> dict:
        return self.model(name).describe()

    def data_spec(self, name: str) -> dict:
        m = self.model(name)
        return {**m.data, "num_classes": len(m.data.get("classes", []))}

    def _labels(self, m: LoadedModel, label: int | None, rngs: list[np.random.Generator]) -> np.ndarray | None:
        """label for every row: the given one, or drawn from the class prior (exact ancestral sampling)."""
        classes = m.data.get("classes")
        if not classes:
            if label is not None:
                raise InvalidInput(f"model {m.manifest['name']!r} takes no label", field="label")
            return None
        if label is not None:
            if not 0 <= label < len(classes):
                raise InvalidInput(f"label must be in 0..{len(classes) - 1}", field="label")
            return np.full(len(rngs), label, np.int64)
        prior = np.asarray(m.data["class_prior"])
        return np.array([rng.choice(len(classes), p=prior / prior.sum()) for rng in rngs], np.int64)

    def _conditions(self, m: LoadedModel, cap: dict, label: int | None, controls: dict[str, list[float]],
                    rngs: list[np.random.Generator]) -> dict[str, np.ndarray]:
        """An ancestral sample's inputs besides noise: the label where the function takes one (given, or drawn
        from the class prior) and every control of the capability (given, or drawn from its distribution)."""
        conditions = {}
        if "label" in m.function_inputs(cap["function"]):
            conditions["label"] = self._labels(m, label, rngs)
        elif label is not None:
            raise InvalidInput(f"label: model {m.manifest['name']!r} samples without a label", field="label")
        specs = cap.get("controls", {})
        for name in controls:
            if name not in specs:
                raise InvalidInput(f"controls.{name}: model {m.manifest['name']!r} has the controls "
                                   f"{sorted(specs)}", field=f"controls.{name}")
        for name, spec in specs.items():
            conditions[name] = latent.control_values(spec, controls.get(name), rngs, f"controls.{name}")
        return conditions

    def _batching(self, m: LoadedModel) -> BatchingConfig:
        """The manifest's batching knobs, with any set in settings taking precedence."""
        knobs = dict(m.manifest["batching"])
        for key in knobs:
            if getattr(self.settings, key) is not None:
                knobs[key] = getattr(self.settings, key)
        return BatchingConfig(**knobs)

    def _batcher(self, m: LoadedModel, function: str, capability: dict | None = None, length: int | None = None):
        """The model function's scheduler: continuous for a step function, dynamic for one-shot ones.

        Inputs of a sequence model batch only with inputs of the same `length`: one dynamic batcher per length.
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # schedulers belong to one event loop
            self._loop, self._batchers = loop, {}
        continuous = bool(capability and capability["procedure"] == "autoregressive")
        model, key = m.runner_id, (m.runner_id, function, length, continuous)
        if key not in self._batchers:
            self._forget_idle_lengths()
            inputs = m.function_inputs(function)

            async def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return await self.runner.call(model, function, {name: feeds[name] for name in inputs})

            observer = self.metrics.observer(m.manifest["name"], function)
            if continuous:
                state, emit = procedures.state_outputs(capability)
                self._batchers[key] = ContinuousBatcher(run, state, self._batching(m), observer, emit)
            else:
                self._batchers[key] = DynamicBatcher(run, self._batching(m), observer)
        return self._batchers[key]

    def _forget_idle_lengths(self) -> None:
        """Drop the idle schedulers of past sequence lengths once there are many (memory stays bounded over
        inputs of ever new lengths; a busy one is kept, and one is made again when its length comes back)."""
        by_length = [key for key in self._batchers if key[2] is not None]
        if len(by_length) >= MAX_LENGTH_SCHEDULERS:
            for key in by_length:
                if self._batchers[key].idle():
                    del self._batchers[key]

    def _per_row(self, m: LoadedModel, function: str, label: int | None, top_k: int | None,
                 rngs: list[np.random.Generator]) -> dict[str, np.ndarray]:
        """The step's per-row inputs besides noise and temperature: label, top_k (0: no top-k cut)."""
        per_row = {}
        labels = self._labels(m, label, rngs)
        if labels is not None:
            per_row["label"] = labels
        if "top_k" in m.function_inputs(function):
            per_row["top_k"] = np.full(len(rngs), top_k or 0, np.int64)
        elif top_k is not None:
            raise InvalidInput(f"top_k: model {m.manifest['name']!r} does not take top_k", field="top_k")
        return per_row

    def _plan(self, m: LoadedModel, cap: dict, prompt: np.ndarray | None, length: int | None,
              rows: int, length_field: str = "length") -> tuple[int, np.ndarray | None, np.ndarray | None, int]:
        """(steps, observed, mask, values): a sequence model generates `length` values after the prompt.

        observed and mask are [rows, steps * values per step], 1 over the prompt; images take neither.
        `length_field` names the request field that set length (an audio request's seconds) in refusals.
        """
        per_step = math.prod(cap["step_shape"])
        if not m.is_sequence:
            for field, value in (("length", length), ("prompt", prompt)):
                if value is not None:
                    raise InvalidInput(f"{field}: model {m.manifest['name']!r} generates fixed-shape "
                                       f"{m.data['kind']} data", field=field)
            return cap["steps"], None, None, cap["steps"] * per_step
        prompt = np.zeros(0, np.int64) if prompt is None or len(prompt) == 0 else \
            check_sequence(prompt, m.data["levels"], "prompt")
        length = cap["steps"] * per_step if length is None else length
        if length < 1:
            raise InvalidInput(f"{length_field}: must be at least 1 value", field=length_field)
        values = len(prompt) + length
        most = cap.get("max_length", self.settings.max_sequence_length)
        if values > most:
            seconds = f" ({values / m.data['sample_rate']:g} s; at most {most / m.data['sample_rate']:g} s)" \
                if m.data["kind"] == "audio" else ""
            raise InvalidInput(f"{length_field}: prompt and continuation are {values} values{seconds}, over model "
                               f"{m.manifest['name']!r}'s limit of {most}", field=length_field)
        self._check_work(m, cap, rows, values, length_field, "samples x values")
        steps = math.ceil(values / per_step)
        observed = np.zeros((rows, steps * per_step), np.int64)
        observed[:, : len(prompt)] = prompt
        mask = (np.arange(steps * per_step) < len(prompt)).astype(np.int64)
        return steps, observed, np.broadcast_to(mask, observed.shape), values

    def _generate(self, m: LoadedModel, capability: str, seed: int, rows: int, temperature: float,
                  label: int | None, observed=None, mask=None, steps: int | None = None,
                  top_k: int | None = None, rngs: list[np.random.Generator] | None = None,
                  per_step: dict[str, np.ndarray] | None = None) -> AsyncIterator[np.ndarray]:
        """Every step's output [rows, *step_shape], from the model's continuous batcher."""
        cap = m.capability(capability)
        if rows < 1:
            raise InvalidInput("n: must be at least 1", field="n")
        self._check_rows(m, rows)
        rngs = procedures.row_generators(seed, rows) if rngs is None else rngs
        per_row = self._per_row(m, cap["function"], label, top_k, rngs)
        sequence = procedures.autoregressive(cap, rngs, np.full(rows, temperature, np.float32), steps,
                                             per_row, observed, mask, per_step)
        return self._batcher(m, cap["function"], cap).generate(sequence)

    async def sample_stream(self, name: str, n: int, seed: int, temperature: float, label: int | None, *,
                            length: int | None = None, top_k: int | None = None, prompt: np.ndarray | None = None,
                            chunk: int | None = None, length_field: str = "length", bars: int | None = None,
                            step_controls: dict[str, list[str]] | None = None) -> AsyncIterator[np.ndarray]:
        """Yield the output as it is generated: every step's [n, *step_shape] (an image row, a bar), or for a
        sequence model [n, chunk] values (characters, audio; default: one step's), the prompt first, the last
        chunk shorter; the chunks add up to sample's output. bars, step_controls: as sample's."""
        m = self.model(name)
        if m.capability("sample")["procedure"] != "autoregressive":
            raise MissingCapability(f"model {name!r} draws each sample at once "
                                    f"({m.capability('sample')['procedure']}): use sample, not a stream", field="model")
        steps, observed, mask, values = self._plan(m, m.capability("sample"), prompt, length, n, length_field)
        chosen, per_step = plan_steps(name, m.capability("sample"), n, bars, step_controls)
        steps = chosen or steps
        if chunk is not None and (not m.is_sequence or chunk < 1):
            raise InvalidInput("chunk: a positive number of values, for text and audio models only", field="chunk")
        chunk = chunk or math.prod(m.capability("sample")["step_shape"])
        started, emitted, pending = time.monotonic(), 0, np.zeros((n, 0), np.int64)
        async for value in self._generate(m, "sample", seed, n, temperature, label, observed, mask, steps, top_k,
                                          per_step=per_step):
            if not m.is_sequence:
                started = self._first_chunk(name, started)
                yield value
                continue
            pending = np.concatenate([pending, value.reshape(n, -1)], axis=1)[:, : values - emitted]
            while pending.shape[1] >= chunk or (pending.shape[1] and emitted + pending.shape[1] == values):
                out, pending = pending[:, :chunk], pending[:, chunk:]
                emitted += out.shape[1]
                self._count_audio(m, out.size)
                started = self._first_chunk(name, started)
                yield out

    async def _chain(self, m: LoadedModel, cap: dict, rngs: list[np.random.Generator], x: np.ndarray,
                     observed: np.ndarray, mask: np.ndarray, steps: int) -> np.ndarray:
        """A Markov chain's state after `steps` transitions from x, run beside the runtime: its steps share calls
        with other requests' chains, pay no queue delay, and the deadline covers them all."""
        self._check_rows(m, len(x))
        request = worker_procedures.chain_request(cap, rngs, steps)
        return (await self._in_worker(m, request, {"x": x, "observed": observed, "mask": mask}))["next_x"]

    async def _in_worker(self, m: LoadedModel, request: dict, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run an iterative procedure beside the runtime (service.engine.worker_procedures) under this request's
        deadline (timeout_ms from now); its schedulers' events go into this process's metrics."""
        config = self._batching(m)
        request = {**request, "batching": dataclasses.asdict(config), "seconds_left": config.timeout_ms / 1000}
        try:
            outputs, events = await self.runner.procedure(m.runner_id, request, arrays)
        except worker_procedures.ProcedureFailed as e:
            self._replay(m, e.events)
            raise e.error from None
        self._replay(m, events)
        return outputs

    def _replay(self, m: LoadedModel, events: worker_procedures.Events) -> None:
        for function, its_events in events.items():
            worker_procedures.replay(its_events, self.metrics.observer(m.manifest["name"], function))

    def _check_rows(self, m: LoadedModel, rows: int) -> None:
        """A sequence's rows (inputs x n) run together, so they must fit the scheduler's queue at once."""
        most = self._batching(m).max_queue_size
        if rows > most:
            raise InvalidInput(f"n: inputs x n is {rows} rows, over the {most} that run together; send fewer "
                               "inputs or a smaller n per request", field="n")

    def stream_values(self, name: str, length: int | None = None, prompt: np.ndarray | None = None) -> int:
        """How many values per sample a sample_stream of these options yields in all (an audio stream's header
        declares it): the prompt and `length` values for a sequence model (default: the capability's)."""
        cap = self.model(name).capability("sample")
        per_step = math.prod(cap["step_shape"])
        if not self.model(name).is_sequence:
            return cap["steps"] * per_step
        return (0 if prompt is None else len(prompt)) + (cap["steps"] * per_step if length is None else length)

    def _first_chunk(self, name: str, started: float | None) -> None:
        """Record the time to a stream's first chunk, once: returns the new `started`, None."""
        if started is not None:
            self.metrics.first_chunk_seconds.labels(name).observe(time.monotonic() - started)

    def _count_audio(self, m: LoadedModel, values: int) -> None:
        if m.data["kind"] == "audio":
            self.metrics.audio_seconds.labels(m.manifest["name"]).inc(values / m.data["sample_rate"])

    async def sample(self, name: str, n: int, seed: int, temperature: float, label: int | None, *,
                     length: int | None = None, top_k: int | None = None, prompt: np.ndarray | str | None = None,
                     steps: int | None = None, controls: dict[str, list[float]] | None = None,
                     length_field: str = "length", bars: int | None = None,
                     step_controls: dict[str, list[str]] | None = None, actions=None) -> np.ndarray:
        """[n, *shape] int64 samples, or [n, len(prompt) + length] for a sequence model (the prompt first).
        An ancestral sample's prompt is text, for a capability that declares a prompt input (captions.py).

        Sample i depends only on (seed, i), whatever shares its batch. `steps`: a Markov chain's length.
        `length_field`: the request field that set `length` (an audio request's seconds), named in refusals.
        `controls`: the values of a model's sample controls (an InfoGAN's codes); the others are drawn.
        `bars`, `step_controls`: an autoregressive model that lets the request choose its number of steps (a
        music model: [n, bars, *step_shape]) and per-step controls (a chord per bar): service.engine.step_controls.
        `actions`: a state-space model's roll-outs under them, [n, S + 1, *shape] (service.engine.predict).
        """
        m = self.model(name)
        cap = m.capability("sample")
        if cap["procedure"] == "state_space" or actions is not None:
            options = {"temperature": None if temperature == 1.0 else temperature, "label": label, "length": length,
                       "top_k": top_k, "prompt": prompt, "steps": steps, "controls": controls, "bars": bars,
                       "chords": step_controls or None}
            return await self.rollouts(m, cap, n, seed, actions, options)
        chosen, per_step = plan_steps(name, cap, n, bars, step_controls)
        if controls and "controls" not in cap:
            raise InvalidInput(f"controls: model {name!r} takes no controls", field="controls")
        if cap["procedure"] != "autoregressive":
            self._no_sequence_options(m, length=length, top_k=top_k)
            if n < 1:
                raise InvalidInput("n: must be at least 1", field="n")
            rngs = procedures.row_generators(seed, n)
            if cap["procedure"] == "ancestral":
                self._no_steps(m, cap, steps)
                conditions = {**self._conditions(m, cap, label, controls or {}, rngs),
                              **captions.condition(cap, prompt, n, name)}
                return await latent.ancestral(self._caller(m), cap, rngs, temperature, conditions)
            self._no_sequence_options(m, label=label, prompt=prompt)
            if temperature != 1.0:
                raise InvalidInput(f"temperature: model {name!r} samples by a Markov chain and takes none",
                                   field="temperature")
            zeros = np.zeros([n, *m.shape], np.int64)
            return await self._chain(m, cap, rngs, self._chain_start(m, rngs), zeros, zeros,
                                     self._chain_steps(m, cap, steps, n))
        self._no_steps(m, cap, steps)
        steps, observed, mask, values = self._plan(m, m.capability("sample"), prompt, length, n, length_field)
        chunks = [v async for v in self._generate(m, "sample", seed, n, temperature, label, observed, mask,
                                                  chosen or steps, top_k, per_step=per_step)]
        if chosen is not None:
            return np.stack(chunks, axis=1)  # [n, bars, *step_shape]
        x = np.stack(chunks, axis=1).reshape(n, -1)[:, :values]
        self._count_audio(m, x.size)
        return x if m.is_sequence else x.reshape(n, *m.shape)

    async def complete(self, name: str, x: np.ndarray | list[np.ndarray], mask: np.ndarray | None, n: int,
                       seed: int, temperature: float, label: int | None = None, *, length: int | None = None,
                       top_k: int | None = None, steps: int | None = None,
                       length_field: str = "length") -> np.ndarray | list[np.ndarray]:
        """Fill in each input n times; observed values are kept exactly.

        Images: x, mask [B, *shape] (mask 1 = observed) -> [B, n, *shape]. Sequence models continue each
        prefix x[b] [T_b] by `length` values (no mask) -> per input [n, T_b + length]. A Markov chain
        (pseudo-Gibbs, clamped Gibbs) runs `steps` transitions from random values at the unobserved pixels.
        """
        m = self.model(name)
        cap = m.capability("complete")
        if cap["procedure"] == "direct":
            self._no_steps(m, cap, steps)
            self._no_sequence_options(m, length=length, top_k=top_k, label=label)
            if temperature != 1.0:
                raise InvalidInput(f"temperature: model {name!r} completes by optimization and takes none",
                                   field="temperature")
        elif cap["procedure"] == "markov_chain":
            self._no_sequence_options(m, length=length, top_k=top_k, label=label)
            if temperature != 1.0:
                raise InvalidInput(f"temperature: model {name!r} completes by a Markov chain and takes none",
                                   field="temperature")
        else:
            self._no_steps(m, cap, steps)
        if m.is_sequence:
            if mask is not None:
                raise InvalidInput(f"mask: model {name!r} continues each input and takes no mask", field="mask")
            return await self._continue(m, x, n, seed, temperature, label, length, top_k, length_field)
        self._no_sequence_options(m, length=length)  # an image's completion has the image's size
        x = check_levels(x, m.shape, m.data["levels"], "inputs")
        if mask is None:
            raise InvalidInput("mask: image completion needs a mask (1 = observed)", field="mask")
        if mask.ndim == len(m.shape):  # one mask for every input
            mask = np.broadcast_to(mask, x.shape)
        mask = check_levels(mask, m.shape, 2, "mask")
        if len(mask) != len(x):
            raise InvalidInput(f"mask: give one mask, or one per input ({len(x)})", field="mask")
        if n < 1:
            raise InvalidInput("n: must be at least 1", field="n")
        rows_x, rows_mask = np.repeat(x, n, axis=0), np.repeat(mask, n, axis=0)
        if cap["procedure"] == "direct":  # one function from a noise start (a GAN's latent optimization)
            feeds = {"observed": rows_x, "mask": rows_mask,
                     **latent.draw(cap.get("noise", {}), procedures.row_generators(seed, len(rows_x)))}
            out = (await self._caller(m)(cap["function"], feeds))["x"]
            return out.reshape(len(x), n, *m.shape)
        if cap["procedure"] == "markov_chain":
            rngs = procedures.row_generators(seed, len(rows_x))
            start = np.where(rows_mask == 1, rows_x, self._chain_start(m, rngs))
            out = await self._chain(m, cap, rngs, start, rows_x, rows_mask,
                                    self._chain_steps(m, cap, steps, len(rows_x)))
            return out.reshape(len(x), n, *m.shape)
        values = [v async for v in self._generate(m, "complete", seed, len(rows_x), temperature, label,
                                                  rows_x, rows_mask)]
        return np.stack(values, axis=1).reshape(len(x), n, *m.shape)

    async def _continue(self, m: LoadedModel, prefixes: list[np.ndarray], n: int, seed: int, temperature: float,
                        label: int | None, length: int | None, top_k: int | None,
                        length_field: str = "length") -> list[np.ndarray]:
        """Each prefix [T_b] continued n times -> per prefix [n, T_b + length]; row b*n + i uses generator b*n + i."""
        if len(prefixes) == 0:
            raise InvalidInput("inputs: give at least one input", field="inputs")
        if n < 1:
            raise InvalidInput("n: must be at least 1", field="n")
        rngs = procedures.row_generators(seed, len(prefixes) * n)
        cap = m.capability("complete")

        prefixes = [check_sequence(prefix, m.data["levels"], f"inputs[{b}]") for b, prefix in enumerate(prefixes)]
        plans = [self._plan(m, cap, prefix, length, n, length_field) for prefix in prefixes]
        self._check_work(m, cap, n, sum(values for *_, values in plans), length_field,
                         "n x the values of every input")

        async def one(b: int, steps: int, observed: np.ndarray, mask: np.ndarray, values: int) -> np.ndarray:
            chunks = [v async for v in self._generate(m, "complete", seed, n, temperature, label, observed, mask,
                                                      steps, top_k, rngs[b * n: (b + 1) * n])]
            out = np.stack(chunks, axis=1).reshape(n, -1)[:, :values]
            self._count_audio(m, n * (values - int(mask[0].sum())))  # the generated values, not the prefix
            return out

        return list(await asyncio.gather(*(one(b, *plan) for b, plan in enumerate(plans))))

    def translate_input(self, name: str) -> dict:
        """What `translate` takes: {"kind": "image", "shape", "levels"} of its input images (the answer's are the
        model's data shape and levels); MissingCapability for a model that does not translate."""
        return {"kind": "image", **self.model(name).capability("translate")["input"]}

    async def translate(self, name: str, x: np.ndarray, direction: str | None = None) -> np.ndarray:
        """Images x [B, *input shape] of the input levels -> images [B, *shape] int64 levels, by a deterministic
        function (source -> x): the same inputs always give the same images. The function is the named
        `direction`'s among the capability's `directions` (a two-way model's), or without one the capability's own
        `function`."""
        m = self.model(name)
        cap, spec = m.capability("translate"), self.translate_input(name)
        function = self._translate_function(name, cap, direction)
        x = check_levels(np.asarray(x), spec["shape"], spec["levels"], "inputs")
        return (await self._caller(m)(function, {"source": x}))["x"]

    @staticmethod
    def _translate_function(name: str, cap: dict, direction: str | None) -> str:
        """The function that translates in `direction` (None: the capability's own); InvalidInput naming
        `direction` for one the capability does not list."""
        if direction is None:
            return cap["function"]
        directions = cap.get("directions", {})
        if direction not in directions:
            listed = f"one of {sorted(directions)}" if directions else "left out: it translates one way only"
            raise InvalidInput(f"direction: model {name!r} has no direction {direction!r}; it must be {listed}",
                               field="direction")
        return directions[direction]["function"]

    def function_spec(self, name: str, function: str) -> dict:
        """The manifest entry (inputs, outputs) of one named function; raises UnknownModel."""
        m = self.model(name)
        if function not in m.manifest["functions"]:
            raise UnknownModel(f"model {name!r} has no function {function!r}; it has "
                               f"{sorted(m.manifest['functions'])}", field="function")
        return m.manifest["functions"][function]

    async def infer(self, name: str, function: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one named tensor function directly (Open Inference Protocol): inputs by name -> outputs by name."""
        spec = self.function_spec(name, function)
        for tensor in spec["inputs"]:
            if tensor["name"] not in inputs:
                raise InvalidInput(f"inputs: {function} needs input {tensor['name']!r}", field=tensor["name"])
            got = list(np.shape(inputs[tensor["name"]]))
            want = tensor["shape"]
            if len(got) != len(want) or any(w not in (-1, g) for w, g in zip(want, got, strict=True)):
                raise InvalidInput(f"{tensor['name']}: shape must be {want} (-1: any), got {got}",
                                   field=tensor["name"])
        check_batch(inputs)
        m = self.model(name)
        for tensor_name, value in inputs.items():
            levels = self._input_levels(m, tensor_name)
            if levels is not None:
                check_levels(np.asarray(value), None, levels, tensor_name)
        unknown = set(inputs) - {t["name"] for t in spec["inputs"]}
        if unknown:
            raise InvalidInput(f"inputs: {function} has no inputs {sorted(unknown)}", field=sorted(unknown)[0])
        return await self._batcher(m, function).submit(inputs)

    @staticmethod
    def _input_levels(m: LoadedModel, tensor: str) -> int | None:
        """How many integer values an input of the naming conventions, or a per-step control (a chord), may take
        (None: not checked)."""
        controls = {name: len(spec["names"]) for cap in m.capabilities.values()
                    for name, spec in cap.get("step_controls", {}).items()}
        return {"x": m.data.get("levels"), "observed": m.data.get("levels"), "x_prev": m.data.get("levels"),
                "mask": 2, "label": len(m.data.get("classes", [])) or None, **controls}.get(tensor)
