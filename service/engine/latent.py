"""Procedures of latent-variable models (docs/latent-variable-models.md): ancestral sampling, sample controls,
refinement rules, and importance-weighted bounds (their log-weights, which run in the engine worker:
service.engine.worker_procedures, and the estimate with its standard error).

Each procedure calls the model's named functions through `call(function, feeds) -> outputs`, which batches
them with other requests; it knows the capability entries, never the architecture. Every random number comes
from the row's own generator, so a row's result depends on its seed alone.
"""

import math
from collections.abc import Awaitable, Callable

import numpy as np

from service.engine.errors import InvalidInput

Call = Callable[[str, dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]
CHUNK_ROWS = 128  # importance rows per call: memory stays bounded for any k
MAX_CLASS_NAME = 64  # characters in a categorical control's class name (REST's bound too)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def draw(noise: dict, rngs: list[np.random.Generator], count: int | None = None) -> dict[str, np.ndarray]:
    """Each noise input named by a capability, [len(rngs), (count,) *shape] float32, row r from rngs[r]."""
    out = {}
    for name, spec in noise.items():
        shape = ([] if count is None else [count]) + list(spec["shape"])
        if spec["distribution"] == "normal":
            out[name] = np.stack([rng.standard_normal(shape, dtype=np.float32) for rng in rngs])
        else:
            out[name] = np.stack([rng.random(shape, dtype=np.float32) for rng in rngs])
    return out


def extrapolation_range(spec: dict) -> tuple[float, float]:
    """The values a continuous control may be given: its [low, high] widened by half its width at each end, twice
    the range about its centre, as InfoGAN's paper varies codes trained on [-1, 1] over [-2, 2]; beyond, a model
    answers NaN or saturates."""
    half = (spec["high"] - spec["low"]) / 2
    return spec["low"] - half, spec["high"] + half


def control_values(spec: dict, given: float | list[float] | str | None, rngs: list[np.random.Generator],
                   field: str) -> np.ndarray:
    """One sample control for every row: the given value, or row r's draw from rngs[r].

    categorical ({"classes": C}, optional "names"): int64 [rows] in 0..C-1, given as the index or the name; uniform
    ({"low", "high", "shape"}): float32 [rows, *shape] (a given value may lie outside [low, high], to extrapolate:
    see extrapolation_range).
    """
    if spec["kind"] == "categorical":
        classes = spec["classes"]
        if given is None:
            return np.array([rng.integers(classes) for rng in rngs], np.int64)
        if isinstance(given, str):
            given = class_index(spec, given, field)
        whole = isinstance(given, int) or isinstance(given, float) and given.is_integer()  # NaN, inf: not whole
        if not whole or not 0 <= given < classes:
            raise InvalidInput(f"{field}: must be an integer in 0..{classes - 1}", field=field)
        return np.full(len(rngs), int(given), np.int64)
    shape = list(spec["shape"])
    if given is None:
        return np.stack([rng.uniform(spec["low"], spec["high"], shape).astype(np.float32) for rng in rngs])
    refusal = InvalidInput(f"{field}: must be {math.prod(shape)} finite float32 numbers", field=field)
    if isinstance(given, str):  # numpy would read "0.5" as a number
        raise refusal
    try:
        value = np.asarray(given, np.float64)
    except (TypeError, ValueError, OverflowError):
        raise refusal from None
    if value.size != math.prod(shape) or not (np.abs(value) <= FLOAT32_MAX).all():  # NaN compares False
        raise refusal
    return np.broadcast_to(value.astype(np.float32).reshape(shape), (len(rngs), *shape)).copy()


def class_index(spec: dict, name: str, field: str) -> int:
    """A categorical control's class given by its name (the control's `names`)."""
    names, indices = spec.get("names", []), f"an integer in 0..{spec['classes'] - 1}"
    if len(name) > MAX_CLASS_NAME:
        raise InvalidInput(f"{field}: a class name has at most {MAX_CLASS_NAME} characters, got {len(name)}",
                           field=field)
    if not names:
        raise InvalidInput(f"{field}: this control's classes have no names; give {indices}", field=field)
    if name not in names:
        raise InvalidInput(f"{field}: unknown class {name!r}; give one of {names} or {indices}", field=field)
    return names.index(name)


async def ancestral(call: Call, cap: dict, rngs: list[np.random.Generator], temperature: float,
                    conditions: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """x ~ p(x | z, conditions), z ~ the prior scaled by temperature: [rows, *shape] int64. `conditions`: per-row
    inputs besides noise (a label, an InfoGAN's codes)."""
    feeds = {**draw(cap["noise"], rngs), "temperature": np.full(len(rngs), temperature, np.float32),
             **(conditions or {})}
    return (await call(cap["function"], feeds))["x"]


def refine_updates(cap: dict) -> dict[str, dict]:
    """An encode capability's refinement rules, name -> {function, noise}: "gradient" is its `refine` entry
    (gradient ascent on the ELBO), others are listed in refine.updates (a learned update); none without refine."""
    refine = cap.get("refine")
    return {} if refine is None else {"gradient": refine, **refine.get("updates", {})}


async def log_weights(call: Call, cap: dict, x: np.ndarray, rngs: list[np.random.Generator], k: int,
                      posterior: dict[str, np.ndarray]) -> np.ndarray:
    """k log-weights per input, [B, k] float64 ([B, k, bounds] for a function that gives several per row, as a
    hierarchy's does), sent CHUNK_ROWS rows at a time.

    Input b's k noise draws come from rngs[b]; posterior holds per-input tensors (mean, std) for the function.
    """
    noise = draw(cap["noise"], rngs, count=k)  # [B, k, *shape] each
    rows = np.arange(len(x) * k)
    out = []
    for chunk in np.array_split(rows, math.ceil(len(rows) / CHUNK_ROWS)):
        b, i = chunk // k, chunk % k
        feeds = {"x": x[b], **{n: v[b] for n, v in posterior.items()}, **{n: v[b, i] for n, v in noise.items()}}
        out.append((await call(cap["function"], feeds))["log_weight"])
    out = np.concatenate(out).astype(np.float64)
    return out.reshape(len(x), k, *out.shape[1:])


def bound(log_w: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray | None]:
    """[B, k] log-weights -> (estimate [B], its standard error [B], None for k = 1).

    elbo: the mean log-weight, stderr std / sqrt(k). iwae: log mean w, with the delta-method stderr
    std(w) / (sqrt(k) mean(w)) (Burda et al. 2016's bound; ELBO <= E IWAE_k <= log p(x)).
    """
    k = log_w.shape[1]
    if method == "elbo":
        estimate = log_w.mean(axis=1)
        spread = log_w.std(axis=1, ddof=1) if k > 1 else None
    else:
        estimate = np.logaddexp.reduce(log_w, axis=1) - math.log(k)
        spread = np.exp(log_w - estimate[:, None]).std(axis=1, ddof=1) if k > 1 else None
    return estimate, None if spread is None else spread / math.sqrt(k)
