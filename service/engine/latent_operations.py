"""The engine's operations on latent-variable models (docs/latent-variable-models.md): encode, decode,
reconstruct, interpolate, importance-sampled bounds, and the checks of Markov-chain options.

A mixin of service.engine.engine.Engine, which gives it `model`, `_batcher`, `_batching`, `_in_worker` and
`_score_result`; the algorithms themselves are the procedures of service.engine.latent, and refinement and
importance-weighted bounds run beside the runtimes (service.engine.worker_procedures).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np

from service.engine import latent, procedures, worker_procedures
from service.engine.errors import InvalidInput
from service.engine.validation import check_levels

if TYPE_CHECKING:  # engine.py imports this module
    from service.engine.engine import LoadedModel


def check_decoding(mean: np.ndarray, levels: int) -> None:
    """A decoding [B, *shape] in level units must lie in levels 0..levels-1. A flow's inverse that overflowed is cast
    through int64 in its graph: finite, far outside them. A hair outside rounds to a level; NaN is left to the
    callers' finite checks (validation.check_finite_outputs)."""
    if ((mean < -0.5) | (mean > levels - 0.5)).any():
        raise InvalidInput(f"z: decoding these latents overflowed (values outside levels 0..{levels - 1}); give "
                           "latents nearer the prior", field="z")


class LatentOperations:
    async def _score_bound(self, m: LoadedModel, cap: dict, x: np.ndarray, method: str | None, k: int | None,
                           refine_steps: int, seed: int, refine: str = "gradient") -> list[dict]:
        """ELBO or IWAE_k per input from k importance samples, with its standard error."""
        method = cap["method"] if method is None else method
        if method not in cap["methods"]:
            raise InvalidInput(f"method: must be one of {cap['methods']}", field="method")
        k = cap["k"] if k is None else k
        if not 1 <= k <= cap["max_k"]:
            raise InvalidInput(f"k: must be in 1..{cap['max_k']}", field="k")
        self._check_work(m, cap, len(x), k, "k", "inputs x k")
        posterior = None
        if "mean" in m.function_inputs(cap["function"]):  # q's parameters come from encode (and refinement)
            posterior = self._posterior(m, refine_steps, refine)
            self._check_refined_rows(m, len(x), refine_steps)
        elif refine_steps or refine != "gradient":
            field = "refine_steps" if refine_steps else "refine"
            raise InvalidInput(f"{field}: model {m.manifest['name']!r} does not refine its posterior", field=field)
        request = worker_procedures.bound_request(cap, posterior, k, procedures.row_generators(seed, len(x)))
        log_w = (await self._in_worker(m, request, {"x": x}))["log_weight"]
        estimate, stderr = latent.bound(log_w, method)
        size = math.prod(m.shape)
        return [{**self._score_result(m, {"method": method}, float(e), size), "k": k, "refine_steps": refine_steps,
                 "stderr": None if stderr is None else float(stderr[b]), "is_lower_bound": True}
                for b, e in enumerate(estimate)]

    @staticmethod
    def _posterior(m: LoadedModel, refine_steps: int, refine: str) -> dict:
        """The worker_procedures.posterior_spec of m's encode capability, refine_steps steps of the rule `refine`."""
        cap = m.capability("encode")
        most = cap.get("refine", {}).get("max_steps", 0)
        rules = latent.refine_updates(cap)
        if refine != "gradient" and refine not in rules:
            raise InvalidInput(f"refine: model {m.manifest['name']!r} refines by {sorted(rules) or 'no rule'}, "
                               f"not {refine!r}", field="refine")
        if refine_steps and not most:
            raise InvalidInput(f"refine_steps: model {m.manifest['name']!r} does not refine its posterior",
                               field="refine_steps")
        if not 0 <= refine_steps <= most:
            raise InvalidInput(f"refine_steps: model {m.manifest['name']!r} takes 0..{most}", field="refine_steps")
        return worker_procedures.posterior_spec(cap, rules.get(refine), refine_steps)

    def _check_refined_rows(self, m: LoadedModel, rows: int, refine_steps: int) -> None:
        """Refinement steps run their rows together, so they must fit the scheduler's queue at once."""
        most = self._batching(m).max_queue_size
        if refine_steps and rows > most:
            raise InvalidInput(f"inputs: {rows} inputs to refine, over the {most} that run together; send fewer "
                               "inputs per request", field="inputs")

    async def _encode(self, m: LoadedModel, x: np.ndarray, refine_steps: int, rngs: list[np.random.Generator],
                      refine: str = "gradient") -> tuple[np.ndarray, np.ndarray]:
        """q(z | x)'s (mean, std) [B, D] each, after refine_steps steps of the refinement rule `refine`."""
        request = worker_procedures.posterior_request(self._posterior(m, refine_steps, refine), rngs)
        self._check_refined_rows(m, len(x), refine_steps)
        q = await self._in_worker(m, request, {"x": x})
        return q["mean"], q["std"]

    async def encode(self, name: str, x: np.ndarray, refine_steps: int = 0, seed: int = 0,
                     refine: str = "gradient") -> dict[str, np.ndarray]:
        """x [B, *shape] -> q(z | x)'s mean and std, [B, D] each (refined refine_steps times by the rule `refine`,
        gradient or learned; noise from seed)."""
        m = self.model(name)
        x = check_levels(x, m.shape, m.data["levels"], "inputs")
        mean, std = await self._encode(m, x, refine_steps, procedures.row_generators(seed, len(x)), refine=refine)
        return {"mean": mean, "std": std}

    async def decode(self, name: str, z: np.ndarray) -> np.ndarray:
        """z [B, D] -> E[x | z] [B, *shape] float32, in level units."""
        m = self.model(name)
        cap = m.capability("decode")
        try:
            z = np.asarray(z, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidInput("z: give a rectangular array of numbers", field="z") from None
        dims = m.manifest["functions"][cap["function"]]["inputs"][0]["shape"][1:]
        if z.ndim != 1 + len(dims) or list(z.shape[1:]) != dims or len(z) == 0:
            raise InvalidInput(f"z: give one or more latents of shape {dims}, got {list(z.shape)}", field="z")
        if not np.isfinite(z).all():
            raise InvalidInput("z: values must be finite numbers", field="z")
        mean = (await self._caller(m)(cap["function"], {"z": z}))["mean"]
        check_decoding(mean, m.data["levels"])
        return mean

    async def reconstruct(self, name: str, x: np.ndarray, refine_steps: int = 0, seed: int = 0,
                          refine: str = "gradient") -> np.ndarray:
        """decode(the posterior mean of x): [B, *shape] float32."""
        return await self.decode(name, (await self.encode(name, x, refine_steps, seed, refine))["mean"])

    async def interpolate(self, name: str, x: np.ndarray, steps: int) -> dict[str, np.ndarray]:
        """Two inputs -> `steps` latents on the line between their posterior means [steps, D], and their decodings."""
        if len(x) != 2:
            raise InvalidInput(f"inputs: give exactly two inputs, got {len(x)}", field="inputs")
        if not 2 <= steps <= 64:
            raise InvalidInput("steps: must be in 2..64", field="steps")
        ends = (await self.encode(name, x))["mean"]  # [2, D]
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        z = (1 - t) * ends[0] + t * ends[1]  # [steps, D]
        return {"z": z, "images": await self.decode(name, z)}

    def _caller(self, m: LoadedModel) -> latent.Call:
        """Run one of m's functions on feeds [B, ...] through its dynamic batcher. Every call of one caller
        shares the deadline of the request that made it (timeout_ms from now), so it covers every step."""
        deadline = time.monotonic() + self._batching(m).timeout_ms / 1000

        async def call(function: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return await self._batcher(m, function).submit(feeds, deadline)
        return call

    def _chain_start(self, m: LoadedModel, rngs: list[np.random.Generator]) -> np.ndarray:
        """Uniformly random levels, [rows, *shape] int64: where a Markov chain starts."""
        return np.stack([rng.integers(0, m.data["levels"], m.shape) for rng in rngs]).astype(np.int64)

    @classmethod
    def _chain_steps(cls, m: LoadedModel, cap: dict, steps: int | None, rows: int) -> int:
        """The steps of a Markov chain over `rows` rows (inputs x n), checked against both limits; over the work
        limit, the refusal names steps where the request gave them, else n (the field it can change)."""
        field = "n" if steps is None else "steps"
        steps = cap["steps"] if steps is None else steps
        if not 1 <= steps <= cap["max_steps"]:
            raise InvalidInput(f"steps: model {m.manifest['name']!r} takes 1..{cap['max_steps']}", field="steps")
        cls._check_work(m, cap, rows, steps, field, "chains x steps")
        return steps

    @staticmethod
    def _check_work(m: LoadedModel, cap: dict, rows: int, steps: int, field: str, what: str) -> None:
        """Refuse an iterative request of more row-steps than the capability's max_row_steps: the most that
        finishes well within the default deadline on one CPU core (benchmarks/request_limits.py measures it)."""
        most = cap.get("max_row_steps")
        if most is not None and rows * steps > most:
            raise InvalidInput(f"{field}: {what} is {rows} x {steps} = {rows * steps}, over model "
                               f"{m.manifest['name']!r}'s limit of {most} per request; send fewer, or in parts",
                               field=field)
