"""The engine: validates requests against a model's manifest and runs its procedures.

The REST and gRPC adapters call only this class. Its schedulers batch the work and
hand each batch to a runner (service.engine.workers): the engine worker processes
when serving, or this process in tests and benchmarks. Iterative procedures with no
output before their end run whole in the worker (service.engine.worker_procedures).

Here: the store's models and versions, the schedulers, the worker hop, translate and
V2 infer. The operations of each family of procedures are mixins in their own modules:
generation.py (sample, complete, stream), latent_operations.py (encode, decode,
reconstruct, interpolate, importance-weighted bounds), scoring.py (score and the
anomaly detectors) and predict.py (state-space models: predict, roll-outs).
"""

import asyncio
import contextvars
import dataclasses
import logging
import time

import numpy as np

from service.engine import anomaly, latent, procedures, worker_procedures
from service.engine.errors import (
    VERSION_FIELD,
    EngineError,
    InvalidInput,
    MissingCapability,
    UnknownModel,
    UnsupportedModel,
)
from service.engine.generation import GenerationOperations
from service.engine.latent_operations import LatentOperations, check_decoding
from service.engine.metrics import EngineMetrics
from service.engine.predict import StateSpaceOperations
from service.engine.scheduler import BatchingConfig, ContinuousBatcher, DynamicBatcher
from service.engine.scoring import ScoringOperations
from service.engine.validation import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    check_batch,
    check_levels,
    check_output_levels,
    check_range,
    check_sequence_work,
)
from service.engine.workers import InProcess, WorkerPool, version_id
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
        workers.version_id: its directory and manifest digest, which a worker loads on first use)."""
        self.entry = entry
        self.version = entry.version
        self.runner_id = entry.name if runner_id is None else runner_id
        self.manifest = entry.manifest
        self.data = self.manifest["data"]
        if self.data["kind"] not in SERVED_KINDS:
            raise UnsupportedModel(f"model {entry.name!r}: {self.data['kind']} data is not served yet "
                                   f"(served: {', '.join(SERVED_KINDS)}); remove it from the store", field="model")
        if (problem := anomaly.calibration_problem(self.manifest)) is not None:  # else requests would be refused
            raise UnsupportedModel(f"model {entry.name!r}: {problem}; fix its manifest", field="model")
        self.shape = list(self.data["shape"])
        self.capabilities = self.manifest["capabilities"]
        self.is_sequence = self.data["kind"] in SEQUENCE_KINDS
        # a sequence model scored by one pass over its values (charrnn, wavenet; not an importance-sampled vrnn,
        # whose score limits count samples k): its V2 x [rows, values] is held to those limits
        self.scores_values = self.is_sequence and self.capabilities.get("score", {}).get("procedure") == "direct"
        try:
            self.latent_gaussian = anomaly.fitted_latent_gaussian(self.manifest, entry.directory)  # once, at load
        except ValueError as e:
            raise UnsupportedModel(f"model {entry.name!r}: {e}; fix its files", field="model") from e
        self.input_levels = self._input_levels()  # tensor name -> levels, once: not per request
        self.input_ranges = self._input_ranges()  # tensor name -> (low, high) of a float input, once

    def _input_levels(self) -> dict[str, int]:
        """How many integer values an input may take, by its name: the naming conventions' inputs, a per-step
        control (a chord), a categorical control (a class), a prompt's word ids and a translation's source (an input
        not named here is not checked; an index out of range would otherwise reach the runtime)."""
        caps = self.capabilities.values()
        step_controls = {name: len(spec["names"]) for cap in caps
                         for name, spec in cap.get("step_controls", {}).items()}
        categorical = {name: spec["classes"] for cap in caps for name, spec in cap.get("controls", {}).items()
                       if spec["kind"] == "categorical"}
        words = {cap["prompt"]["input"]: len(cap["prompt"]["vocabulary"]) for cap in caps if "prompt" in cap}
        translate = self.capabilities.get("translate")
        source = {"source": translate["input"]["levels"]} if translate else {}
        levels = {"x": self.data.get("levels"), "observed": self.data.get("levels"), "x_prev": self.data.get("levels"),
                  "mask": 2, "label": len(self.data.get("classes", [])) or None, **step_controls, **categorical,
                  **words, **source}
        return {name: n for name, n in levels.items() if n is not None}

    def _input_ranges(self) -> dict[str, tuple[float, float]]:
        """The values a float input may take, by its name: a temperature, a continuous control (as far as it may
        extrapolate) and a state-space model's actions `u` (the range trained on); beyond, a model answers NaN,
        saturates, or its levels overflow."""
        ranges = {"temperature": (MIN_TEMPERATURE, MAX_TEMPERATURE)}
        for cap in self.capabilities.values():
            ranges |= {name: latent.extrapolation_range(spec) for name, spec in cap.get("controls", {}).items()
                       if spec["kind"] == "uniform"}
            if "actions" in cap:
                ranges["u"] = (cap["actions"]["low"], cap["actions"]["high"])
        return ranges

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


class Engine(GenerationOperations, StateSpaceOperations, ScoringOperations, LatentOperations):
    def __init__(self, store: ModelStore, settings: Settings, metrics: EngineMetrics | None = None,
                 runner: InProcess | WorkerPool | None = None):
        """`runner` runs the model functions; by default this process loads and runs them itself."""
        self.settings = settings
        self.metrics = metrics if metrics is not None else EngineMetrics()  # its own registry by default
        self.store = store
        self.unloaded: set[str] = set()  # models unloaded through the repository API
        self.unavailable = store.unavailable_models()  # left out of a store served with skip_bad, with the reason
        # (model, version) -> (its entry, why it is not served): a good version in the store this engine cannot
        # serve (UnsupportedModel), left out as a bad version is
        self.refused: dict[tuple[str, int], tuple[ModelEntry, str]] = {}
        self._named = set(store.entries)  # the models the runner was started with, known to it by name
        # runner ids of versions no longer served, to forget (forget_retired): at the start, a model the runner was
        # started with whose version there is not served (UnsupportedModel)
        self._retired: dict[str, float] = dict.fromkeys(store.entries, 0.0)  # runner id -> when it may be forgotten
        self.versions: dict[str, dict[int, LoadedModel]] = {}
        for name, latest in store.entries.items():  # a stand-in store (tests) may list its latest entries only
            entries = getattr(store, "versions", {}).get(name) or {latest.version: latest}
            if loaded := self._load_versions(name, entries, {}, strict=not settings.skip_bad_models):
                self.versions[name] = loaded
            else:
                self.unavailable.append({"name": name, "version": str(latest.version), "available": False,
                                         "reason": self.refused[name, latest.version][1]})
        self.models = {name: loaded[max(loaded)] for name, loaded in self.versions.items()}  # the latest versions
        self._poll: asyncio.Task | None = None
        self._forget_timer: asyncio.TimerHandle | None = None  # the next retired version's due time (forget_retired)
        self._stopped = False
        if runner is None:
            served = self._served_ids()  # (not a start version it cannot serve)
            directories = {name: entry.directory for name, entry in store.entries.items() if name in served}
            runner = InProcess(directories, settings.runtime, settings.intra_op_threads)
        self.runner = runner
        self._loop: asyncio.AbstractEventLoop | None = None
        # (model, function, length, continuous?) -> its scheduler: a step function called directly (V2) and the
        # same function run as a sequence (sample, complete) need one scheduler of each kind
        self._batchers: dict[tuple[str, str, int | None, bool], DynamicBatcher | ContinuousBatcher] = {}
        self.forget_retired()

    async def start(self) -> None:
        """Start the runner (worker processes load the models in the background: see ready())."""
        await self.runner.start()
        if self.settings.store_poll_s:
            self._poll = asyncio.create_task(self._poll_store(self.settings.store_poll_s))

    async def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
        self._stopped = True  # no timer is armed from now on
        if self._forget_timer is not None:
            self._forget_timer.cancel()
        await self.runner.stop()

    def ready(self) -> bool:
        """True when the models are loaded and a worker can run them."""
        return self.runner.ready()

    def model(self, name: str, version: int | None = None) -> LoadedModel:
        """The model's `version`, else the version the request pins (PINNED_VERSION), else its latest. A version not
        served is refused naming `version`; a pinned one (an unload, a reload or the store poll dropped it since the
        request came) naming the field of the request that chose it (VERSION_FIELD)."""
        if name not in self.models:
            raise UnknownModel(f"unknown model {name!r}; known: {sorted(self.models)}", field="model")
        pinned, field, since = PINNED_VERSION.get(), "version", ""
        if version is None and pinned is not None and pinned[0] == name:
            version, field, since = pinned[1], VERSION_FIELD.get(), " now (dropped since this request came)"
        if version is None:
            return self.models[name]
        if version not in self.versions[name]:
            raise UnknownModel(f"{field}: model {name!r} has no version {version}{since}; it has "
                               f"{sorted(self.versions[name])}", field=field)
        return self.versions[name][version]

    # --- the repository (Triton's model-repository extension: service.api.repository) --------------------------

    async def load(self, name: str) -> list[int]:
        """load_model, with the store's scan of the model's directory (it hashes every file) off the event loop."""
        return self.load_model(name, await asyncio.to_thread(self.store.scan_model, name))

    def load_model(self, name: str, scanned: tuple | None = None) -> list[int]:
        """Read the model's directory in the store again (or take `scanned`, the store's scan_model(name)) and serve
        every good version in it, the latest on the unversioned routes; versions already served keep their
        schedulers and in-flight requests. A version that fails the store's checks, or that this engine cannot serve
        (UnsupportedModel), is left out and logged. Returns the versions now served; UnknownModel when the directory
        holds no version to serve. On the event loop, which owns the engine's state (load() scans off it)."""
        good, bad = self.store.scan_model(name) if scanned is None else scanned
        for refused in bad:  # served without them; the repository index says why too
            log.warning("model %s: version %s not loaded: %s", name, refused.version, refused.reason)
        served = self.versions.get(name, {})
        loaded = self._load_versions(name, good, served, strict=False)
        if not loaded:
            reasons = [b.reason for b in bad] + [self.refused[name, v][1] for v in sorted(good)]
            raise UnknownModel(f"model {name!r}: nothing to load: " + ("; ".join(reasons) or
                               f"no <version>/manifest.json under {name!r} in the store"), field="model")
        self.versions[name], self.models[name] = loaded, loaded[max(loaded)]  # one assignment each: no torn read
        self._retire(m for v, m in served.items() if loaded.get(v) is not m)
        self.unloaded.discard(name)
        self.unavailable = [u for u in self.unavailable if u["name"] != name]
        self.forget_retired()
        log.info("model %s: loaded, versions %s", name, sorted(loaded))
        return sorted(loaded)

    def _load_versions(self, name: str, entries: dict[int, ModelEntry], served: dict[int, LoadedModel],
                       strict: bool) -> dict[int, LoadedModel]:
        """The versions of `entries` this engine can serve (those `served` with the same entry kept as they are);
        one it cannot (UnsupportedModel) is left out, logged and kept in `refused`, or, `strict`, raised."""
        loaded = {}
        for version, entry in sorted(entries.items()):
            if version in served and served[version].entry == entry:
                loaded[version] = served[version]
                continue
            try:
                loaded[version] = LoadedModel(entry, self._runner_id(entry))
            except UnsupportedModel as e:
                if strict:
                    raise
                self.refused[name, version] = (entry, e.detail)
                log.warning("model %s: version %s not loaded: %s", name, version, e.detail)
        return loaded

    def _runner_id(self, entry: ModelEntry) -> str:
        """How the runner knows a version: by its model's name for the version it started with (its workers load
        those at once), else by the version's directory and manifest digest (workers.version_id), loaded on first
        use: a version whose files were replaced is another id, so it never runs the runtimes of the old files."""
        started_with = entry.name in self._named and self.store.entries[entry.name] == entry
        return entry.name if started_with else version_id(entry.directory, entry.manifest)

    def unload_model(self, name: str) -> None:
        """Stop serving the model: new requests get UnknownModel; requests in flight finish (they hold it, and its
        runtimes stay until they are past their deadline: _retire). Call it on the event loop."""
        self.model(name)
        self._retire(self.versions[name].values())
        del self.models[name], self.versions[name]
        self.unloaded.add(name)
        self.forget_retired()
        log.info("model %s: unloaded", name)

    def _retire(self, models) -> None:
        """Mark versions no longer served (unloaded, or replaced by a load) to be forgotten once every request that
        began on them is past its deadline (twice the model's timeout_ms from now): until then they finish on the
        runtimes they started on, never reloading (and re-verifying) a version that is gone."""
        for m in models:
            due = time.monotonic() + 2 * self._batching(m).timeout_ms / 1000
            self._retired[m.runner_id] = max(self._retired.get(m.runner_id, 0.0), due)

    def forget_retired(self) -> None:
        """Free the schedulers and the runner's runtimes of the retired versions that are due (_retire), so that
        memory does not grow with every version ever served: at each load and unload, and when the next retired
        version is due (_arm_forget_timer). On the event loop: the schedulers are its."""
        served, now = self._served_ids(), time.monotonic()
        retired = {runner_id for runner_id, due in self._retired.items() if due <= now or runner_id in served}
        self._retired = {runner_id: due for runner_id, due in self._retired.items() if runner_id not in retired}
        retired -= served  # served again (an unloaded model loaded back): nothing to free
        self._named -= retired  # a worker started from now on does not load them: known by version_id from now on
        for key in [key for key in self._batchers if key[0] in retired]:
            del self._batchers[key]
        for runner_id in retired:
            self.runner.forget(runner_id)
        self._arm_forget_timer(now)

    def _arm_forget_timer(self, now: float) -> None:
        """Call forget_retired when the next retired version is due, so that it is freed then, with no load, unload
        or poll to wait for (on the event loop; outside one, as in a synchronous test, the next of those frees it)."""
        if self._forget_timer is not None:
            self._forget_timer.cancel()
            self._forget_timer = None
        if self._stopped:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._retired:
            self._forget_timer = loop.call_later(max(0.0, min(self._retired.values()) - now), self.forget_retired)

    def _served_ids(self) -> set[str]:
        return {m.runner_id for versions in self.versions.values() for m in versions.values()}

    def repository_index(self, ready: bool) -> list[dict]:
        """Every version of every V2 model ("<model>.<function>") in the store, Triton's way: name, version, state
        READY or UNAVAILABLE, and the reason (a version that fails its checks: under each V2 name of its model's
        good versions, or the model's name when none is good). `ready`: whether the server is (a served version is
        UNAVAILABLE while it is not)."""
        index = []
        for name in self.store.model_names():
            good, bad = self.store.scan_model(name)
            served = self.versions.get(name, {})
            v2_names = sorted({f"{name}.{function}" for entry in good.values()
                               for function in entry.manifest["functions"]}) or [name]
            for version, entry in sorted(good.items()):
                reason = ("" if ready else "the engine is not ready") if version in served else \
                    "unloaded" if name in self.unloaded else self._refused_reason(name, version, entry) or \
                    "not loaded; load the model to serve it"
                index += [{"name": f"{name}.{function}", "version": str(version),
                           "state": "UNAVAILABLE" if reason else "READY", "reason": reason}
                          for function in entry.manifest["functions"]]
            index += [{"name": v2_name, "version": b.version, "state": "UNAVAILABLE", "reason": b.reason}
                      for b in bad for v2_name in v2_names]
        return index

    def _refused_reason(self, name: str, version: int, entry: ModelEntry) -> str | None:
        """Why this entry of a good version is not served, if this engine refused it (UnsupportedModel)."""
        refused = self.refused.get((name, version))
        return refused[1] if refused is not None and refused[0] == entry else None

    async def _poll_store(self, every_s: float) -> None:
        """Load every model whose directory holds a version newer than the one served (GENSERVE_STORE_POLL_S)."""
        while True:
            await asyncio.sleep(every_s)
            for name in self.store.model_names():
                if name not in self.unloaded:
                    await self._poll_model(name)

    async def _poll_model(self, name: str) -> None:
        """Load the model if its directory holds a new version, hashing its files off the event loop. A version it
        refused (logged once, at that load) is not tried again until its directory changes; no error ends the poll."""
        try:
            good, bad = await asyncio.to_thread(self.store.scan_model, name)
            if name in self.unloaded:  # an admin unloaded it while the files were hashed
                return
            latest = self.models[name].version if name in self.models else -1
            if any(v > latest and self._refused_reason(name, v, entry) is None for v, entry in good.items()):
                self.load_model(name, (good, bad))
        except (OSError, EngineError) as e:  # a directory being written or removed: the next poll sees it whole
            log.warning("store poll: model %s: %s", name, e)
        except Exception:
            log.exception("store poll: model %s", name)

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
                self._batchers[key] = DynamicBatcher(run, self._batching(m), observer,
                                                     self._batch_values(m, function))
        return self._batchers[key]

    def _forget_idle_lengths(self) -> None:
        """Drop the idle schedulers of past sequence lengths once there are many (memory stays bounded over
        inputs of ever new lengths; a busy one is kept, and one is made again when its length comes back)."""
        by_length = [key for key in self._batchers if key[2] is not None]
        if len(by_length) >= MAX_LENGTH_SCHEDULERS:
            for key in by_length:
                if self._batchers[key].idle():
                    del self._batchers[key]

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

    def max_rows(self, name: str) -> int:
        """The rows one V2 request may hold: the model's queue (max_queue_size, or its setting), so that a request
        is never run in parts (as Triton refuses a batch over the model's max batch size)."""
        return self._batching(self.model(name)).max_queue_size

    def _check_rows(self, m: LoadedModel, rows: int) -> None:
        """A sequence's rows (inputs x n) run together, so they must fit the scheduler's queue at once."""
        most = self._batching(m).max_queue_size
        if rows > most:
            raise InvalidInput(f"n: inputs x n is {rows} rows, over the {most} that run together; send fewer "
                               "inputs or a smaller n per request", field="n")

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
            if tensor_name in m.input_levels:
                check_levels(np.asarray(value), None, m.input_levels[tensor_name], tensor_name)
            if tensor_name in m.input_ranges:
                check_range(np.asarray(value), *m.input_ranges[tensor_name], tensor_name)
        if m.scores_values and np.ndim(inputs.get("x")) == 2:  # x [rows, values]: held to the score's limits
            rows, length = np.shape(inputs["x"])
            check_sequence_work([length] * rows, [1] * rows, self._score_limits(m, m.capabilities["score"]),
                                m.manifest["name"], "x", "x")
        unknown = set(inputs) - {t["name"] for t in spec["inputs"]}
        if unknown:
            raise InvalidInput(f"inputs: {function} has no inputs {sorted(unknown)}", field=sorted(unknown)[0])
        outputs = await self._batcher(m, function).submit(inputs)
        if function == m.capabilities.get("decode", {}).get("function"):
            check_decoding(outputs["mean"], m.data["levels"])
        if "levels" in m.data:
            check_output_levels(outputs, m.data["levels"], inputs)
        return outputs
