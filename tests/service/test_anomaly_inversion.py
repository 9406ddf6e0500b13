"""The inversion detector (AnoGAN's residual, cross-fitted; service/engine/anomaly.py) on the shipped `gan`: its
masks and residual, its sign (a digit scores lower than the same digit with its pixels shuffled or inverted), its
seeded determinism through the engine, REST and gRPC, and a 4xx naming `anomaly_method` for a model without the
latent search it needs.

The stores are copies of models/gan: one whose calibration gets an inversion entry from 16 test digits (default
left at the critic), one without the `complete` capability and function."""

import asyncio
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine import anomaly
from service.engine.engine import Engine
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.genserve_servicer import to_tensor
from service.settings import Settings
from service.store import ModelStore
from tests.service.grpc_score import grpc_scores

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "gan"
QUANTILES = [round(q, 3) for q in np.linspace(0, 1, 21)]
LOOP = asyncio.new_event_loop()  # one loop for the module's in-process engines: their schedulers live in it


def run(coroutine):
    return LOOP.run_until_complete(asyncio.wait_for(coroutine, 60.0))


def engine_of(store: Path) -> Engine:
    return Engine(ModelStore(store), Settings(intra_op_threads=1))


def edit_manifest(store: Path, edit) -> None:
    path = store / "gan" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def copy_gan(tmp_path_factory, edit) -> Path:
    store = tmp_path_factory.mktemp("inversion-store")
    shutil.copytree(SHIPPED, store / "gan")
    edit_manifest(store, edit)
    return store


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from training.data import load

    return load("mnist5k").x_test.astype(np.int64)


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits) -> Path:
    def critic_only(manifest: dict) -> None:
        manifest["calibration"] |= {"detectors": {}, "default": "critic"}

    store = copy_gan(tmp_path_factory, critic_only)
    engine = engine_of(store)
    held_out = run(engine._inversion(engine.model("gan"), digits[:16], 0))
    edit_manifest(store, lambda manifest: manifest["calibration"]["detectors"].update(inversion=anomaly.calibration_for(
        held_out, anomaly.SCORE_KINDS["inversion"], "test digits 0-15", QUANTILES)))
    return store


def served(engine: Engine, x: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.array([r["anomaly"]["score"] for r in run(engine.score("gan", x, anomaly_method="inversion", seed=seed))])


# --- maths -----------------------------------------------------------------------------------------------------------


def test_the_two_masks_observe_every_pixel_exactly_once_and_no_neighbours_together():
    masks = anomaly.inversion_masks([1, 28, 28])
    assert masks.shape == (2, 1, 28, 28) and set(np.unique(masks)) == {0, 1}
    np.testing.assert_array_equal(masks.sum(axis=0), 1)
    board = masks[0, 0]
    assert (board[1:] != board[:-1]).all() and (board[:, 1:] != board[:, :-1]).all()  # a checkerboard


def test_each_pixel_is_read_from_the_completion_that_did_not_observe_it():
    """Completions keep their observed pixels exactly (as `complete` does) and are off by d levels elsewhere: the
    residual is (d / 255)^2, which it would be 0 if it read the pixels a completion observed."""
    rng = np.random.default_rng(0)
    x = rng.integers(20, 200, (3, 1, 28, 28))
    masks = anomaly.inversion_masks([1, 28, 28])
    exact = np.stack([x, x])
    np.testing.assert_array_equal(anomaly.inversion_residual(x, exact, 256), 0.0)
    off = np.stack([np.where(masks[i] == 1, x, x + 10 * (i + 1)) for i in range(2)])  # first +10, second +20
    residual = anomaly.inversion_residual(x, off, 256)
    np.testing.assert_allclose(residual, ((10 / 255) ** 2 + (20 / 255) ** 2) / 2, rtol=1e-12)


# --- the shipped gan, served -----------------------------------------------------------------------------------------


def test_a_digit_scores_lower_than_itself_shuffled_or_inverted(store, digits):
    engine = engine_of(store)
    x = digits[16:24]
    shuffled = np.stack([np.random.default_rng(b).permutation(d.ravel()).reshape(d.shape) for b, d in enumerate(x)])
    own, scrambled, inverted = served(engine, x), served(engine, shuffled), served(engine, 255 - x)
    assert (scrambled > own).all() and (inverted > own).all(), (own, scrambled, inverted)


def test_the_served_score_is_the_cross_fitted_residual_of_the_served_completions(store, digits):
    engine = engine_of(store)
    x = digits[24:28]
    completed = [run(engine.complete("gan", x, mask, 1, 5, 1.0))[:, 0] for mask in anomaly.inversion_masks([1, 28, 28])]
    np.testing.assert_array_equal(served(engine, x, seed=5), anomaly.inversion_residual(x, np.stack(completed), 256))


def test_a_request_of_more_than_half_the_queue_is_scored_the_same(store, digits):
    """Its two searches (2 x B rows) would not fit the queue at once: they run one after the other, same scores."""
    x = digits[24:27]
    small_queue = Engine(ModelStore(store), Settings(intra_op_threads=1, max_queue_size=4))  # 3 rows fit, 6 do not
    np.testing.assert_array_equal(served(small_queue, x, seed=2), served(engine_of(store), x, seed=2))


def test_a_seed_gives_the_same_scores_every_time_and_another_seed_other_ones(store, digits):
    x = digits[28:32]
    first = served(engine_of(store), x, seed=3)
    np.testing.assert_array_equal(first, served(engine_of(store), x, seed=3))  # a fresh engine too
    assert (first != served(engine_of(store), x, seed=4)).any()  # the searches start from the seed's noise


def test_rest_and_grpc_answer_it_named_with_its_held_out_percentile_and_the_same_score(store, digits):
    x = digits[32:35]
    entry = engine_of(store).model("gan").manifest["calibration"]["detectors"]["inversion"]
    rest = TestClient(create_app(engine_of(store), Settings())).post(
        "/score", json={"model": "gan", "inputs": x.tolist(), "seed": 7, "anomaly_method": "inversion"})
    assert rest.status_code == 200, rest.text
    (answer,) = grpc_scores(store, [pb.ScoreRequest(model="gan", inputs=to_tensor(x), seed=7,
                                                    anomaly_method="inversion")])
    want = served(engine_of(store), x, seed=7)
    for got, b, score in zip(answer.results, rest.json()["results"], want, strict=True):
        a, b = got.anomaly, b["anomaly"]
        assert a.method == b["method"] == "inversion"
        assert a.score_kind == b["score_kind"] == anomaly.SCORE_KINDS["inversion"]
        assert a.score == pytest.approx(score, rel=1e-6) and b["score"] == pytest.approx(score, rel=1e-12)
        assert b["percentile"] == pytest.approx(float(anomaly.percentile(entry, np.array([score]))[0]))


def test_a_model_without_the_latent_search_refuses_it_with_a_4xx_naming_the_field(tmp_path_factory, store, digits):
    """The calibrated gan with its `complete` capability and function taken out: the entry alone does not serve."""
    def strip(manifest: dict) -> None:
        manifest.update(json.loads((store / "gan" / "1" / "manifest.json").read_text()))
        del manifest["capabilities"]["complete"], manifest["functions"]["complete"]

    bare = copy_gan(tmp_path_factory, strip)
    x = digits[:2]
    rest = TestClient(create_app(engine_of(bare), Settings())).post(
        "/score", json={"model": "gan", "inputs": x.tolist(), "anomaly_method": "inversion"})
    assert 400 <= rest.status_code < 500 and rest.json()["error"]["field"] == "anomaly_method"
    assert "inversion" in rest.json()["error"]["message"]
    (error,) = grpc_scores(bare, [pb.ScoreRequest(model="gan", inputs=to_tensor(x), anomaly_method="inversion")])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(error.trailing_metadata() or ())["genserve-error-field"] == "anomaly_method"
