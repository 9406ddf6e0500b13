"""The engine's generation: sample, complete and stream, by the procedure the capability names.

- `autoregressive`: a step function on the model's ContinuousBatcher (characters, pixels, audio, bars), with
  prompts, lengths, top-k, per-step controls (service.engine.step_controls) and completion of masked values;
- `ancestral`: one call from the prior's noise, with labels, sample controls and caption prompts
  (service.engine.captions);
- `markov_chain`: a chain run in the engine worker (service.engine.worker_procedures);
- `direct`: a completion by one function from a noise start (a GAN's latent optimization).
A state-space model's roll-outs are service.engine.predict's.

A mixin of service.engine.engine.Engine, which gives it `model`, `settings`, `metrics`, `_batcher`, `_caller`,
`_in_worker` and `_check_rows`, and of the other mixins' `rollouts` and Markov-chain checks.
"""

from __future__ import annotations

import asyncio
import math
import time
import traceback
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from service.engine import captions, latent, procedures, worker_procedures
from service.engine.errors import InvalidInput, MissingCapability
from service.engine.step_controls import plan as plan_steps
from service.engine.validation import check_levels, check_no_mask, check_range, check_sequence

if TYPE_CHECKING:  # engine.py imports this module
    from service.engine.engine import LoadedModel

T = TypeVar("T")

MAX_CONTROL_NAME = 64  # characters in a control name (capabilities.sample.controls)

# The options each procedure takes, by capability: any other option a request gives is refused, naming it
# (`refuse_untaken`). What depends on the model besides its procedure (a label without classes, top_k without a top_k
# input, a length for an image) is checked where the option is used.
TAKES = {
    ("sample", "autoregressive"): {"temperature", "label", "length", "top_k", "prompt", "bars", "step_controls"},
    ("sample", "ancestral"): {"temperature", "label", "controls", "prompt"},
    ("sample", "markov_chain"): {"steps"},
    ("complete", "autoregressive"): {"temperature", "label", "length", "top_k"},
    ("complete", "markov_chain"): {"steps"},
    ("complete", "direct"): set(),
}
HOW = {"autoregressive": "step by step", "ancestral": "in one call from its prior", "markov_chain": "by a Markov chain",
       "direct": "by optimization"}
VERB = {"sample": "samples", "complete": "completes"}


def _given(field: str, value: Any) -> bool:
    """Whether a request gave the option: a temperature other than 1 (its default), step controls with a value (REST's
    "chords": [] is none), anything else not None and not {}."""
    if field == "temperature":
        return value != 1.0
    if field == "step_controls":
        return any(len(values) for values in (value or {}).values())
    return value is not None and value != {}


def refuse_untaken(name: str, capability: str, procedure: str, **options: Any) -> None:
    """Refuse, naming it, the first option given that `procedure` does not take for `capability` (TAKES)."""
    takes = TAKES.get((capability, procedure), set())
    for option, value in options.items():
        if option not in takes and _given(option, value):
            # step controls are named by the request's own field (a music model's chords)
            field = next(k for k, v in value.items() if len(v)) if option == "step_controls" else option
            raise InvalidInput(f"{field}: model {name!r} {VERB[capability]} {HOW.get(procedure, procedure)} and "
                               f"takes no {field}", field=field)


async def together(parts: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """The parts' results in order, run at once; the first part to fail cancels the others (asyncio.gather lets
    them run on), and its own error is raised rather than TaskGroup's ExceptionGroup."""
    tasks: list[asyncio.Task[T]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks.extend(group.create_task(part) for part in parts)
    except BaseException as failed:  # a part's error, or this task's cancellation (its client left)
        tasks.clear()  # a failed task holds its error, whose traceback will hold this frame
        traceback.clear_frames(failed.__traceback__)  # Python 3.11's TaskGroup.__aexit__ raises from a local of it
        error = failed.exceptions[0] if isinstance(failed, BaseExceptionGroup) else failed
    else:
        return [task.result() for task in tasks]
    try:  # raised outside the except, so that the group is not its context (the group holds it: a cycle)
        raise error
    finally:
        del error  # a local of the frame its traceback holds: a cycle


class GenerationOperations:
    def _labels(self, m: LoadedModel, label: int | None, rngs: list[np.random.Generator]) -> np.ndarray | None:
        """label for every row: the given one, or drawn from the class prior (exact ancestral sampling)."""
        classes = m.data.get("classes")
        if not classes:
            if label is not None:
                raise InvalidInput(f"label: model {m.manifest['name']!r} takes no class label", field="label")
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
            if len(name) > MAX_CONTROL_NAME:  # a refusal echoes the name: a long one is refused without it
                raise InvalidInput(f"controls: a control name is at most {MAX_CONTROL_NAME} characters, got "
                                   f"{len(name)}", field="controls")
            if name not in specs:
                raise InvalidInput(f"controls.{name}: model {m.manifest['name']!r} has the controls "
                                   f"{sorted(specs)}", field=f"controls.{name}")
        for name, spec in specs.items():
            conditions[name] = latent.control_values(spec, controls.get(name), rngs, f"controls.{name}")
            if spec["kind"] == "uniform" and name in controls:  # a given value: latent.extrapolation_range
                check_range(conditions[name], *latent.extrapolation_range(spec), f"controls.{name}")
        return conditions

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

    def _plan(self, m: LoadedModel, cap: dict, prompt: np.ndarray | None, length: int | None, rows: int,
              length_field: str = "length",
              prompt_field: str = "prompt") -> tuple[int, np.ndarray | None, np.ndarray | None, int]:
        """(steps, observed, mask, values): a sequence model generates `length` values after the prompt.

        observed and mask are [rows, steps * values per step], 1 over the prompt; None without a prompt (nothing is
        observed: procedures.autoregressive feeds zeros), as for images.
        `length_field` names the request field that set length (an audio request's seconds) in refusals,
        `prompt_field` the one that gave the prompt (a continued input's).
        """
        per_step = math.prod(cap["step_shape"])
        if not m.is_sequence:
            for field, value in (("length", length), ("prompt", prompt)):
                if value is not None:
                    raise InvalidInput(f"{field}: model {m.manifest['name']!r} generates fixed-shape "
                                       f"{m.data['kind']} data", field=field)
            return cap["steps"], None, None, cap["steps"] * per_step
        if isinstance(prompt, str) and m.data["kind"] != "text":  # an audio model's prompt is a recording
            raise InvalidInput(f"{prompt_field}: {m.data['kind']} models take no text prompt; continue a recording "
                               "with complete", field=prompt_field)
        prompt = np.zeros(0, np.int64) if prompt is None or len(prompt) == 0 else \
            check_sequence(prompt, m.data["levels"], prompt_field)
        chose_length = length is not None
        length = cap["steps"] * per_step if length is None else length
        if length < 1:
            raise InvalidInput(f"{length_field}: must be at least 1 value", field=length_field)
        values = len(prompt) + length
        most = cap.get("max_length", self.settings.max_sequence_length)
        if values > most:
            seconds = f" ({values / m.data['sample_rate']:g} s; at most {most / m.data['sample_rate']:g} s)" \
                if m.data["kind"] == "audio" else ""
            too_long = len(prompt) and (len(prompt) >= most or not chose_length)  # the field the client sent
            field = prompt_field if too_long else length_field
            raise InvalidInput(f"{field}: prompt and continuation are {values} values{seconds}, over model "
                               f"{m.manifest['name']!r}'s limit of {most}", field=field)
        self._check_work(m, cap, rows, values, length_field if chose_length else "n", "samples x values")
        steps = math.ceil(values / per_step)
        if not len(prompt):
            return steps, None, None, values
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
        steps, observed, mask, values, per_step = self._stream_plan(m, n, prompt, length, length_field, bars,
                                                                    step_controls)
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

    def _stream_plan(self, m: LoadedModel, n: int, prompt: np.ndarray | None, length: int | None, length_field: str,
                     bars: int | None, step_controls: dict[str, list[str]] | None) -> tuple:
        """(steps, observed, mask, values, per-step inputs) of a sample_stream: _plan's, but the request's bars
        where the model lets it choose them (service.engine.step_controls)."""
        cap = m.capability("sample")
        if cap["procedure"] != "autoregressive":
            raise MissingCapability(f"model {m.manifest['name']!r} draws each sample at once ({cap['procedure']}): "
                                    "use sample, not a stream", field="model")
        steps, observed, mask, values = self._plan(m, cap, prompt, length, n, length_field)
        chosen, per_step = plan_steps(m.manifest["name"], cap, n, bars, step_controls)
        return chosen or steps, observed, mask, values, per_step

    def stream_steps(self, name: str, n: int, bars: int | None = None,
                     step_controls: dict[str, list[str]] | None = None) -> int | None:
        """How many chunks a sample_stream of n samples with these bars and step controls yields, known before the
        first, where each chunk is a step (an image's row, a music model's bar): the steps the stream plans. None
        for a sequence model (text, audio), whose chunks are values (stream_values)."""
        m = self.model(name)
        return None if m.is_sequence else self._stream_plan(m, n, None, None, "length", bars, step_controls)[0]

    async def _chain(self, m: LoadedModel, cap: dict, rngs: list[np.random.Generator], x: np.ndarray,
                     observed: np.ndarray, mask: np.ndarray, steps: int) -> np.ndarray:
        """A Markov chain's state after `steps` transitions from x, run beside the runtime: its steps share calls
        with other requests' chains, pay no queue delay, and the deadline covers them all."""
        self._check_rows(m, len(x))
        request = worker_procedures.chain_request(cap, rngs, steps)
        return (await self._in_worker(m, request, {"x": x, "observed": observed, "mask": mask}))["next_x"]

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
        refuse_untaken(name, "sample", cap["procedure"], temperature=temperature, label=label, length=length,
                       top_k=top_k, prompt=prompt, steps=steps, controls=controls, bars=bars,
                       step_controls=step_controls)
        if controls and "controls" not in cap:
            raise InvalidInput(f"controls: model {name!r} takes no controls", field="controls")
        chosen, per_step = plan_steps(name, cap, n, bars, step_controls)
        if n < 1:
            raise InvalidInput("n: must be at least 1", field="n")
        if cap["procedure"] == "ancestral":
            rngs = procedures.row_generators(seed, n)
            conditions = {**self._conditions(m, cap, label, controls or {}, rngs),
                          **captions.condition(cap, prompt, n, name)}
            return await latent.ancestral(self._caller(m), cap, rngs, temperature, conditions)
        if cap["procedure"] == "markov_chain":
            rngs, zeros = procedures.row_generators(seed, n), np.zeros([n, *m.shape], np.int64)
            return await self._chain(m, cap, rngs, self._chain_start(m, rngs), zeros, zeros,
                                     self._chain_steps(m, cap, steps, n))
        steps, observed, mask, values = self._plan(m, cap, prompt, length, n, length_field)
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
        refuse_untaken(name, "complete", cap["procedure"], temperature=temperature, label=label, length=length,
                       top_k=top_k, steps=steps)
        if m.is_sequence:
            check_no_mask(m.data["kind"], mask is not None, "mask")  # a direct caller's; the adapters check first
            return await self._continue(m, x, n, seed, temperature, label, length, top_k, length_field)
        if length is not None:  # an image's completion has the image's size
            raise InvalidInput(f"length: model {name!r} completes fixed-shape {m.data['kind']} data and takes no "
                               "length", field="length")
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
                                                  rows_x, rows_mask, top_k=top_k)]
        return np.stack(values, axis=1).reshape(len(x), n, *m.shape)

    async def _continue(self, m: LoadedModel, prefixes: list[np.ndarray], n: int, seed: int, temperature: float,
                        label: int | None, length: int | None, top_k: int | None,
                        length_field: str = "length") -> list[np.ndarray]:
        """Each prefix [T_b] continued n times -> per prefix [n, T_b + length]; row b*n + i uses generator b*n + i."""
        if len(prefixes) == 0:
            raise InvalidInput("inputs: give at least one input", field="inputs")
        if n < 1:
            raise InvalidInput("n: must be at least 1", field="n")
        self._check_rows(m, len(prefixes) * n)  # every prefix's rows queue at once
        rngs = procedures.row_generators(seed, len(prefixes) * n)
        cap = m.capability("complete")

        prefixes = [check_sequence(prefix, m.data["levels"], f"inputs[{b}]") for b, prefix in enumerate(prefixes)]
        plans = [self._plan(m, cap, prefix, length, n, length_field, f"inputs[{b}]")
                 for b, prefix in enumerate(prefixes)]
        self._check_work(m, cap, n, sum(values for *_, values in plans), length_field,
                         "n x the values of every input")

        async def one(b: int, steps: int, observed: np.ndarray, mask: np.ndarray, values: int) -> np.ndarray:
            chunks = [v async for v in self._generate(m, "complete", seed, n, temperature, label, observed, mask,
                                                      steps, top_k, rngs[b * n: (b + 1) * n])]
            out = np.stack(chunks, axis=1).reshape(n, -1)[:, :values]
            self._count_audio(m, n * (values - int(mask[0].sum())))  # the generated values, not the prefix
            return out

        return await together(one(b, *plan) for b, plan in enumerate(plans))
