"""How many steps an autoregressive request runs, and its per-step controls, where the model lets it choose.

An autoregressive sample capability with `max_steps` lets the request set its number of steps, 1..max_steps
(default: `steps`); for music data each step is a bar, and the request field is `bars`. `step_controls` names
inputs of the step function that take one value per step, by name out of a list ({"chords": {"names": [...],
"default": "N"}}: a chord per bar); a request gives a name per step, or none (every step takes the default).
Step t of row r then gets the index of its name at input <control>[r].
"""

import numpy as np

from service.engine.errors import InvalidInput


def plan(model: str, cap: dict, rows: int, bars: int | None,
         controls: dict[str, list[str]] | None) -> tuple[int | None, dict[str, np.ndarray]]:
    """(steps or None for the capability's fixed number, {input: [rows, steps] int64 indices})."""
    controls = {name: values for name, values in (controls or {}).items() if values}  # [] (gRPC's unset): none
    specs = cap.get("step_controls", {})
    if cap["procedure"] != "autoregressive" or "max_steps" not in cap:
        for field, value in (("bars", bars), *controls.items()):
            if value is not None:
                raise InvalidInput(f"{field}: model {model!r} generates a fixed number of steps", field=field)
        return None, {}
    for name in controls:
        if name not in specs:
            raise InvalidInput(f"{name}: model {model!r} takes the per-step controls {sorted(specs)}", field=name)
    given = next(iter(controls.items()), None)  # without bars, the first control's length sets the steps
    field = "bars" if bars is not None or given is None else given[0]  # the request field that set the steps
    steps = bars if bars is not None else cap["steps"] if given is None else len(given[1])
    if not 1 <= steps <= cap["max_steps"]:
        raise InvalidInput(f"{field}: model {model!r} generates 1..{cap['max_steps']} bars, not {steps}", field=field)
    most = cap.get("max_row_steps")
    if most is not None and rows * steps > most:
        raise InvalidInput(f"{field}: samples x bars is {rows} x {steps}, over model {model!r}'s limit of {most} per "
                           "request; send fewer, or in parts", field=field)
    return steps, {name: _indices(name, spec, controls.get(name), steps, rows) for name, spec in specs.items()}


def _indices(name: str, spec: dict, values: list[str] | None, steps: int, rows: int) -> np.ndarray:
    """One control's names (or its default at every step) -> [rows, steps] int64 indices into spec["names"]."""
    names = spec["names"]
    values = [spec["default"]] * steps if values is None else values
    if len(values) != steps:
        raise InvalidInput(f"{name}: {len(values)} given for {steps} bars; give one per bar", field=name)
    for i, value in enumerate(values):
        if value not in names:
            raise InvalidInput(f"{name}[{i}]: unknown {value!r}; known: {', '.join(names)}", field=f"{name}[{i}]")
    return np.broadcast_to(np.array([names.index(v) for v in values], np.int64), (rows, steps)).copy()
