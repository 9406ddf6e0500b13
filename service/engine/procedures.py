"""Generic procedures over a model's named tensor functions.

The service knows algorithms, not architectures. Each procedure reads what it
needs from the capability entry of the manifest. Conventions for the names of
an autoregressive step function's tensors:
  inputs  x_prev, <state...>, noise, temperature, [label], [top_k], [observed, mask]
  outputs x, next_<state...>
Randomness enters only through `noise`. Each batch row has its own generator,
so a row's output depends on its seed alone, never on what else is in the batch.
"""

import numpy as np

from service.engine.latent import draw
from service.engine.runtimes import DTYPES
from service.engine.scheduler import Sequence


def row_generators(seed: int, n: int) -> list[np.random.Generator]:
    """One independent generator per sample: sample i of a seed is the same whatever n is."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def uniform_noise(rngs: list[np.random.Generator], shape: list[int]) -> np.ndarray:
    """[len(rngs), *shape] float32 uniform in [0, 1), row r from rngs[r]."""
    return np.stack([rng.random(shape, dtype=np.float32) for rng in rngs])


def autoregressive(
    capability: dict,
    rngs: list[np.random.Generator],
    temperature: np.ndarray,
    steps: int | None = None,
    per_row: dict[str, np.ndarray] | None = None,
    observed: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    per_step: dict[str, np.ndarray] | None = None,
) -> Sequence:
    """A sequence of `steps` calls of the step function (default: the capability's), for a ContinuousBatcher.

    rngs, temperature and each per_row input (label, top_k) have one entry per row. Step t's output is
    [B, *step_shape] int64. observed and mask hold [B, steps * prod(step_shape)] values in generation order
    (any shape with that many values per row); where mask is 1 the output takes the observed value
    (completion, a prompt), clamped inside the step so that later values condition on it. Each per_step input
    [B, steps] gives step t its column t (a chord per bar: service.engine.step_controls).
    """
    rows, step_shape = len(rngs), capability["step_shape"]
    steps = capability["steps"] if steps is None else steps
    noise_shape = capability.get("noise_shape", step_shape)  # more uniforms per value for some distributions
    layout = [rows, steps, *step_shape]
    # a step where nothing is observed, one for every step: not [rows, steps, ...] zeros (20 s of audio: 2.5 MB
    # a row, held as long as the request)
    nothing = np.zeros([rows, *step_shape], np.int64)
    observed = None if observed is None else observed.reshape(layout)
    mask = None if mask is None else mask.reshape(layout)
    per_row = per_row or {}

    def feeds(t: int) -> dict[str, np.ndarray]:
        return {"noise": uniform_noise(rngs, noise_shape), "temperature": temperature,
                "observed": nothing if observed is None else observed[:, t],
                "mask": nothing if mask is None else mask[:, t], **per_row,
                **{name: values[:, t] for name, values in (per_step or {}).items()}}

    state = {"x_prev": np.full([rows, *step_shape], capability.get("x_prev_init", 0), np.int64)}
    for name, spec in capability["state"].items():
        state[name] = np.zeros([rows, *spec["shape"]], DTYPES[spec["dtype"]])
    return Sequence(feeds, state, steps)


def markov_chain(capability: dict, rngs: list[np.random.Generator], x: np.ndarray, observed: np.ndarray,
                 mask: np.ndarray, steps: int) -> Sequence:
    """`steps` transitions of the capability's chain from x [rows, *shape], for a ContinuousBatcher: the step
    function takes x, its noise, observed and mask (where mask is 1 it returns observed) and gives next_x."""

    def feeds(t: int) -> dict[str, np.ndarray]:
        return {**draw(capability["noise"], rngs), "observed": observed, "mask": mask}

    return Sequence(feeds, {"x": x}, steps)


def state_outputs(capability: dict) -> tuple[dict[str, str], str]:
    """(which output replaces each carried input after a step, the output each step emits) of an iterative
    procedure: autoregressive x_prev <- x, s <- next_s (emits x); Markov chain x <- next_x (emits next_x)."""
    if capability["procedure"] == "markov_chain":
        return {"x": "next_x"}, "next_x"
    return {"x_prev": "x", **{name: f"next_{name}" for name in capability["state"]}}, "x"
