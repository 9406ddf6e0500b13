"""The latent Mahalanobis score (Lee et al. 2018 in a model's latent space, service/engine/anomaly.py): its maths
against scipy's Mahalanobis distance, its sign, and the detector over REST and gRPC on the tiny VAE
(tests/conftest.py), refused with a 4xx where it is not calibrated or the model has no encoder. Its Gaussian lives
in a safetensors file beside the manifest (anomaly.LATENT_FILE, float32), verified by the store like any artifact
file; a flow's 784-dimensional z gets it too (the tiny NICE).

The store is a copy of the tiny VAE store whose calibration gets a latent_mahalanobis entry, written by the
benchmark's writer (benchmarks/anomaly.py write_manifest): the Gaussian of 200 training digits' posteriors,
quantiles from 40 test digits."""

import asyncio
import hashlib
import json
import shutil

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import load_file, save_file
from scipy.spatial.distance import mahalanobis

from benchmarks import anomaly as bench
from service.api import create_app
from service.engine import anomaly, procedures
from service.engine.engine import Engine
from service.engine.errors import UnsupportedModel
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.genserve_servicer import to_tensor
from service.settings import Settings
from service.store import ModelStore, StoreError
from tests.service.grpc_score import grpc_scores

QUANTILES = [round(q, 3) for q in np.linspace(0, 1, 21)]
LOOP = asyncio.new_event_loop()  # one loop for the module's in-process engines: their schedulers live in it


def run(coroutine):
    return LOOP.run_until_complete(asyncio.wait_for(coroutine, 60.0))


def engine_of(store) -> Engine:
    return Engine(ModelStore(store), Settings(intra_op_threads=1))


def posterior(engine: Engine, x: np.ndarray, seed: int = 0, model: str = "vae") -> tuple[np.ndarray, np.ndarray]:
    return run(engine._encode(engine.model(model), x, 0, procedures.row_generators(seed, len(x))))


def write_gaussian(store, model: str, gaussian: dict, held_out: np.ndarray, rows_dir) -> None:
    """As benchmarks/anomaly.py --write writes it: the run's Gaussian file beside its rows, then write_manifest."""
    rows_json = rows_dir / "rows.json"
    save_file(anomaly.latent_arrays(gaussian), str(bench.gaussian_path(rows_json, model)))
    entry = {**anomaly.calibration_for(held_out, anomaly.SCORE_KINDS["latent_mahalanobis"], "test digits 0-39",
                                       QUANTILES), "latent": anomaly.latent_entry(gaussian)}
    bench.write_manifest(store, {"model": model, "calibration": {"latent_mahalanobis": entry}, "default": "nll"},
                         rows_json)


def manifest_of(store, model: str = "vae") -> dict:
    return json.loads((store / model / "1" / "manifest.json").read_text())


@pytest.fixture(scope="module")
def data():
    from training.data import mnist5k_binarized

    return mnist5k_binarized()


@pytest.fixture(scope="module")
def fitted(tiny_vae_store, data):
    """The Gaussian of 200 training digits' posteriors (float64, as fitted) and 40 test digits' scores."""
    engine = engine_of(tiny_vae_store)
    gaussian = anomaly.latent_gaussian(*posterior(engine, data.x_train[:200].astype(np.int64)))
    return gaussian, anomaly.latent_mahalanobis(*posterior(engine, data.x_test[:40].astype(np.int64)), gaussian)


@pytest.fixture(scope="module")
def store(tiny_vae_store, fitted, tmp_path_factory):
    store = tmp_path_factory.mktemp("latent-store")
    shutil.copytree(tiny_vae_store / "vae", store / "vae")
    write_gaussian(store, "vae", *fitted, tmp_path_factory.mktemp("latent-rows"))
    return store


def copy_of(store, tmp_path):
    shutil.copytree(store / "vae", tmp_path / "vae")
    return tmp_path


# --- maths -----------------------------------------------------------------------------------------------------------


def test_the_distance_is_scipys_mahalanobis_under_the_ridged_covariance_and_zero_at_the_training_mean():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(300, 3)) @ rng.normal(size=(3, 3)) + 5.0  # correlated posterior means
    std = np.exp(rng.normal(-1.0, 0.3, size=(300, 3)))
    gaussian = anomaly.latent_gaussian(mean, std)
    assert gaussian["features"] == ["mean", "log_std"]
    f = np.concatenate([mean, np.log(std)], axis=1)
    covariance = np.cov(f, rowvar=False)
    inverse = np.linalg.inv(covariance + anomaly.LATENT_RIDGE * np.diag(covariance).mean() * np.eye(6))
    want = [mahalanobis(row, f.mean(axis=0), inverse) for row in f[:20]]
    np.testing.assert_allclose(anomaly.latent_mahalanobis(mean[:20], std[:20], gaussian), want, rtol=1e-9)
    centre = f.mean(axis=0)
    assert anomaly.latent_mahalanobis(centre[None, :3], np.exp(centre[None, 3:]), gaussian)[0] == \
        pytest.approx(0.0, abs=1e-9)


def test_a_deterministic_encoder_is_measured_by_its_mean_alone():
    mean = np.random.default_rng(1).normal(size=(100, 4))
    gaussian = anomaly.latent_gaussian(mean, np.zeros_like(mean))  # a BiGAN's encoder: std 0
    assert gaussian["features"] == ["mean"] and np.shape(gaussian["precision"]) == (4, 4)
    assert np.isfinite(anomaly.latent_mahalanobis(mean, np.zeros_like(mean), gaussian)).all()


def test_a_latent_farther_from_the_training_latents_scores_higher():
    rng = np.random.default_rng(2)
    mean, std = rng.normal(size=(200, 4)), np.exp(rng.normal(-1.0, 0.1, (200, 4)))
    gaussian = anomaly.latent_gaussian(mean, std)
    centre, typical_std = np.asarray(gaussian["mean"][:4]), np.exp(gaussian["mean"][4:])
    steps = np.array([0.0, 1.0, 3.0, 10.0])[:, None] * np.ones(4)  # along one direction, farther each row
    scores = anomaly.latent_mahalanobis(centre + steps, np.tile(typical_std, (4, 1)), gaussian)
    assert scores[0] == pytest.approx(0.0, abs=1e-9) and (np.diff(scores) > 0).all()
    assert scores[-1] > anomaly.latent_mahalanobis(mean, std, gaussian).max()


# --- serving: REST and gRPC alike; refused where not calibrated or not computable ------------------------------------


def test_the_files_float32_arrays_score_as_the_float64_fit_does_for_a_flow_sized_latent():
    """784 deterministic features (a flow's z), variances over three decades mixed by a rotation (condition number
    ~2e4): the distance from the float32 arrays of the file is the float64 fit's within 1e-5 relative, near the
    training latents and far from them."""
    rng = np.random.default_rng(5)
    scales = np.exp(rng.uniform(np.log(1e-3), 0.0, 784))
    z = (rng.normal(size=(3000, 784)) * scales) @ (rng.normal(size=(784, 784)) / 28.0)
    gaussian = anomaly.latent_gaussian(z, np.zeros_like(z))
    stored = {"features": gaussian["features"], **anomaly.latent_arrays(gaussian)}
    assert stored["precision"].dtype == np.float32 and stored["precision"].nbytes == 784 * 784 * 4
    for x in (z[:100], 5.0 * z[100:150]):
        want = anomaly.latent_mahalanobis(x, np.zeros_like(x), gaussian)
        np.testing.assert_allclose(anomaly.latent_mahalanobis(x, np.zeros_like(x), stored), want, rtol=1e-5)


# --- the Gaussian's file: written by the benchmark, listed with its sha256, verified by the store -------------------


def test_the_writer_puts_the_arrays_in_a_listed_file_and_the_manifest_names_it(store, fitted, tiny_vae_store):
    """The manifest's entry names anomaly.LATENT_FILE (no arrays in the JSON, which stays as small as the exported
    one plus the quantiles), the file is listed with its sha256 and holds the fit's mean and precision in float32."""
    gaussian, _ = fitted
    manifest = manifest_of(store)
    latent = manifest["calibration"]["detectors"]["latent_mahalanobis"]["latent"]
    assert latent == {"features": gaussian["features"], "n": 200, "ridge": anomaly.LATENT_RIDGE,
                      "file": anomaly.LATENT_FILE}
    data = (store / "vae" / "1" / anomaly.LATENT_FILE).read_bytes()
    assert manifest["files"][anomaly.LATENT_FILE] == hashlib.sha256(data).hexdigest()
    arrays = load_file(str(store / "vae" / "1" / anomaly.LATENT_FILE))
    for key, array in anomaly.latent_arrays(gaussian).items():
        assert arrays[key].dtype == np.float32 and np.array_equal(arrays[key], array)
    grown = len(json.dumps(manifest)) - len(json.dumps(manifest_of(tiny_vae_store)))
    assert grown < 6000  # the entry's quantiles and values, not a precision matrix


def test_the_served_score_is_the_distance_of_the_served_posterior_under_the_fit(store, fitted, data):
    """Round trip: fit -> file -> store -> engine -> request; the score equals the in-memory fit's distance (float64)
    within the file's float32 rounding, and exactly its distance under the file's arrays."""
    gaussian, _ = fitted
    engine = engine_of(store)
    x = data.x_test[40:46].astype(np.int64)
    served = [r["anomaly"]["score"] for r in run(engine.score("vae", x, anomaly_method="latent_mahalanobis", seed=4))]
    mean, std = posterior(engine, x, seed=4)
    np.testing.assert_allclose(served, anomaly.latent_mahalanobis(mean, std, gaussian), rtol=1e-5)
    stored = {"features": gaussian["features"], **anomaly.latent_arrays(gaussian)}
    np.testing.assert_allclose(served, anomaly.latent_mahalanobis(mean, std, stored), rtol=1e-12)


def test_the_gaussian_is_read_once_at_load_and_requests_use_its_arrays(store, data, tiny_vae_store, tmp_path):
    """The loaded model holds the file's arrays as float64, read when the engine loads it: with the file deleted
    after load, the served scores stay the same. A model without the entry holds none."""
    store = copy_of(store, tmp_path)
    engine = engine_of(store)
    m = engine.model("vae")
    gaussian = m.latent_gaussian
    arrays = load_file(str(store / "vae" / "1" / anomaly.LATENT_FILE))
    assert gaussian["precision"].dtype == gaussian["mean"].dtype == np.float64
    assert np.array_equal(gaussian["precision"], arrays["precision"]) and np.array_equal(gaussian["mean"],
                                                                                        arrays["mean"])
    x = data.x_test[40:44].astype(np.int64)

    def served() -> list[float]:
        return [r["anomaly"]["score"] for r in run(engine.score("vae", x, anomaly_method="latent_mahalanobis"))]

    before = served()
    (store / "vae" / "1" / anomaly.LATENT_FILE).unlink()  # what a per-request read would meet
    assert served() == before and m.latent_gaussian is gaussian
    assert engine_of(tiny_vae_store).model("vae").latent_gaussian is None


def test_a_gaussian_file_whose_sha256_does_not_match_is_refused_naming_it(store, tmp_path):
    """As for any artifact file: the store refuses to load, and with skip_bad leaves the model out, naming the
    file and the sha256 mismatch."""
    store = copy_of(store, tmp_path)
    path = store / "vae" / "1" / anomaly.LATENT_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # the last byte of the precision
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"{anomaly.LATENT_FILE}: sha256 .* does not match") as error:
        ModelStore(store)
    assert error.value.kind == "sha256"
    kept = ModelStore(store, skip_bad=True)
    assert "vae" not in kept.names() and kept.unavailable["vae"].kind == "sha256"


@pytest.mark.parametrize("arrays", [{"mean": np.zeros(5, np.float32), "precision": np.eye(5, dtype=np.float32)},
                                    {"mean": np.zeros(64, np.float32)}])
def test_a_gaussian_file_that_does_not_fit_its_features_is_refused_at_load(store, tmp_path, arrays):
    """Listed with its sha256 but not the features the entry measures (an exporter's mistake): the engine refuses
    the model when it loads it, naming the file, rather than a shape error in a request."""
    store = copy_of(store, tmp_path)
    path = store / "vae" / "1" / anomaly.LATENT_FILE
    save_file(arrays, str(path))
    manifest = manifest_of(store)
    manifest["files"][anomaly.LATENT_FILE] = hashlib.sha256(path.read_bytes()).hexdigest()
    (store / "vae" / "1" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsupportedModel, match=f"model 'vae': {anomaly.LATENT_FILE} holds .* not the 8 features"):
        engine_of(store)


def test_a_gaussian_for_a_model_without_an_encoder_is_refused_at_load(store, tmp_path):
    store = copy_of(store, tmp_path)
    manifest = manifest_of(store)
    del manifest["functions"]["encode"]
    manifest["capabilities"] = {k: c for k, c in manifest["capabilities"].items() if c.get("function") != "encode"}
    (store / "vae" / "1" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsupportedModel, match="not the 0 features"):
        engine_of(store)


def test_a_gaussian_file_the_manifest_does_not_list_is_refused(store, tmp_path):
    """A file that the calibration names without a sha256 in files would load unverified."""
    store = copy_of(store, tmp_path)
    manifest = manifest_of(store)
    del manifest["files"][anomaly.LATENT_FILE]
    (store / "vae" / "1" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=f"calibration detector 'latent_mahalanobis' uses {anomaly.LATENT_FILE}, "
                                         "which has no sha256 in files") as error:
        ModelStore(store)
    assert error.value.kind == "manifest"


@pytest.mark.parametrize("latent, message", [
    (None, "'latent' is a required property"),
    ({"features": ["mean"]}, "'file' is a required property"),
    ({"features": ["mean"], "mean": [0.0], "precision": [[1.0]]}, "'file' is a required property"),  # JSON lists
    ({"features": ["mean"], "file": anomaly.LATENT_FILE, "mean": [0.0]}, "Additional properties are not allowed"),
])
def test_a_latent_entry_without_its_gaussian_file_is_an_invalid_manifest(store, tmp_path, latent, message):
    store = copy_of(store, tmp_path)
    manifest = manifest_of(store)
    entry = manifest["calibration"]["detectors"]["latent_mahalanobis"]
    entry.pop("latent") if latent is None else entry.update(latent=latent)
    (store / "vae" / "1" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="invalid manifest") as error:
        ModelStore(store)
    assert message in str(error.value)


def test_the_writer_refuses_rows_without_their_gaussian_file(store, fitted, tmp_path):
    """--merge --write from rows whose Gaussian file is not beside them (or is JSON lists, rows written before the
    file) stops naming the model, before anything is written."""
    store = copy_of(store, tmp_path / "store")
    before = manifest_of(store)
    gaussian, held_out = fitted
    entry = {**anomaly.calibration_for(held_out, "x", "y", QUANTILES), "latent": anomaly.latent_entry(gaussian)}
    row = {"model": "vae", "calibration": {"latent_mahalanobis": entry}, "default": "latent_mahalanobis"}
    with pytest.raises(SystemExit, match="vae: .*rows.vae.latent_gaussian.safetensors, the latent Gaussian of "
                                         "these rows, is missing"):
        bench.write_manifest(store, row, tmp_path / "rows.json")
    entry["latent"] = gaussian
    with pytest.raises(SystemExit, match="vae: its latent_mahalanobis Gaussian is JSON lists"):
        bench.write_manifest(store, row, tmp_path / "rows.json")
    assert manifest_of(store) == before


def test_a_flow_serves_it_from_its_784_dimensional_z(tiny_flow_store, tmp_path):
    """The tiny NICE (z as large as x, a deterministic encoder: the mean alone, 784 x 784 precision): offered,
    written, loaded and served; the score is the fit's distance of the served z."""
    from training.data import load

    digits = load("mnist5k")
    store = tmp_path / "store"
    shutil.copytree(tiny_flow_store / "nice", store / "nice")
    engine = engine_of(store)
    gaussian = anomaly.latent_gaussian(*posterior(engine, digits.x_train[:1000].astype(np.int64), model="nice"))
    held_out = anomaly.latent_mahalanobis(*posterior(engine, digits.x_test[:40].astype(np.int64), model="nice"),
                                          gaussian)
    assert gaussian["features"] == ["mean"] and np.shape(gaussian["precision"]) == (784, 784)
    write_gaussian(store, "nice", gaussian, held_out, tmp_path)
    assert (store / "nice" / "1" / anomaly.LATENT_FILE).stat().st_size < (784 * 784 + 784) * 4 + 1000  # float32
    engine = engine_of(store)
    m = engine.model("nice")
    assert "latent_mahalanobis" in anomaly.available(m.manifest, m.capability("score"), m.function_inputs)
    x = digits.x_test[40:44].astype(np.int64)
    served = [r["anomaly"]["score"] for r in run(engine.score("nice", x, anomaly_method="latent_mahalanobis"))]
    np.testing.assert_allclose(served, anomaly.latent_mahalanobis(*posterior(engine, x, model="nice"), gaussian),
                               rtol=1e-5)


def test_inputs_far_from_the_training_digits_score_higher_through_the_served_encoder(store, data):
    engine = engine_of(store)
    digits = data.x_test[40:80].astype(np.int64)
    noise = (np.random.default_rng(3).random(digits.shape) < 0.5).astype(np.int64)

    def scores(x):
        results = run(engine.score("vae", x, anomaly_method="latent_mahalanobis"))
        return np.array([r["anomaly"]["score"] for r in results])

    typical = np.quantile(scores(digits), 0.9)
    assert np.median(scores(1 - digits)) > typical and np.median(scores(noise)) > typical


def test_rest_and_grpc_answer_it_named_with_its_held_out_percentile(store, data):
    x = np.concatenate([data.x_test[40:43], np.ones((1, 1, 28, 28), np.int64)]).astype(np.int64)
    entry = engine_of(store).model("vae").manifest["calibration"]["detectors"]["latent_mahalanobis"]
    client = TestClient(create_app(engine_of(store), Settings()))
    rest = client.post("/score", json={"model": "vae", "inputs": x.tolist(), "seed": 3,
                                       "anomaly_method": "latent_mahalanobis"})
    assert rest.status_code == 200, rest.text
    (answer,) = grpc_scores(store, [pb.ScoreRequest(model="vae", inputs=to_tensor(x), seed=3,
                                                    anomaly_method="latent_mahalanobis")])
    for got, b in zip(answer.results, rest.json()["results"], strict=True):
        a, b = got.anomaly, b["anomaly"]
        assert a.method == b["method"] == "latent_mahalanobis"
        assert a.score_kind == b["score_kind"] == anomaly.SCORE_KINDS["latent_mahalanobis"]
        assert a.score == pytest.approx(b["score"], rel=1e-9)
        percentile = float(anomaly.percentile(entry, np.array([b["score"]]))[0])
        assert a.percentile == pytest.approx(b["percentile"]) and b["percentile"] == pytest.approx(percentile)
        assert a.is_anomaly == b["is_anomaly"] == (percentile >= 99.0)


@pytest.mark.parametrize("method", ["latent_mahalanobis", "latent_mahalanobis_typo"])
def test_uncalibrated_or_unknown_is_refused_with_a_4xx_naming_the_field(tiny_vae_store, data, method):
    """The tiny VAE store as exported: its calibration has no latent_mahalanobis entry."""
    x = data.x_test[:2].astype(np.int64)
    rest = TestClient(create_app(engine_of(tiny_vae_store), Settings())).post(
        "/score", json={"model": "vae", "inputs": x.tolist(), "anomaly_method": method})
    assert 400 <= rest.status_code < 500 and rest.json()["error"]["field"] == "anomaly_method"
    assert method in rest.json()["error"]["message"]
    (error,) = grpc_scores(tiny_vae_store, [pb.ScoreRequest(model="vae", inputs=to_tensor(x), anomaly_method=method)])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(error.trailing_metadata() or ())["genserve-error-field"] == "anomaly_method"


@pytest.mark.parametrize("dim, offered", [(32, True), (129, True), (784, True), (-1, False), (None, False)])
def test_a_latent_of_a_fixed_size_is_offered_however_large(tiny_vae_store, dim, offered):
    """A flow's z is as large as x (784): its Gaussian lives in a file, not in the manifest's JSON, so no size caps
    it (it was 128). A dynamic size (-1) or an encoder without a mean output (None) offers none."""
    manifest = json.loads((tiny_vae_store / "vae" / "1" / "manifest.json").read_text())
    for output in manifest["functions"]["encode"]["outputs"]:
        output["shape"] = [-1, dim]
        if dim is None:
            output["name"] = "loc"
    inputs = {name: [t["name"] for t in f["inputs"]] for name, f in manifest["functions"].items()}
    detectors = anomaly.computable(manifest, manifest["capabilities"]["score"], inputs.__getitem__)
    assert ("latent_mahalanobis" in detectors) == offered
