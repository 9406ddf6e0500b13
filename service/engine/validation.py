"""Input checks shared by the engine's operations: each failure is an InvalidInput naming the field."""

import reprlib

import numpy as np

from service.engine.errors import InvalidInput

MAX_DIMS = 32  # dimensions of a tensor on the wire (numpy itself stops at 64)
# The request limits every protocol applies (REST through its schemas, gRPC in its adapter): one definition.
ANOMALY_METHOD_MAX = 128  # characters of a detector's name (a combination of all ten has 126; shipped: at most 88)
MAX_SEED = 2**63 - 1
MAX_INT32 = 2**31 - 1  # the gRPC API's counts are int32: REST takes no more, so the two agree
MAX_TEMPERATURE = 10.0
# The least temperature: logits / temperature stay finite float32 numbers for logits up to 1e8 (at 1e-38 a charrnn
# emits newlines only, at 1e-300, float32's 0, a wavenet full scale); 1e-30 samples greedily
MIN_TEMPERATURE = 1e-30
MAX_SECONDS = 86400.0  # audio to generate or continue per request


def check_levels(x: np.ndarray, shape: list[int] | None, levels: int, field: str) -> np.ndarray:
    """x [B, *shape] integers in 0..levels-1, or InvalidInput naming the field (shape None: any). x may be a list
    of B sequences (audio, text inputs are decoded as such), which must then all have the shape."""
    if isinstance(x, list):
        for b, xi in enumerate(x):
            if shape is not None and list(np.shape(xi)) != shape:
                raise InvalidInput(f"{field}[{b}]: each input must have shape {shape}, got {list(np.shape(xi))}",
                                   field=f"{field}[{b}]")
        x = np.stack(x) if x else np.zeros([0, *(shape or [])], np.int64)
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


def check_shape(shape: list[int], field: str) -> list[int]:
    """A wire tensor's shape: at most MAX_DIMS dimensions, each >= 1 (an empty tensor asks for no work)."""
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"{field}: {len(shape)} dimensions; at most {MAX_DIMS}", field=field)
    shape = [int(d) for d in shape]
    if any(d < 1 for d in shape):
        raise InvalidInput(f"{field}: dimensions must be >= 1, got {shape}", field=field)
    return shape


def check_finite(x: np.ndarray, field: str) -> np.ndarray:
    """x itself, or InvalidInput naming the field when a float value is NaN or infinite."""
    if np.asarray(x).dtype.kind in "fc" and not np.isfinite(x).all():
        raise InvalidInput(f"{field}: values must be finite numbers (no NaN or infinity)", field=field)
    return x


def check_range(x: np.ndarray, low: float, high: float, field: str) -> np.ndarray:
    """x itself, or InvalidInput naming the field when a value lies outside [low, high] (or is NaN): a declared
    range, as far as it may extrapolate, or a temperature's; a model fed far outside them answers NaN or
    saturates."""
    if not ((x >= low) & (x <= high)).all():
        raise InvalidInput(f"{field}: values must be in [{low:g}, {high:g}]", field=field)
    return x


def check_finite_outputs(outputs: dict[str, np.ndarray], field: str) -> None:
    """InvalidInput naming the input `field` when finite inputs gave a NaN or infinite output (a decoder fed
    latents far outside its prior): no answer ever carries NaN or infinity."""
    for name, value in outputs.items():
        if np.asarray(value).dtype.kind in "fc" and not np.isfinite(value).all():
            raise InvalidInput(f"{field}: the model's output {name!r} is not finite for these values (NaN or "
                               f"infinity); give values nearer the model's range", field=field)


DATA_OUTPUTS = ("x", "next_x")  # the naming conventions' outputs that hold data levels (procedures.py)


def check_output_levels(outputs: dict[str, np.ndarray], levels: int, inputs: dict[str, np.ndarray]) -> None:
    """InvalidInput naming the float inputs (float_inputs) when an integer data output (DATA_OUTPUTS) lies outside
    0..levels-1: inputs the model cannot draw from (noise of 1e38, whose floats overflow before the model casts them
    to levels, which then come out as int64's least value); no answer ever carries a level the data cannot take."""
    for name in DATA_OUTPUTS:
        value = outputs.get(name)
        if value is not None and value.dtype.kind in "iu" and value.size and (value.min() < 0 or value.max() >= levels):
            field = float_inputs(inputs)
            raise InvalidInput(f"{field}: the model's output {name!r} is not in its levels 0..{levels - 1} for these "
                               "values; give values nearer the model's range", field=field)


def float_inputs(inputs: dict[str, np.ndarray]) -> str:
    """The inputs to name when outputs are not finite: the float ones (latents, noise), else all of them."""
    return ", ".join(name for name, x in inputs.items() if x.dtype.kind == "f") or "inputs"


def check_sequence_work(lengths: list[int], repeats: list[int], limits: tuple[int, int], model: str, field: str,
                        input_field: str, why: str = "") -> None:
    """Refuse, before any work, sequences to score of `lengths` values, each run `repeats` times (a row each), when
    one is longer than the model's limits (values per input, rows x values per request) allow per input, naming
    `input_field` formatted with its position ("inputs[{}]"), or when they hold more rows x values in all than
    allowed per request, naming `field` (`why` says why an input runs more than once)."""
    per_input, per_request = limits
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] > per_input:
        name = input_field.format(longest)
        raise InvalidInput(f"{name}: {lengths[longest]} values, over the limit of {per_input} per input of model "
                           f"{model!r}", field=name)
    values = sum(n * r for n, r in zip(lengths, repeats, strict=True))
    if values > per_request:
        raise InvalidInput(f"{field}: {len(lengths)} inputs of {sum(lengths)} values are {values} rows x values{why}, "
                           f"over the limit of {per_request} per request of model {model!r}; send fewer, or in parts",
                           field=field)


_BRIEF = reprlib.Repr()  # Python 3.11 takes its limits as attributes
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlist, _BRIEF.maxdict = 3, 60, 60, 8, 8


def brief(value: object) -> str:
    """A client's value as a refusal quotes it: its repr, bounded in depth and length (a list nested 1,000 deep
    parses as JSON, but its full repr overflows the stack, and a megabyte string would be echoed whole)."""
    return _BRIEF.repr(value)


def check_no_mask(kind: str, given: bool, field: str) -> None:
    """Refuse, naming the field, a mask given to a sequence model (text, audio): it continues each input, so no
    value of an input is missing."""
    if given:
        raise InvalidInput(f"{field}: {kind} models continue each input and take no mask", field=field)


def check_stream_options(prefix: str, steps: bool, controls: bool, actions: bool) -> None:
    """Refuse, naming the field (`prefix` + its name), what a one-shot sample takes and a stream cannot: a stream
    serves an autoregressive model, which runs no Markov chain and takes no controls or actions."""
    for given, name, why in ((steps, "steps", "runs no Markov chain"),
                             (controls, "controls", "takes no controls (a model with them draws each sample at once)"),
                             (actions, "actions", "takes no actions (a state-space model's roll-outs)")):
        if given:
            raise InvalidInput(f"{prefix}{name}: a stream {why}; use sample", field=f"{prefix}{name}")
