"""Generic procedures over a model's named tensor functions.

The service knows algorithms, not architectures. Each procedure reads what it
needs from the capability entry of the manifest. Conventions for the names of
an autoregressive step function's tensors:
  inputs  x_prev, <state...>, noise, temperature, [label], [observed, mask]
  outputs x, next_<state...>
Randomness enters only through `noise`. Each batch row has its own generator,
so a row's output depends on its seed alone, never on what else is in the batch.
"""

from collections.abc import Iterator

import numpy as np

from service.engine.runtimes import DTYPES, TensorFunction


def row_generators(seed: int, n: int) -> list[np.random.Generator]:
    """One independent generator per sample: sample i of a seed is the same whatever n is."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def uniform_noise(rngs: list[np.random.Generator], shape: list[int]) -> np.ndarray:
    """[len(rngs), *shape] float32 uniform in [0, 1), row r from rngs[r]."""
    return np.stack([rng.random(shape, dtype=np.float32) for rng in rngs])


def direct(function: TensorFunction, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """One call: exact log-prob, ELBO, encode, decode, critic."""
    return function(**inputs)


def autoregressive_steps(
    step: TensorFunction,
    capability: dict,
    data_shape: list[int],
    rngs: list[np.random.Generator],
    temperature: np.ndarray,
    label: np.ndarray | None = None,
    observed: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """Yield each of the `steps` outputs of `step`, [B, *step_shape] int64, as soon as it is computed.

    rngs and temperature have one entry per batch row. Where mask is 1, the
    output takes the observed value (completion); the function clamps it
    inside the step so later values condition on it.
    """
    batch, steps, step_shape = len(temperature), capability["steps"], capability["step_shape"]
    state = {name: np.zeros([batch, *spec["shape"]], DTYPES[spec["dtype"]])
             for name, spec in capability["state"].items()}
    observed = np.zeros([batch, *data_shape], np.int64) if observed is None else observed
    mask = np.zeros([batch, *data_shape], np.int64) if mask is None else mask
    observed = observed.reshape(batch, steps, *step_shape)
    mask = mask.reshape(batch, steps, *step_shape)
    x = np.zeros([batch, *step_shape], np.int64)
    for t in range(steps):
        feeds = {"x_prev": x, **state, "noise": uniform_noise(rngs, step_shape),
                 "temperature": temperature, "observed": observed[:, t], "mask": mask[:, t]}
        if label is not None:
            feeds["label"] = label
        out = step(**{name: feeds[name] for name in step.inputs})
        x = out["x"]
        state = {name: out[f"next_{name}"] for name in state}
        yield x
