"""The engine: validates requests against a model's manifest and runs its procedures.

The REST and gRPC adapters call only this class. Its schedulers batch the work and
hand each batch to a runner (service.engine.workers): the engine worker processes
when serving, or this process in tests and benchmarks.
"""

import asyncio
import math
from collections.abc import AsyncIterator

import numpy as np

from service.engine import procedures
from service.engine.errors import InvalidInput, MissingCapability, UnknownModel, UnsupportedModel
from service.engine.metrics import EngineMetrics
from service.engine.scheduler import BatchingConfig, ContinuousBatcher, DynamicBatcher
from service.engine.workers import InProcess, WorkerPool
from service.settings import Settings
from service.store import ModelEntry, ModelStore

SERVED_KINDS = ("image",)  # text (char-RNN) and audio need their codecs first


class LoadedModel:
    """A store entry's manifest, as the engine reads it (the functions themselves load in the runner)."""

    def __init__(self, entry: ModelEntry):
        self.entry = entry
        self.manifest = entry.manifest
        self.data = self.manifest["data"]
        if self.data["kind"] not in SERVED_KINDS:
            raise UnsupportedModel(f"model {entry.name!r}: {self.data['kind']} data is not served yet "
                                   f"(served: {', '.join(SERVED_KINDS)}); remove it from the store", field="model")
        self.shape = list(self.data["shape"])
        self.capabilities = self.manifest["capabilities"]

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


def check_levels(x: np.ndarray, shape: list[int] | None, levels: int, field: str) -> np.ndarray:
    """x [B, *shape] integers in 0..levels-1, or InvalidInput naming the field (shape None: any)."""
    if shape is not None and list(x.shape[1:]) != shape:
        raise InvalidInput(f"{field}: each input must have shape {shape}, got {list(x.shape[1:])}", field=field)
    if len(x) == 0:
        raise InvalidInput(f"{field}: give at least one input", field=field)
    if not np.issubdtype(x.dtype, np.integer) and not (np.isfinite(x).all() and (x == np.round(x)).all()):
        raise InvalidInput(f"{field}: values must be integers", field=field)
    if x.min() < 0 or x.max() >= levels:
        bad = int(np.argmax(((x < 0) | (x >= levels)).reshape(len(x), -1).any(axis=1)))
        raise InvalidInput(f"{field}[{bad}]: values must be integers in 0..{levels - 1}", field=f"{field}[{bad}]")
    return x.astype(np.int64)


def check_batch(inputs: dict[str, np.ndarray]) -> None:
    """Every input shares the batch axis (0): the batchers merge requests along it."""
    sizes = [(name, np.shape(array)[0]) for name, array in inputs.items() if np.ndim(array)]
    for name, rows in sizes[1:]:
        if rows != sizes[0][1]:
            raise InvalidInput(f"{name}: batch size (dim 0) is {rows}, but {sizes[0][0]}'s is {sizes[0][1]}",
                               field=name)


class Engine:
    def __init__(self, store: ModelStore, settings: Settings, metrics: EngineMetrics | None = None,
                 runner: InProcess | WorkerPool | None = None):
        """`runner` runs the model functions; by default this process loads and runs them itself."""
        self.settings = settings
        self.metrics = metrics if metrics is not None else EngineMetrics()  # its own registry by default
        self.models = {name: LoadedModel(entry) for name, entry in store.entries.items()}
        if runner is None:
            directories = {name: entry.directory for name, entry in store.entries.items()}
            runner = InProcess(directories, settings.runtime, settings.intra_op_threads)
        self.runner = runner
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batchers: dict[tuple[str, str], DynamicBatcher | ContinuousBatcher] = {}

    async def start(self) -> None:
        """Start the runner (worker processes load the models in the background: see ready())."""
        await self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()

    def ready(self) -> bool:
        """True when the models are loaded and a worker can run them."""
        return self.runner.ready()

    def model(self, name: str) -> LoadedModel:
        if name not in self.models:
            raise UnknownModel(f"unknown model {name!r}; known: {sorted(self.models)}", field="model")
        return self.models[name]

    def list_models(self) -> list[dict]:
        return [m.describe() for m in self.models.values()]

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

    def _batching(self, m: LoadedModel) -> BatchingConfig:
        """The manifest's batching knobs, with any set in settings taking precedence."""
        knobs = dict(m.manifest["batching"])
        for key in knobs:
            if getattr(self.settings, key) is not None:
                knobs[key] = getattr(self.settings, key)
        return BatchingConfig(**knobs)

    def _batcher(self, m: LoadedModel, function: str, capability: dict | None = None):
        """The model function's scheduler: continuous for a step function, dynamic for one-shot ones."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # schedulers belong to one event loop
            self._loop, self._batchers = loop, {}
        key = (m.manifest["name"], function)
        if key not in self._batchers:
            inputs = [tensor["name"] for tensor in m.manifest["functions"][function]["inputs"]]

            async def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return await self.runner.call(key[0], function, {name: feeds[name] for name in inputs})

            observer = self.metrics.observer(*key)
            if capability and capability["procedure"] == "autoregressive":
                outputs = procedures.autoregressive_state_outputs(capability)
                self._batchers[key] = ContinuousBatcher(run, outputs, self._batching(m), observer)
            else:
                self._batchers[key] = DynamicBatcher(run, self._batching(m), observer)
        return self._batchers[key]

    def _generate(self, m: LoadedModel, capability: str, seed: int, rows: int, temperature: float,
                  label: int | None, observed=None, mask=None) -> AsyncIterator[np.ndarray]:
        """Every step's output [rows, *step_shape], from the model's continuous batcher."""
        cap = m.capability(capability)
        if rows < 1:
            raise InvalidInput("n: must be at least 1", field="n")
        rngs = procedures.row_generators(seed, rows)
        labels = self._labels(m, label, rngs)
        sequence = procedures.autoregressive(cap, m.shape, rngs, np.full(rows, temperature, np.float32),
                                             label=labels, observed=observed, mask=mask)
        return self._batcher(m, cap["function"], cap).generate(sequence)

    async def sample_stream(self, name: str, n: int, seed: int, temperature: float,
                            label: int | None) -> AsyncIterator[np.ndarray]:
        """Yield every step's output [n, *step_shape] as it is generated (an image row, an audio chunk)."""
        async for value in self._generate(self.model(name), "sample", seed, n, temperature, label):
            yield value

    async def sample(self, name: str, n: int, seed: int, temperature: float, label: int | None) -> np.ndarray:
        """[n, *shape] int64 samples; sample i depends only on (seed, i), whatever shares its batch."""
        m = self.model(name)
        values = [v async for v in self._generate(m, "sample", seed, n, temperature, label)]
        return np.stack(values, axis=1).reshape(n, *m.shape)

    async def complete(self, name: str, x: np.ndarray, mask: np.ndarray, n: int, seed: int,
                       temperature: float, label: int | None = None) -> np.ndarray:
        """x, mask [B, *shape] (mask 1 = observed) -> [B, n, *shape]; observed values are kept exactly."""
        m = self.model(name)
        m.capability("complete")
        x = check_levels(x, m.shape, m.data["levels"], "inputs")
        if mask.ndim == len(m.shape):  # one mask for every input
            mask = np.broadcast_to(mask, x.shape)
        mask = check_levels(mask, m.shape, 2, "mask")
        if len(mask) != len(x):
            raise InvalidInput(f"mask: give one mask, or one per input ({len(x)})", field="mask")
        rows_x, rows_mask = np.repeat(x, n, axis=0), np.repeat(mask, n, axis=0)
        steps = self._generate(m, "complete", seed, len(rows_x), temperature, label, rows_x, rows_mask)
        values = [v async for v in steps]
        return np.stack(values, axis=1).reshape(len(x), n, *m.shape)

    async def score(self, name: str, x: np.ndarray, labels: list[int | None] | None = None) -> list[dict]:
        """x [B, *shape] -> per input: log-likelihood (nats), bits/dim, method and anomaly flags."""
        m = self.model(name)
        cap = m.capability("score")
        x = check_levels(x, m.shape, m.data["levels"], "inputs")
        labels = [None] * len(x) if labels is None else labels
        if len(labels) != len(x):
            raise InvalidInput(f"labels: give one per input ({len(x)}), or none", field="labels")
        log_p = await self._log_prob(m, cap, x, labels)
        return [self._score_result(m, cap, float(lp)) for lp in log_p]

    async def _log_prob(self, m: LoadedModel, cap: dict, x: np.ndarray, labels: list[int | None]) -> np.ndarray:
        given = np.array([lab is not None for lab in labels])
        log_p = np.empty(len(x))
        if (~given).any():
            out = await self._batcher(m, cap["function"]).submit({"x": x[~given]})
            log_p[~given] = next(iter(out.values()))
        if given.any():
            if "conditional_function" not in cap:
                raise InvalidInput(f"model {m.manifest['name']!r} scores without labels", field="labels")
            label = np.array([lab for lab in labels if lab is not None], np.int64)
            if label.min() < 0 or label.max() >= len(m.data.get("classes", [])):
                raise InvalidInput(f"labels must be in 0..{len(m.data.get('classes', [])) - 1}", field="labels")
            out = await self._batcher(m, cap["conditional_function"]).submit({"x": x[given], "label": label})
            log_p[given] = next(iter(out.values()))
        return log_p

    def _score_result(self, m: LoadedModel, cap: dict, log_p: float) -> dict:
        calibration = m.manifest["calibration"]
        nll = -log_p
        percentile = float(np.interp(nll, calibration["values"], calibration["quantiles"])) * 100.0
        return {
            "log_likelihood_nats": log_p,
            "bits_per_dim": nll / (math.prod(m.shape) * math.log(2)),
            "method": cap.get("method", "exact"),
            "anomaly": {"score": nll, "percentile": percentile,
                        "is_anomaly": percentile >= calibration["threshold_quantile"] * 100.0},
        }

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
        """How many integer values an input of the naming conventions may take (None: not checked)."""
        return {"x": m.data.get("levels"), "observed": m.data.get("levels"), "x_prev": m.data.get("levels"),
                "mask": 2, "label": len(m.data.get("classes", [])) or None}.get(tensor)
