"""The latent-variable procedures (service/engine/latent.py): the bounds' arithmetic, and through the engine on a
tiny VAE the sandwich ELBO <= IWAE_k rising with k, seeded reproducibility, and clamped completion."""

import asyncio
import math

import numpy as np
import pytest

from service.engine import latent
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.settings import Settings
from service.store import ModelStore


def test_bounds_are_the_mean_and_the_log_mean_exp_with_their_standard_errors():
    rng = np.random.default_rng(0)
    log_w = rng.normal(-100.0, 2.0, size=(3, 400))
    elbo, elbo_se = latent.bound(log_w, "elbo")
    iwae, iwae_se = latent.bound(log_w, "iwae")
    assert np.allclose(elbo, log_w.mean(1)) and np.allclose(elbo_se, log_w.std(1, ddof=1) / 20.0)
    assert np.allclose(iwae, np.log(np.exp(log_w).mean(1)))  # no underflow at -100 in float64
    w = np.exp(log_w)
    assert np.allclose(iwae_se, w.std(1, ddof=1) / (20.0 * w.mean(1)))  # the delta method
    assert (iwae >= elbo).all()  # Jensen, on the same draws
    one = latent.bound(log_w[:, :1], "iwae")
    assert np.allclose(one[0], log_w[:, 0]) and one[1] is None
    flat, flat_se = latent.bound(np.full((2, 5), -3.0), "iwae")
    assert np.allclose(flat, -3.0) and np.allclose(flat_se, 0.0)


def test_draw_gives_each_row_its_own_stream():
    spec = {"eps": {"distribution": "normal", "shape": [2]}, "u": {"distribution": "uniform", "shape": [3]}}
    rows = [np.random.default_rng(s) for s in (1, 2)]
    alone = latent.draw(spec, [np.random.default_rng(2)])
    both = latent.draw(spec, rows)
    assert both["eps"].shape == (2, 2) and both["u"].shape == (2, 3) and both["u"].dtype == np.float32
    assert np.array_equal(both["eps"][1], alone["eps"][0]) and np.array_equal(both["u"][1], alone["u"][0])
    assert ((both["u"] >= 0) & (both["u"] < 1)).all()


def test_control_values_refuse_what_is_not_a_finite_float32_naming_the_control():
    rows = [np.random.default_rng(0), np.random.default_rng(1)]
    code, style = {"kind": "categorical", "classes": 10}, {"kind": "uniform", "low": -1, "high": 1, "shape": [2]}
    assert latent.control_values(code, 3.0, rows, "c").tolist() == [3, 3]
    assert latent.control_values(style, [0.5, 2], rows, "s").tolist() == [[0.5, 2.0]] * 2  # may extrapolate
    for given in (math.nan, math.inf, -math.inf, 2.5, 10, 10**30, [1]):  # NaN and inf once answered 500
        with pytest.raises(InvalidInput, match=r"^c: must be an integer in 0\.\.9"):
            latent.control_values(code, given, rows, "c")
    for given in ([math.nan, 0], [math.inf, 0], [1e39, 0], [10**400, 0], [1, "a"], [1]):  # 1e39: no float32
        with pytest.raises(InvalidInput, match=r"^s: must be 2 finite float32 numbers"):
            latent.control_values(style, given, rows, "s")


@pytest.fixture(scope="module")
def engine(tiny_vae_store) -> Engine:
    return Engine(ModelStore(tiny_vae_store), Settings())


def digits(n: int = 2) -> np.ndarray:
    from training.data import load

    return load("mnist5k-binarized").x_test[:n].astype(np.int64)


def test_elbo_is_below_iwae_k_which_rises_with_k(engine):
    x = digits(2)

    async def estimate(method: str, k: int, seed: int) -> np.ndarray:
        return np.array([r["log_likelihood_nats"] for r in await engine.score("vae", x, method=method, k=k, seed=seed)])

    async def run():
        for seed in range(3):  # the same seed draws the same k samples: IWAE >= ELBO draw by draw
            assert (await estimate("iwae", 16, seed) >= await estimate("elbo", 16, seed) - 1e-4).all()
        return {k: np.stack([await estimate("iwae", k, seed) for seed in range(40)]) for k in (1, 4, 32)}

    draws = asyncio.run(run())  # {k: [seeds, inputs]}
    means = {k: d.mean(0) for k, d in draws.items()}
    errors = {k: d.std(0, ddof=1) / math.sqrt(len(d)) for k, d in draws.items()}
    for small, large in ((1, 4), (4, 32)):
        assert (means[large] - means[small] > 2 * np.hypot(errors[small], errors[large])).all(), means


def test_score_reports_the_bound_and_rejects_bad_options(engine):
    async def run():
        (result,) = await engine.score("vae", digits(1), method="elbo", k=10, refine_steps=2, seed=3)
        assert result["method"] == "elbo" and result["k"] == 10 and result["is_lower_bound"]
        assert result["stderr"] > 0 and result["refine_steps"] == 2
        for options, field in (({"k": 0}, "k"), ({"method": "exact"}, "method"), ({"refine_steps": 10_000},
                                                                                    "refine_steps")):
            with pytest.raises(InvalidInput) as error:
                await engine.score("vae", digits(1), **options)
            assert error.value.field == field

    asyncio.run(run())


def test_samples_and_completions_follow_the_seed_and_keep_observed_pixels(engine):
    x = digits(2)
    mask = np.zeros((1, 28, 28), np.int64)
    mask[:, :, :10] = 1

    async def run():
        a, b = await engine.sample("vae", 3, 5, 1.0, None), await engine.sample("vae", 3, 5, 1.0, None)
        assert a.shape == (3, 1, 28, 28) and np.array_equal(a, b)
        first = await engine.complete("vae", x, mask, 2, 7, 1.0, steps=4)
        again = await engine.complete("vae", x, mask, 2, 7, 1.0, steps=4)
        other = await engine.complete("vae", x, mask, 2, 8, 1.0, steps=4)
        assert first.shape == (2, 2, 1, 28, 28) and np.array_equal(first, again) and not np.array_equal(first, other)
        assert (first[..., :10] == x[:, None, ..., :10]).all()

    asyncio.run(run())


def test_refining_more_inputs_than_run_together_is_refused_naming_inputs(tiny_vae_store):
    engine = Engine(ModelStore(tiny_vae_store), Settings(max_queue_size=8, intra_op_threads=1))
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(engine.encode("vae", digits(9), refine_steps=1))
    assert refused.value.field == "inputs"
    assert asyncio.run(engine.encode("vae", digits(9)))["mean"].shape[0] == 9  # unrefined: sent in parts
