"""The REST API against a deterministic fake engine: every endpoint, every 4xx of the contract, metrics."""

import base64
import io
import math

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api import create_app
from service.api.codecs import array_to_png, png_to_array
from service.engine.errors import InvalidInput, MissingCapability, Overloaded, UnknownModel
from service.settings import Settings

SHAPE = [1, 8, 8]
MODELS = {
    "binary": {"levels": 2, "capabilities": ["complete", "sample", "score"], "num_classes": 10},
    "quad": {"levels": 4, "capabilities": ["sample", "score"], "num_classes": 0},
}
MAX_N, MAX_INPUTS, MAX_BODY = 16, 8, 64 * 1024


class FakeEngine:
    """The Engine interface in deterministic numpy: [1,8,8] images, "binary" (2 levels) and "quad" (4 levels)."""

    def __init__(self, ready: bool = True):
        self.is_ready = ready
        self.calls: list[tuple] = []

    def _model(self, name: str) -> dict:
        if name not in MODELS:
            raise UnknownModel(f"unknown model {name!r}", field="model")
        return MODELS[name]

    def _capability(self, name: str, capability: str) -> dict:
        model = self._model(name)
        if capability not in model["capabilities"]:
            raise MissingCapability(f"model {name!r} cannot {capability}", field="model")
        return model

    @staticmethod
    def _check(x: np.ndarray, levels: int, field: str) -> None:
        if list(x.shape[1:]) != SHAPE:
            raise InvalidInput(f"each input must have shape {SHAPE}", field=field)
        if x.size and (x.min() < 0 or x.max() >= levels):
            raise InvalidInput(f"values must be in 0..{levels - 1}", field=field)

    def ready(self) -> bool:
        return self.is_ready

    def list_models(self) -> list[dict]:
        return [self.describe(name) for name in MODELS]

    def unavailable_models(self) -> list[dict]:
        return []

    def repository_index(self, ready: bool) -> list[dict]:
        """Like the engine's: every V2 model ("<model>.<function>") of every version, READY while ready."""
        return [{"name": f"{name}.{function}", "version": "1", "state": "READY" if ready else "UNAVAILABLE",
                 "reason": "" if ready else "the engine is not ready"}
                for name in MODELS for function in self.describe(name).get("functions", [])]

    def describe(self, name: str) -> dict:
        model = self._model(name)
        return {
            "name": name,
            "version": 1,
            "family": "fake",
            "capabilities": model["capabilities"],
            "data": self.data_spec(name),
            "metrics": {"test_nll_nats": 42.0},
        }

    def function_spec(self, name: str, function: str) -> dict:
        self._model(name)
        raise UnknownModel(f"model {name!r} has no function {function!r}", field="function")

    async def infer(self, name: str, function: str, inputs: dict) -> dict:
        self.function_spec(name, function)

    def data_spec(self, name: str) -> dict:
        model = self._model(name)
        return {"kind": "image", "shape": SHAPE, "levels": model["levels"], "num_classes": model["num_classes"]}

    @staticmethod
    def _fixed_shape(**knobs) -> None:
        """The fake's models are images: like the real engine, they refuse the sequence-model knobs."""
        for field, value in knobs.items():
            if value is not None:
                raise InvalidInput(f"{field}: images have a fixed shape", field=field)

    async def sample(self, name: str, n: int, seed: int, temperature: float, label: int | None,
                     **knobs) -> np.ndarray:
        model = self._capability(name, "sample")
        self._fixed_shape(**knobs)
        self.calls.append(("sample", name, n, seed, temperature, label))
        return np.random.default_rng(seed).integers(0, model["levels"], size=(n, *SHAPE), dtype=np.int64)

    async def sample_stream(self, name: str, n: int, seed: int, temperature: float, label: int | None, **knobs):
        for row in (await self.sample(name, n, seed, temperature, label, **knobs)).transpose(2, 0, 1, 3):
            yield row  # [n, 1, W]: one image row per step

    async def score(self, name: str, x: np.ndarray, labels: list[int | None] | None, *, method: str | None = None,
                    k: int | None = None, refine_steps: int = 0, seed: int = 0,
                    anomaly_method: str | None = None, refine: str = "gradient") -> list[dict]:
        model = self._capability(name, "score")
        self._check(x, model["levels"], "inputs")
        if method not in (None, "exact"):
            raise InvalidInput("method: exact models score by 'exact' only", field="method")
        for field, value in (("k", k), ("refine_steps", refine_steps or None),
                             ("refine", None if refine == "gradient" else refine)):
            if value is not None:  # like the real engine's exact models
                raise InvalidInput(f"{field}: exact models take no {field}", field=field)
        self.calls.append(("score", name, x.copy(), labels))
        results = []
        for row in x:
            nll = 1.0 + 0.5 * float(row.sum())
            anomaly = {"score": nll, "percentile": min(nll, 100.0), "is_anomaly": nll > 20}
            bpd = nll / (math.prod(SHAPE) * math.log(2))
            results.append({"log_likelihood_nats": -nll, "bits_per_dim": bpd, "method": "exact", "anomaly": anomaly})
        return results

    async def complete(
        self, name: str, x: np.ndarray, mask: np.ndarray | None, n: int, seed: int, temperature: float,
        label: int | None = None, **knobs
    ) -> np.ndarray:
        model = self._capability(name, "complete")
        self._fixed_shape(**knobs)
        self._check(x, model["levels"], "inputs")
        if mask is None:
            raise InvalidInput("mask: image completion needs a mask", field="mask")
        self._check(mask, 2, "mask")
        self.calls.append(("complete", name, x.copy(), mask.copy(), n, seed))
        noise = np.random.default_rng(seed).integers(0, model["levels"], size=(len(x), n, *SHAPE), dtype=np.int64)
        return np.where(mask[:, None].astype(bool), x[:, None], noise)  # [B, n, *shape]


def settings() -> Settings:
    return Settings(max_samples_per_request=MAX_N, max_inputs_per_request=MAX_INPUTS, max_body_bytes=MAX_BODY)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client(engine) -> TestClient:
    with TestClient(create_app(engine, settings())) as c:
        yield c


def image(seed: int = 0, levels: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, levels, size=(8, 8))


def png_b64(x: np.ndarray, levels: int = 2) -> str:
    return base64.b64encode(array_to_png(np.asarray(x), levels)).decode()


def assert_error(response, status: int, field: str, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"code", "message"}
    assert field in error["message"], error
    if code is not None:
        assert error["code"] == code
    return error


# --- happy paths ---------------------------------------------------------------------------------------------------


def test_list_and_describe_models(client):
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["binary", "quad"]
    for m in models:
        assert set(m) >= {"name", "version", "family", "capabilities", "data", "metrics"}
    one = client.get("/v1/models/quad").json()
    assert one["data"]["levels"] == 4 and "complete" not in one["capabilities"]


def test_sample_array(client, engine):
    body = client.post("/v1/models/binary/sample", json={"n": 3, "seed": 7, "temperature": 0.5, "label": 3}).json()
    assert (body["model"], body["version"], body["seed"]) == ("binary", 1, 7)
    samples = np.array(body["samples"])
    assert samples.shape == (3, 8, 8) and set(np.unique(samples)) <= {0, 1}
    assert engine.calls[-1] == ("sample", "binary", 3, 7, 0.5, 3)


def test_sample_defaults_draw_and_echo_a_seed(client, engine):
    body = client.post("/v1/models/quad/sample", json={}).json()
    assert len(body["samples"]) == 1 and isinstance(body["seed"], int)
    assert engine.calls[-1][2:] == (1, body["seed"], 1.0, None)
    again = client.post("/v1/models/quad/sample", json={"seed": body["seed"]}).json()
    assert again["samples"] == body["samples"]


def test_same_seed_same_samples(client):
    runs = [client.post("/v1/models/quad/sample", json={"n": 4, "seed": s}).json()["samples"] for s in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_sample_png_matches_array(client):
    as_array = client.post("/v1/models/quad/sample", json={"n": 2, "seed": 3}).json()["samples"]
    as_png = client.post("/v1/models/quad/sample", json={"n": 2, "seed": 3, "format": "png"}).json()["samples"]
    for arr, b64 in zip(as_array, as_png, strict=True):
        picture = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert picture.format == "PNG" and picture.mode == "L" and picture.size == (8, 8)
        assert set(np.unique(np.asarray(picture))) <= {0, 85, 170, 255}
        np.testing.assert_array_equal(png_to_array(base64.b64decode(b64), (1, 8, 8), 4)[0], arr)


def test_score_nested_and_png_inputs(client, engine):
    x = image(1)
    inputs = [x.tolist(), [x.tolist()], png_b64(x), f"data:image/png;base64,{png_b64(x)}"]
    body = client.post("/v1/models/binary/score", json={"inputs": inputs}).json()
    assert (body["model"], body["version"]) == ("binary", 1)
    assert len(body["results"]) == 4
    for result in body["results"]:
        assert set(result) >= {"log_likelihood_nats", "bits_per_dim", "method", "anomaly"}
        assert set(result["anomaly"]) >= {"score", "percentile", "is_anomaly"}
        assert result == body["results"][0]
    sent = engine.calls[-1][2]
    assert sent.shape == (4, 1, 8, 8) and sent.dtype == np.int64
    np.testing.assert_array_equal(sent[2, 0], x)


def test_score_by_body_model_and_labels(client, engine):
    inputs = [image(1).tolist(), image(2).tolist()]
    by_path = client.post("/v1/models/binary/score", json={"inputs": inputs, "labels": [3, None]}).json()
    by_body = client.post("/score", json={"model": "binary", "inputs": inputs, "labels": [3, None]}).json()
    assert by_path == by_body
    assert engine.calls[-1][3] == [3, None]
    overlong = client.post("/score", json={"model": "x" * 5_000, "inputs": inputs})  # not echoed back whole
    assert overlong.status_code == 422 and len(overlong.content) < 2_000
    assert overlong.json()["error"]["field"] == "body.model", overlong.text


def test_complete_keeps_observed_pixels(client):
    xs = [image(1), image(2)]
    mask = np.zeros((8, 8), int)
    mask[:4] = 1  # top half observed
    request = {"inputs": [x.tolist() for x in xs], "mask": mask.tolist(), "n": 3, "seed": 1}
    body = client.post("/v1/models/binary/complete", json=request).json()
    assert (body["model"], body["version"], body["seed"]) == ("binary", 1, 1)
    completions = np.array(body["completions"])
    assert completions.shape == (2, 3, 8, 8)
    for x, per_input in zip(xs, completions, strict=True):
        for c in per_input:
            np.testing.assert_array_equal(c[:4], x[:4])
    assert client.post("/v1/models/binary/complete", json=request).json() == body


def test_complete_mask_per_input_and_png(client, engine):
    xs = [image(1), image(2)]
    masks = [np.eye(8, dtype=int), 1 - np.eye(8, dtype=int)]
    request = {"inputs": [png_b64(x) for x in xs], "mask": [png_b64(m) for m in masks], "seed": 2, "format": "png"}
    body = client.post("/v1/models/binary/complete", json=request).json()
    assert [len(c) for c in body["completions"]] == [1, 1]
    np.testing.assert_array_equal(engine.calls[-1][3][:, 0], np.stack(masks))
    for x, m, (c,) in zip(xs, masks, body["completions"], strict=True):
        out = png_to_array(base64.b64decode(c), (1, 8, 8), 2)[0]
        np.testing.assert_array_equal(out[m == 1], x[m == 1])
    nested = {**request, "mask": [[m.tolist()] for m in masks]}  # per input, each [1,8,8]
    assert client.post("/v1/models/binary/complete", json=nested).json() == body


def test_health_and_readiness():
    engine = FakeEngine(ready=False)
    with TestClient(create_app(engine, settings())) as client:
        assert client.get("/healthz").status_code == 200
        assert_error(client.get("/readyz"), 503, "engine", "not_ready")
        assert [client.head(path).status_code for path in ("/healthz", "/readyz")] == [200, 503]  # probes' HEAD
        engine.is_ready = True
        assert client.get("/readyz").json() == {"status": "ready"}
        assert client.head("/readyz").status_code == 200 and client.head("/metrics").status_code == 200


def test_head_on_the_model_list_answers_as_get_without_a_body(client):
    listed, head = client.get("/v1/models"), client.head("/v1/models")
    assert head.status_code == 200 and head.content == b"", head.text
    assert head.headers["content-length"] == listed.headers["content-length"]


def test_docs_and_openapi(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    operation_ids = [op["operationId"] for path in schema["paths"].values() for op in path.values()]
    assert len(operation_ids) == len(set(operation_ids))  # unique, as OpenAPI requires (HEAD probes stay out)
    assert {"/v1/models", "/v1/models/{name}/sample", "/score", "/v1/models/{name}/complete"} <= set(schema["paths"])
    n = schema["components"]["schemas"]["SampleRequest"]["properties"]["n"]
    assert n["maximum"] == MAX_N


def test_metrics_count_requests(client):
    client.post("/v1/models/binary/sample", json={"n": 1})
    client.post("/v1/models/nope/sample", json={"n": 1})
    client.post("/v1/models/quad/sample", json={"n": MAX_N + 1})  # refused before the handler: still labelled
    text = client.get("/metrics").text
    assert 'genserve_http_requests_total{code="422",endpoint="/v1/models/{name}/sample",model="quad"} 1.0' in text
    assert 'genserve_http_requests_total{code="200",endpoint="/v1/models/{name}/sample",model="binary"} 1.0' in text
    assert 'genserve_http_requests_total{code="404",endpoint="/v1/models/{name}/sample",model=""} 1.0' in text
    assert 'genserve_http_request_duration_seconds_bucket{code="200",endpoint="/v1/models/{name}/sample"' in text
    assert "nope" not in text  # unknown names never become labels


def test_apps_have_separate_registries(engine):
    first, second = TestClient(create_app(engine, settings())), TestClient(create_app(engine, settings()))
    first.get("/v1/models")
    assert 'endpoint="/v1/models"' in first.get("/metrics").text
    assert 'endpoint="/v1/models"' not in second.get("/metrics").text


# --- errors --------------------------------------------------------------------------------------------------------

SCORE = "/v1/models/binary/score"
COMPLETE = "/v1/models/binary/complete"
ROW = [0] * 8
GOOD = [ROW] * 8


@pytest.mark.parametrize(
    "path, body, status, field",
    [
        # wrong shape
        (SCORE, {"inputs": [GOOD, [[0] * 4] * 4]}, 422, "inputs[1]"),
        (SCORE, {"inputs": [[GOOD, GOOD]]}, 422, "inputs[0]"),
        (SCORE, {"inputs": [[ROW] * 7 + [[0] * 7]]}, 422, "inputs[0]"),
        # values out of range
        (SCORE, {"inputs": [[[2] * 8] * 8]}, 422, "inputs[0]"),
        (SCORE, {"inputs": [[[-1] * 8] * 8]}, 422, "inputs[0]"),
        ("/v1/models/quad/score", {"inputs": [GOOD, [[4] * 8] * 8]}, 422, "inputs[1]"),
        ("/v1/models/binary/sample", {"label": 10}, 422, "label"),
        ("/v1/models/quad/sample", {"label": 0}, 422, "label"),
        (SCORE, {"inputs": [GOOD], "labels": [10]}, 422, "labels[0]"),
        (SCORE, {"inputs": [GOOD], "labels": [1, 2]}, 422, "labels"),
        # unknown model, missing capability
        ("/v1/models/nope/sample", {}, 404, "model"),
        ("/score", {"model": "nope", "inputs": [GOOD]}, 404, "model"),
        ("/v1/models/quad/complete", {"inputs": [GOOD], "mask": GOOD}, 400, "complete"),
        # limits
        ("/v1/models/binary/sample", {"n": MAX_N + 1}, 422, "body.n"),
        ("/v1/models/binary/sample", {"n": 0}, 422, "body.n"),
        (COMPLETE, {"inputs": [GOOD], "mask": GOOD, "n": MAX_N + 1}, 422, "body.n"),
        (SCORE, {"inputs": [GOOD] * (MAX_INPUTS + 1)}, 422, "body.inputs"),
        (SCORE, {"inputs": []}, 422, "body.inputs"),
        ("/v1/models/binary/sample", {"temperature": 0}, 422, "body.temperature"),
        ("/v1/models/binary/sample", {"temperature": 10.5}, 422, "body.temperature"),
        ("/v1/models/binary/sample", {"seed": -1}, 422, "body.seed"),
        # non-image base64, and strings that are not base64
        (SCORE, {"inputs": [GOOD, base64.b64encode(b"hello, not a png").decode()]}, 422, "inputs[1]"),
        (SCORE, {"inputs": ["%%% not base64 %%%"]}, 422, "inputs[0]"),
        (SCORE, {"inputs": [base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()]}, 422, "inputs[0]"),
        (SCORE, {"inputs": [png_b64(np.zeros((5, 8), int))]}, 422, "inputs[0]"),
        # wrong types
        ("/v1/models/binary/sample", {"n": "four"}, 422, "body.n"),
        ("/v1/models/binary/sample", {"format": "jpeg"}, 422, "body.format"),
        (SCORE, {"inputs": 5}, 422, "body.inputs"),
        (SCORE, {"inputs": [{"pixels": GOOD}]}, 422, "inputs[0]"),
        (SCORE, {"inputs": [[[0.5] * 8] * 8]}, 422, "inputs[0]"),
        (SCORE, {"inputs": [[[True] * 8] * 8]}, 422, "inputs[0]"),
        (SCORE, {"inputs": [[["0"] * 8] * 8]}, 422, "inputs[0]"),
        (SCORE, {}, 422, "body.inputs"),
        ("/score", {"inputs": [GOOD]}, 422, "body.model"),
        # masks
        (COMPLETE, {"inputs": [GOOD]}, 422, "body.mask"),
        (COMPLETE, {"inputs": [GOOD], "mask": [[1] * 4] * 4}, 422, "mask"),
        (COMPLETE, {"inputs": [GOOD], "mask": [[2] * 8] * 8}, 422, "mask"),
        (COMPLETE, {"inputs": [GOOD, GOOD], "mask": [GOOD, GOOD, GOOD]}, 422, "mask"),
        (COMPLETE, {"inputs": [GOOD], "mask": "not a png"}, 422, "mask"),
        # unknown fields (a misspelling) are refused, not ignored
        ("/v1/models/binary/sample", {"temprature": 0.5}, 422, "body.temprature"),
        (SCORE, {"inputs": [GOOD], "lables": [1]}, 422, "body.lables"),
        ("/score", {"model": "binary", "inputs": [GOOD], "k ": 2}, 422, "body.k "),
        (COMPLETE, {"inputs": [GOOD], "mask": GOOD, "masks": GOOD}, 422, "body.masks"),
        # numbers beyond what the gRPC API can carry (int32), and non-finite ones (the JSON tokens NaN, Infinity)
        ("/v1/models/binary/sample", {"top_k": 2**70}, 422, "body.top_k"),
        ("/v1/models/binary/sample", {"top_k": -5}, 422, "body.top_k"),
        ("/v1/models/binary/sample", {"label": 2**63}, 422, "body.label"),
        (SCORE, {"inputs": [GOOD], "k": 2**64}, 422, "body.k"),
        ("/v1/models/binary/sample", b'{"temperature": NaN}', 422, "body.temperature"),
        ("/v1/models/binary/sample", b'{"seconds": Infinity}', 422, "body.seconds"),
        ("/v1/models/binary/sample", b'{"controls": {"code": Infinity}}', 422, "body.controls.code"),
        ("/v1/models/binary/sample", b'{"controls": {"code": NaN}}', 422, "body.controls.code"),
        ("/v1/models/binary/sample", b'{"controls": {"code": 1e400}}', 422, "body.controls.code"),  # inf
        ("/v1/models/binary/sample", b'{"controls": {"style": [0.5, -Infinity]}}', 422, "body.controls.style"),
    ],
)
def test_bad_requests_name_the_field(client, path, body, status, field):
    """`body`: a dict, or the bytes of a body that JSON.dumps cannot write (NaN, Infinity)."""
    if isinstance(body, bytes):
        assert_error(client.post(path, content=body, headers={"content-type": "application/json"}), status, field)
    else:
        assert_error(client.post(path, json=body), status, field)


def test_an_error_that_echoes_a_lone_surrogate_is_still_a_valid_json_body(client, engine):
    headers = {"content-type": "application/json"}
    for body in (b'{"\\ud800": 1}', b'{"controls": {"\\ud800": 1}}'):  # refused by pydantic, by the engine
        response = client.post("/v1/models/binary/sample", content=body, headers=headers)
        assert response.status_code == 422 and response.json()["error"]["message"]

    async def unknown_control(*_args, **_kwargs):
        raise InvalidInput("controls.\ud800: the model has the controls ['code']", field="controls.\ud800")

    engine.sample = unknown_control
    response = client.post("/v1/models/binary/sample", json={})
    assert response.content.decode("utf-8")  # encodable: no 500 from the error path itself
    assert assert_error(response, 422, "controls.\\ud800: the model has", "invalid_input")["field"] == \
        "controls.\\ud800"


def test_unmatched_v2_routes_answer_in_the_v2_error_format(client):
    for response, status in ((client.get("/v2/nothing"), 404), (client.get("/v2/models/binary.f/infer"), 405)):
        assert response.status_code == status
        body = response.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "/v2/nothing" in client.get("/v2/nothing").json()["error"]


def test_invalid_json(client):
    response = client.post(SCORE, content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert_error(response, 422, "body", "invalid_request")


def test_oversized_body_is_413(client):
    big = {"inputs": [GOOD] * 2000}  # ~ 300 kB
    assert_error(client.post(SCORE, json=big), 413, "body", "payload_too_large")

    def chunks():  # no Content-Length: counted while reading
        yield b'{"inputs": ['
        for _ in range(200):
            yield b"[" + b"0," * 500 + b"0],"
        yield b"[0]]}"

    json_type = {"Content-Type": "application/json"}
    assert_error(client.post(SCORE, content=chunks(), headers=json_type), 413, "body", "payload_too_large")
    assert 'code="413"' in client.get("/metrics").text


@pytest.mark.parametrize("body, why", [(b'{"n": 1, "seed": "\xff"}', "can't decode byte 0xff"),
                                       (b'{"n": ' + b"9" * 5000 + b"}", "4300")])
def test_a_body_python_cannot_read_as_json_names_the_body_and_why(client, body, why):
    response = client.post("/v1/models/binary/sample", content=body, headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, "body: cannot be read as JSON: ", "bad_request")
    assert error["field"] == "body" and why in error["message"] and "sys." not in error["message"], error


def test_unknown_route_and_method(client):
    assert_error(client.get("/v1/nothing"), 404, "/v1/nothing", "not_found")
    error = assert_error(client.get("/v1/models/binary/sample"), 405, "GET", "method_not_allowed")
    assert "method" in error["message"]


def test_engine_errors_keep_their_status_and_field(client, engine):
    async def overloaded(*_args, **_kwargs):
        raise Overloaded("queue is full", field="model")

    async def invalid(*_args, **_kwargs):
        raise InvalidInput("values must be integers in 0..1", field="inputs[3]")

    engine.sample = overloaded
    response = client.post("/v1/models/binary/sample", json={})
    assert_error(response, 503, "queue is full", "overloaded")
    assert response.headers["retry-after"]
    engine.score = invalid
    error = assert_error(client.post(SCORE, json={"inputs": [GOOD]}), 422, "inputs[3]", "invalid_input")
    assert error["field"] == "inputs[3]"


def test_unexpected_error_is_a_logged_500(engine, caplog):
    async def broken(*_args, **_kwargs):
        raise RuntimeError("bug")

    engine.sample = broken
    with TestClient(create_app(engine, settings()), raise_server_exceptions=False) as client:
        response = client.post("/v1/models/binary/sample", json={})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal"
    assert "bug" in caplog.text
