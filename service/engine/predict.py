"""The state_space procedure: a latent state filtered from frames and actions, rolled forward, emitted as frames.

A state-space model (a Deep Variational Bayes Filter) exports four functions, which its capability entry names:

  filter_init   x [B, init_frames, *shape] levels, noise [B, D] -> z       the first state, from the first frames
  filter_step   z, u [B, *actions.shape], x [B, *shape], noise [B, W] -> next_z   the next state, given the next frame
  transition    z, u, noise [B, W] -> next_z                                the next state under the prior
  emit          z -> x [B, *shape] levels                                   the state's frame

Action u_t moves frame t to frame t + 1. The service knows nothing else of the model:
  encode   frames x_1..x_T and actions u_1..u_{T-1} -> the filtered states z_1..z_T (the means: zero noise)
  predict  the same, then `steps` more actions -> the states rolled forward by the transition's mean (zero noise)
           and their frames, all at once or one step at a time (a stream)
  sample   actions u_1..u_S -> S + 1 frames per sample: z_1 ~ N(0, I), then the transition with w_t ~ N(0, I), each
           row's noise from its own generator (a sample depends on the seed and its index alone)
The filter and the roll-out are sequential: each step is a call of a dynamic batcher, so steps of concurrent
requests share calls. A request's rows x frames are bounded by the capability's max_row_steps, its frames per
row by max_steps.

A mixin of service.engine.engine.Engine, which gives it `model`, `_caller`, `_check_rows` and `_check_work`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import numpy as np

from service.engine import latent, procedures
from service.engine.errors import InvalidInput, MissingCapability
from service.engine.validation import check_levels, check_range

if TYPE_CHECKING:  # engine.py imports this module
    from service.engine.engine import LoadedModel

class StateSpaceOperations:
    def _state_space(self, name: str, capability: str) -> tuple[LoadedModel, dict]:
        m = self.model(name)
        cap = m.capability(capability)
        if cap["procedure"] != "state_space":
            raise MissingCapability(f"model {name!r} has no state to roll forward: its {capability} is "
                                    f"{cap['procedure']}", field="model")
        return m, cap

    def _frames(self, m: LoadedModel, cap: dict, frames: np.ndarray, field: str = "inputs") -> np.ndarray:
        """Observed sequences [B, T, *shape] of levels, T >= init_frames -> int64, or InvalidInput naming `field`."""
        frames = np.asarray(frames)
        if frames.ndim != 2 + len(m.shape) or list(frames.shape[2:]) != m.shape:
            raise InvalidInput(f"{field}: give sequences of frames, [B, T, {', '.join(map(str, m.shape))}], got "
                               f"{list(frames.shape)}", field=field)
        if frames.shape[1] < cap["init_frames"]:
            raise InvalidInput(f"{field}: model {m.manifest['name']!r} filters from at least {cap['init_frames']} "
                               f"frames per sequence, got {frames.shape[1]}", field=field)
        if frames.shape[1] > cap["max_steps"]:
            raise InvalidInput(f"{field}: {frames.shape[1]} frames per sequence, over model {m.manifest['name']!r}'s "
                               f"limit of {cap['max_steps']}", field=field)
        if len(frames) > self.settings.max_inputs_per_request:
            raise InvalidInput(f"{field}: give at most {self.settings.max_inputs_per_request} sequences, got "
                               f"{len(frames)}", field=field)
        return check_levels(frames, None, m.data["levels"], field)

    @staticmethod
    def _given(m: LoadedModel, cap: dict, actions, field: str = "actions") -> None:
        if actions is None:
            raise InvalidInput(f"{field}: model {m.manifest['name']!r} needs the actions, [L, "
                               f"{', '.join(map(str, cap['actions']['shape']))}] for every row or one such per row",
                               field=field)

    def _actions(self, m: LoadedModel, cap: dict, actions, rows: int, field: str = "actions") -> np.ndarray:
        """Actions [rows, L, *actions.shape], or [L, *actions.shape] for every row -> float32 [rows, L, ...]."""
        self._given(m, cap, actions, field)
        try:
            actions = np.asarray(actions, np.float64)
        except (TypeError, ValueError, OverflowError):
            raise InvalidInput(f"{field}: give a rectangular array of numbers", field=field) from None
        shape = list(cap["actions"]["shape"])
        if actions.ndim == 1 + len(shape) and list(actions.shape[1:]) == shape:
            actions = np.broadcast_to(actions, (rows, *actions.shape))
        if actions.ndim != 2 + len(shape) or list(actions.shape[2:]) != shape or len(actions) != rows:
            raise InvalidInput(f"{field}: give [{rows}, L, {', '.join(map(str, shape))}] (one sequence of actions per "
                               f"row) or [L, {', '.join(map(str, shape))}] (the same for all), got "
                               f"{list(actions.shape)}", field=field)
        check_range(actions, cap["actions"]["low"], cap["actions"]["high"], field)  # the range trained on
        return np.ascontiguousarray(actions, np.float32)

    def _check_length(self, m: LoadedModel, cap: dict, rows: int, frames: int, field: str = "actions") -> None:
        if frames > cap["max_steps"]:
            raise InvalidInput(f"{field}: {frames} frames per row, over model {m.manifest['name']!r}'s limit of "
                               f"{cap['max_steps']}", field=field)
        self._check_work(m, cap, rows, frames, field, "rows x frames")

    @staticmethod
    async def _filter(call: latent.Call, cap: dict, frames: np.ndarray, actions: np.ndarray) -> list[np.ndarray]:
        """The filtered states' means: frames [B, T, *shape], actions [B, >= T - 1, ...] -> T states [B, D]."""
        initial = np.zeros([len(frames), *cap["initial_noise"]["noise"]["shape"]], np.float32)
        zeros = np.zeros([len(frames), *cap["noise"]["noise"]["shape"]], np.float32)
        z = (await call(cap["filter_init"], {"x": frames[:, :cap["init_frames"]], "noise": initial}))["z"]
        states = [z]
        for t in range(frames.shape[1] - 1):
            z = (await call(cap["filter_step"], {"z": z, "u": actions[:, t], "x": frames[:, t + 1],
                                                 "noise": zeros}))["next_z"]
            states.append(z)
        return states

    @staticmethod
    async def _roll(call: latent.Call, cap: dict, z: np.ndarray, actions: np.ndarray,
                    rngs: list[np.random.Generator] | None = None) -> AsyncIterator[tuple[np.ndarray, np.ndarray]]:
        """(next state, its frame) for each action [B, S, ...]: the transition's mean, or with rngs a draw."""
        zeros = {"noise": np.zeros([len(z), *cap["noise"]["noise"]["shape"]], np.float32)}
        for t in range(actions.shape[1]):
            noise = zeros if rngs is None else latent.draw(cap["noise"], rngs)
            z = (await call(cap["function"], {"z": z, "u": actions[:, t], **noise}))["next_z"]
            yield z, (await call(cap["emit"], {"z": z}))["x"]

    def _observed(self, name: str, capability: str, frames, actions):
        """(model, capability, call, frames [B, T, *shape], actions [B, T - 1 + S, ...], S) of an encode or predict."""
        m, cap = self._state_space(name, capability)
        self._given(m, cap, actions)
        frames = self._frames(m, cap, frames)
        actions = self._actions(m, cap, actions, len(frames))
        observed = frames.shape[1]
        steps = actions.shape[1] - (observed - 1)
        if steps < 0 or (capability == "encode" and steps != 0):
            need = f"{observed - 1}" if capability == "encode" else f"at least {observed - 1}"
            raise InvalidInput(f"actions: {observed} frames take {need} actions (u_t moves frame t to "
                               f"t + 1), got {actions.shape[1]}", field="actions")
        self._check_length(m, cap, len(frames), observed + steps)
        return m, cap, self._caller(m), frames, actions, steps

    async def encode(self, name: str, x, refine_steps: int = 0, seed: int = 0, refine: str = "gradient",
                     actions=None) -> dict[str, np.ndarray]:
        """A state-space model's filtered states {"mean": [B, T, D]} of frames x [B, T, *shape] under actions
        [B, T - 1, ...]; any other model's q(z | x) (service.engine.latent_operations)."""
        if self.model(name).capability("encode")["procedure"] != "state_space":
            if actions is not None:
                raise InvalidInput(f"actions: model {name!r} encodes each input alone and takes no "
                                   "actions", field="actions")
            return await super().encode(name, x, refine_steps=refine_steps, seed=seed, refine=refine)
        refinement = {"refine_steps": refine_steps or None, "refine": None if refine == "gradient" else refine}
        for field, value in refinement.items():
            if value is not None:
                raise InvalidInput(f"{field}: model {name!r} filters its states and refines none", field=field)
        _, cap, call, frames, actions, _ = self._observed(name, "encode", x, actions)
        return {"mean": np.stack(await self._filter(call, cap, frames, actions), 1)}

    async def predict(self, name: str, frames, actions) -> dict[str, np.ndarray]:
        """Frames [B, T, *shape] and actions [B, T - 1 + S, ...] -> {"states": [B, T + S, D] (filtered, then
        rolled), "frames": [B, S, *shape] int64 levels (the predicted frames)}."""
        _, cap, call, frames, actions, steps = self._observed(name, "predict", frames, actions)
        states = await self._filter(call, cap, frames, actions)
        rolled = [step async for step in self._roll(call, cap, states[-1], actions[:, frames.shape[1] - 1:])]
        shape = [len(frames), 0, *self.model(name).shape]
        predicted = np.stack([x for _, x in rolled], 1) if rolled else np.zeros(shape, np.int64)
        return {"states": np.stack(states + [z for z, _ in rolled], 1), "frames": predicted}

    async def predict_stream(self, name: str, frames, actions) -> AsyncIterator[dict]:
        """As predict, one predicted step at a time: {"step": 1..S, "steps": S, "states": [B, D], "frames":
        [B, *shape]}. Nothing is yielded before the request is checked, so a bad one fails before any step."""
        _, cap, call, frames, actions, steps = self._observed(name, "predict", frames, actions)
        if steps < 1:
            raise InvalidInput(f"actions: a stream predicts at least one frame: give more than "
                               f"{frames.shape[1] - 1} actions", field="actions")
        states = await self._filter(call, cap, frames, actions)
        step = 0
        async for z, x in self._roll(call, cap, states[-1], actions[:, frames.shape[1] - 1:]):
            step += 1
            yield {"step": step, "steps": steps, "states": z, "frames": x}

    async def rollouts(self, m: LoadedModel, cap: dict, n: int, seed: int, actions, options: dict) -> np.ndarray:
        """n roll-outs from the prior under actions [S, ...] (all rows) or [n, S, ...] -> [n, S + 1, *shape] levels.
        `options`: the sample request's other options, refused where given (not None)."""
        if cap["procedure"] != "state_space":
            raise InvalidInput(f"actions: model {m.manifest['name']!r} samples without actions", field="actions")
        for option, value in options.items():
            if value is not None:
                raise InvalidInput(f"{option}: model {m.manifest['name']!r} rolls out its state under actions and "
                                   f"takes no {option}", field=option)
        if n < 1:
            raise InvalidInput("n: must be at least 1", field="n")
        self._check_rows(m, n)
        actions = self._actions(m, cap, actions, n)
        self._check_length(m, cap, n, actions.shape[1] + 1)
        rngs, call = procedures.row_generators(seed, n), self._caller(m)
        z = latent.draw(cap["initial_noise"], rngs)["noise"]  # z_1 ~ N(0, I), the prior
        frames = [(await call(cap["emit"], {"z": z}))["x"]]
        frames += [x async for _, x in self._roll(call, cap, z, actions, rngs)]
        return np.stack(frames, 1)
