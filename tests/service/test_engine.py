"""The real Engine over the tiny exported PixelCNN on both runtimes: seeds, parity, completion, exact scores, errors.

Properties of the engine's own logic (refusals, masks) run on onnx only; the parity tests carry them to torchscript.
"""

import asyncio
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp

from service.engine.engine import Engine
from service.engine.errors import InvalidInput, MissingCapability, UnknownModel
from service.settings import Settings
from service.store import ModelStore

MODEL = "pixelcnn"
RUNTIMES = ["onnx", "torchscript"]


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture(scope="module")
def engines(tiny_store) -> dict[str, Engine]:
    store = ModelStore(tiny_store)
    return {rt: Engine(store, Settings(runtime=rt, intra_op_threads=1)) for rt in RUNTIMES}


@pytest.fixture(params=RUNTIMES)
def engine(request, engines) -> Engine:
    return engines[request.param]


@pytest.fixture
def onnx_engine(engines) -> Engine:
    return engines["onnx"]


@pytest.fixture(scope="module")
def spec(tiny_store) -> dict:
    return ModelStore(tiny_store).entries[MODEL].manifest["data"]


@pytest.fixture(scope="module")
def test_images(spec) -> np.ndarray:
    """[4, *shape] int64 binarized mnist5k test digits, the split the model's calibration was measured on."""
    from training.data import mnist5k_binarized

    x = mnist5k_binarized().x_test[:4].astype(np.int64)
    assert list(x.shape[1:]) == spec["shape"]
    return x


def sample(engine: Engine, n: int, seed: int, temperature: float = 1.0, label: int | None = None) -> np.ndarray:
    return run(engine.sample(MODEL, n, seed, temperature, label))


def log_p(engine: Engine, x: np.ndarray, labels=None) -> np.ndarray:
    return np.array([r["log_likelihood_nats"] for r in run(engine.score(MODEL, x, labels))])


# --- sampling ------------------------------------------------------------------------------------------------------


def test_samples_have_the_data_shape_and_levels(engine, spec):
    x = sample(engine, 3, seed=11)
    assert x.shape == (3, *spec["shape"])
    assert x.dtype == np.int64
    assert x.min() >= 0 and x.max() <= spec["levels"] - 1
    assert 0 < x.mean() < 1  # not a constant image


def test_same_seed_same_samples_and_different_seeds_differ(engine):
    a, b = sample(engine, 2, seed=7), sample(engine, 2, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample(engine, 2, seed=8))
    assert not np.array_equal(a[0], a[1])  # rows of one request draw independent noise


def test_sample_i_depends_only_on_seed_and_i(engine):
    two, five = sample(engine, 2, seed=3), sample(engine, 5, seed=3)
    np.testing.assert_array_equal(two, five[:2])


def test_a_request_alone_equals_the_same_request_in_a_busy_mixed_batch(engine, test_images):
    """Continuous batching: other samples, completions and scores share its steps, not its output."""
    alone = sample(engine, 3, 11)

    async def busy():
        async def late():
            await asyncio.sleep(0.01)
            return await engine.sample("pixelcnn", 3, 11, 1.0, None)

        mask = np.zeros((1, 28, 28), np.int64)
        mask[:, :10] = 1
        results = await asyncio.gather(
            engine.sample("pixelcnn", 5, 1, 0.7, 2), late(),
            engine.complete("pixelcnn", test_images[:2], mask, 2, 3, 1.2),
            engine.score("pixelcnn", test_images[:4]),
        )
        return results[1]

    assert np.array_equal(run(busy()), alone)


def test_runtimes_agree_on_samples(engines):
    onnx, torchscript = (sample(engines[rt], 3, seed=21) for rt in RUNTIMES)
    np.testing.assert_array_equal(onnx, torchscript)
    onnx, torchscript = (sample(engines[rt], 2, seed=5, label=4, temperature=0.7) for rt in RUNTIMES)
    np.testing.assert_array_equal(onnx, torchscript)


def test_label_conditioning(onnx_engine, spec):
    classes = len(spec["classes"])
    x = sample(onnx_engine, 2, seed=9, label=classes - 1)
    assert x.shape == (2, *spec["shape"])
    np.testing.assert_array_equal(x, sample(onnx_engine, 2, seed=9, label=classes - 1))
    for bad in (classes, -1):
        with pytest.raises(InvalidInput, match="label") as info:
            sample(onnx_engine, 1, seed=0, label=bad)
        assert info.value.field == "label"


def test_low_temperature_is_greedy(onnx_engine):
    # at temperature -> 0 every pixel takes its most likely value, whatever the noise
    np.testing.assert_array_equal(sample(onnx_engine, 2, seed=1, temperature=1e-4, label=2),
                                  sample(onnx_engine, 2, seed=2, temperature=1e-4, label=2))


# --- completion ----------------------------------------------------------------------------------------------------


def test_complete_keeps_every_observed_pixel(engine, spec, test_images):
    rng = np.random.default_rng(0)
    x = test_images[:3]
    mask = (rng.random(x.shape) < 0.5).astype(np.int64)  # a different random mask per input
    out = run(engine.complete(MODEL, x, mask, n=2, seed=4, temperature=1.0))
    assert out.shape == (3, 2, *spec["shape"])
    assert out.min() >= 0 and out.max() <= spec["levels"] - 1
    observed = np.broadcast_to(mask[:, None], out.shape).astype(bool)
    np.testing.assert_array_equal(out[observed], np.broadcast_to(x[:, None], out.shape)[observed])
    assert (out[~observed] != np.broadcast_to(x[:, None], out.shape)[~observed]).any()  # missing ones are drawn
    np.testing.assert_array_equal(out, run(engine.complete(MODEL, x, mask, n=2, seed=4, temperature=1.0)))


def test_complete_with_one_shared_mask(onnx_engine, spec, test_images):
    x = test_images[:2]
    mask = np.zeros(spec["shape"], np.int64)
    mask[..., : spec["shape"][-2] // 2, :] = 1  # top half observed
    out = run(onnx_engine.complete(MODEL, x, mask, n=3, seed=0, temperature=1.0))
    assert out.shape == (2, 3, *spec["shape"])
    top = spec["shape"][-2] // 2
    np.testing.assert_array_equal(out[..., :top, :], np.broadcast_to(x[:, None], out.shape)[..., :top, :])


def test_complete_fully_observed_returns_the_input(onnx_engine, test_images):
    x = test_images[:2]
    out = run(onnx_engine.complete(MODEL, x, np.ones_like(x), n=2, seed=0, temperature=1.0))
    np.testing.assert_array_equal(out, np.repeat(x[:, None], 2, axis=1))


def test_complete_with_nothing_observed_is_sampling(engine, spec, test_images):
    # no pixel observed: completion draws from the same seeded generators as sampling
    x = test_images[:1]
    out = run(engine.complete(MODEL, x, np.zeros_like(x), n=3, seed=12, temperature=1.0))
    np.testing.assert_array_equal(out[0], sample(engine, 3, seed=12))


def test_complete_refuses_bad_masks(onnx_engine, test_images):
    x = test_images[:2]
    with pytest.raises(InvalidInput, match="mask") as info:
        run(onnx_engine.complete(MODEL, x, np.full_like(x, 2), n=1, seed=0, temperature=1.0))
    assert info.value.field.startswith("mask")
    with pytest.raises(InvalidInput, match="mask"):
        run(onnx_engine.complete(MODEL, x, np.ones_like(x)[:, :, :5], n=1, seed=0, temperature=1.0))
    with pytest.raises(InvalidInput, match="mask"):
        run(onnx_engine.complete(MODEL, x, np.ones_like(x)[:1].repeat(3, axis=0), n=1, seed=0, temperature=1.0))


# --- scoring -------------------------------------------------------------------------------------------------------


def test_score_fields(engine, spec, test_images):
    manifest = engine.model(MODEL).manifest
    calibration = manifest["calibration"]
    dims = math.prod(spec["shape"])
    results = run(engine.score(MODEL, test_images))
    assert len(results) == len(test_images)
    for r in results:
        ll = r["log_likelihood_nats"]
        assert ll < 0
        assert r["bits_per_dim"] == pytest.approx(-ll / (dims * math.log(2)), rel=1e-12)
        assert dims == 784
        assert r["method"] == "exact"
        anomaly = r["anomaly"]
        assert anomaly["score"] == pytest.approx(-ll)
        assert 0.0 <= anomaly["percentile"] <= 100.0
        expected = 100.0 * np.interp(-ll, calibration["values"], calibration["quantiles"])
        assert anomaly["percentile"] == pytest.approx(expected)
        assert anomaly["is_anomaly"] == (anomaly["percentile"] >= 100.0 * calibration["threshold_quantile"])


def test_score_is_per_input(onnx_engine, test_images):
    # a row's score does not depend on the rest of the batch
    together = log_p(onnx_engine, test_images)
    alone = np.array([log_p(onnx_engine, test_images[i : i + 1])[0] for i in range(len(test_images))])
    np.testing.assert_allclose(together, alone, rtol=1e-5)


def test_test_images_score_like_the_calibration(engine, test_images):
    # the manifest's calibration was measured on this split: its test digits fall inside the calibrated range
    values = engine.model(MODEL).manifest["calibration"]["values"]
    nll = -log_p(engine, test_images)
    slack = 1e-4 * abs(values[-1])  # export measured in eager torch; the runtimes may differ in the last bits
    assert (nll >= values[0] - slack).all() and (nll <= values[-1] + slack).all()


def test_anomalous_input_gets_a_higher_percentile(engine, test_images):
    # the most likely image under greedy decoding, inverted: every pixel takes its less likely value.
    # (All-ones is no anomaly for the barely trained tiny model, which favours ones.)
    mode = sample(engine, 1, seed=0, temperature=1e-4, label=0)
    anomalous = 1 - mode
    normal, odd = run(engine.score(MODEL, np.concatenate([test_images[:1], anomalous])))
    assert odd["log_likelihood_nats"] < normal["log_likelihood_nats"]
    assert odd["anomaly"]["percentile"] > normal["anomaly"]["percentile"]
    assert odd["anomaly"]["is_anomaly"] and not normal["anomaly"]["is_anomaly"]


def test_runtimes_agree_on_scores(engines, test_images):
    labels = [None, 3, None, 7]
    onnx, torchscript = (log_p(engines[rt], test_images, labels) for rt in RUNTIMES)
    np.testing.assert_allclose(onnx, torchscript, rtol=1e-4)


def test_score_with_labels_is_the_conditional(engine, spec, test_images):
    classes = len(spec["classes"])
    x = test_images[:2]
    rows = np.repeat(x, classes, axis=0)
    labels = [y for _ in x for y in range(classes)]
    conditional = log_p(engine, rows, labels).reshape(len(x), classes)  # log p(x|y)
    assert np.ptp(conditional, axis=1).min() > 1e-3  # the label matters, so the next check is not trivial
    # one label alone equals the same label inside a mixed batch
    np.testing.assert_allclose(log_p(engine, x[:1], [5]), conditional[0, 5], rtol=1e-5)
    # exact marginalisation: log p(x) = logsumexp_y log p(x|y) + log p(y)
    prior = np.asarray(spec["class_prior"], np.float64)
    marginal = logsumexp(conditional + np.log(prior / prior.sum()), axis=1)
    np.testing.assert_allclose(log_p(engine, x), marginal, rtol=1e-4)
    mixed = log_p(engine, x, [None, 2])
    np.testing.assert_allclose(mixed, [marginal[0], conditional[1, 2]], rtol=1e-4)


def test_score_refuses_bad_labels(onnx_engine, spec, test_images):
    classes = len(spec["classes"])
    for bad in ([classes], [-1]):
        with pytest.raises(InvalidInput, match="labels") as info:
            run(onnx_engine.score(MODEL, test_images[:1], bad))
        assert info.value.field == "labels"
    with pytest.raises(InvalidInput, match="labels"):
        run(onnx_engine.score(MODEL, test_images[:2], [1]))


# --- refusals ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_shape", [(1, 28, 28), (1, 1, 28, 27), (1, 784)])
def test_wrong_shape_is_refused(onnx_engine, bad_shape):
    with pytest.raises(InvalidInput, match="inputs") as info:
        run(onnx_engine.score(MODEL, np.zeros(bad_shape, np.int64)))
    assert info.value.field == "inputs"
    with pytest.raises(InvalidInput, match="inputs"):
        run(onnx_engine.complete(MODEL, np.zeros(bad_shape, np.int64), np.zeros(bad_shape, np.int64), 1, 0, 1.0))


@pytest.mark.parametrize("value", [2, -1, 255])
def test_values_out_of_range_are_refused(onnx_engine, test_images, value):
    x = test_images.copy()
    x[2, 0, 5, 5] = value
    with pytest.raises(InvalidInput, match=r"inputs\[2\]") as info:
        run(onnx_engine.score(MODEL, x))
    assert info.value.field == "inputs[2]"
    with pytest.raises(InvalidInput, match=r"inputs\[2\]"):
        run(onnx_engine.complete(MODEL, x, np.zeros_like(x), 1, 0, 1.0))


def test_unknown_model(onnx_engine, test_images):
    calls = [
        lambda: run(onnx_engine.sample("nope", 1, 0, 1.0, None)),
        lambda: run(onnx_engine.score("nope", test_images)),
        lambda: run(onnx_engine.complete("nope", test_images, np.ones_like(test_images), 1, 0, 1.0)),
        lambda: onnx_engine.describe("nope"),
        lambda: onnx_engine.data_spec("nope"),
    ]
    for call in calls:
        with pytest.raises(UnknownModel, match="nope") as info:
            call()
        assert info.value.status == 404


def test_describe_and_list(onnx_engine, spec):
    [listed] = onnx_engine.list_models()
    assert listed == onnx_engine.describe(MODEL)
    assert listed["name"] == MODEL and listed["version"] == 1 and listed["family"] == "pixelcnn"
    assert listed["capabilities"] == ["complete", "sample", "score"]
    assert listed["data"] == spec
    assert onnx_engine.data_spec(MODEL)["num_classes"] == len(spec["classes"])


def test_missing_capability(tiny_store, tmp_path, test_images):
    store_dir = Path(shutil.copytree(tiny_store, tmp_path / "models"))
    path = store_dir / MODEL / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["capabilities"]["complete"]
    path.write_text(json.dumps(manifest))
    store = ModelStore(store_dir)  # capabilities are not hashed: the edited manifest still loads
    assert "complete" not in store.entries[MODEL].manifest["capabilities"]
    engine = Engine(store, Settings(runtime="onnx", intra_op_threads=1))
    assert "complete" not in engine.describe(MODEL)["capabilities"]
    with pytest.raises(MissingCapability, match="complete") as info:
        run(engine.complete(MODEL, test_images[:1], np.ones_like(test_images[:1]), 1, 0, 1.0))
    assert info.value.status == 400
    assert sample(engine, 1, seed=0).shape[0] == 1  # the other capabilities still work


def test_direct_call_of_a_step_function_and_sampling_share_no_scheduler(onnx_engine, spec):
    """Issue 15, defect 1: a V2 call of sample_step once broke sampling until restart (and the other way round)."""
    step = onnx_engine.function_spec(MODEL, "sample_step")
    feeds = {t["name"]: np.zeros([1 if d == -1 else d for d in t["shape"]],
                                 np.int64 if t["dtype"] == "int64" else np.float32) for t in step["inputs"]}
    feeds["temperature"][:] = 1.0

    async def both_ways():
        await onnx_engine.infer(MODEL, "sample_step", feeds)
        first = await onnx_engine.sample(MODEL, 1, 3, 1.0, None)
        again = await onnx_engine.infer(MODEL, "sample_step", feeds)
        return first, again

    first, again = run(both_ways())
    assert first.shape == (1, *spec["shape"])
    assert again["x"].shape == (1, spec["shape"][-1])
