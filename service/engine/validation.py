"""Input checks shared by the engine's operations: each failure is an InvalidInput naming the field."""

import numpy as np

from service.engine.errors import InvalidInput


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


def check_sequence(x: np.ndarray, levels: int, field: str) -> np.ndarray:
    """A non-empty 1-D sequence of integers in 0..levels-1 -> int64, or InvalidInput naming the field and position."""
    x = np.asarray(x)
    if x.ndim != 1 or len(x) == 0:
        raise InvalidInput(f"{field}: give a non-empty sequence", field=field)
    if not np.issubdtype(x.dtype, np.integer):
        raise InvalidInput(f"{field}: values must be integers", field=field)
    bad = np.flatnonzero((x < 0) | (x >= levels))
    if len(bad):
        raise InvalidInput(f"{field}: value {x[bad[0]]} at position {bad[0]} is not in 0..{levels - 1}", field=field)
    return x.astype(np.int64)


def check_batch(inputs: dict[str, np.ndarray]) -> None:
    """Every input shares the batch axis (0): the batchers merge requests along it."""
    sizes = [(name, np.shape(array)[0]) for name, array in inputs.items() if np.ndim(array)]
    for name, rows in sizes[1:]:
        if rows != sizes[0][1]:
            raise InvalidInput(f"{name}: batch size (dim 0) is {rows}, but {sizes[0][0]}'s is {sizes[0][1]}",
                               field=name)
