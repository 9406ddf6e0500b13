"""The Open Inference Protocol (KServe V2) over REST and gRPC, against a real Engine on the tiny PixelCNN store.

REST: the /v2 router in a bare FastAPI app (TestClient). gRPC: the servicer on a
grpc.aio server in a background thread, called through the committed stubs.
Inference must equal the engine's own exact log-likelihoods.

This module imports service.grpc.gen_inference, whose `inference.*` messages
clash with tritonclient.grpc's copy in protobuf's default pool: tritonclient is
only ever run in subprocesses (tests/e2e/test_tritonclient.py).
"""

import asyncio
import gzip
import json
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import genserve
from service.api import v2
from service.engine.engine import Engine
from service.engine.errors import Overloaded
from service.grpc.gen_inference import grpc_predict_v2_pb2 as pb
from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as pb_grpc
from service.grpc.inference import SERVICE_NAME, add_inference_servicer
from service.settings import Settings
from service.store import ModelStore

MODEL = "pixelcnn"
LOG_PROB = f"{MODEL}.log_prob"
GIVEN_LABEL = f"{MODEL}.log_prob_given_label"
SHAPE = [1, 28, 28]
TIMEOUT_S = 30.0
RTOL = 1e-5


def new_engine(store) -> Engine:
    return Engine(ModelStore(store), Settings(runtime="onnx", intra_op_threads=1))


@pytest.fixture(scope="module")
def engine(tiny_store) -> Engine:
    return new_engine(tiny_store)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """[3, 1, 28, 28] int64 binarized mnist5k test digits."""
    from training.data import mnist5k_binarized

    return mnist5k_binarized().x_test[:3].astype(np.int64)


@pytest.fixture(scope="module")
def expected(engine, images) -> np.ndarray:
    """The engine's exact log-likelihoods (nats) of `images`, unconditional."""
    return np.array([r["log_likelihood_nats"] for r in asyncio.run(engine.score(MODEL, images))])


@pytest.fixture(scope="module")
def expected_given(engine, images) -> np.ndarray:
    """The engine's log p(x | label) with labels 0, 1, 2."""
    results = asyncio.run(engine.score(MODEL, images, labels=[0, 1, 2]))
    return np.array([r["log_likelihood_nats"] for r in results])


def app_over(engine) -> FastAPI:
    app = FastAPI()
    app.include_router(v2.router(engine))
    return app


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(app_over(engine)) as c:
        yield c


class Proxy:
    """The real engine, with some methods replaced."""

    def __init__(self, engine, **overrides):
        self._engine, self._overrides = engine, overrides

    def __getattr__(self, name):
        return self._overrides.get(name) or getattr(self._engine, name)


def tensor(name: str, x: np.ndarray, datatype: str = "INT64", nested: bool = False) -> dict:
    return {"name": name, "shape": list(x.shape), "datatype": datatype,
            "data": x.tolist() if nested else x.ravel().tolist()}


def infer(client, body: dict, model: str = LOG_PROB, **kwargs):
    return client.post(f"/v2/models/{model}/infer", json=body, **kwargs)


def v2_error(response, status: int) -> str:
    """The V2 error format: the status, and {"error": "<message>"} and nothing else."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


# --- REST: health, metadata, repository ------------------------------------------------------------------------------


def test_server_metadata_and_health(client):
    assert client.get("/v2").json() == {"name": "genserve", "version": genserve.__version__,
                                        "extensions": ["binary_tensor_data"]}
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_model_metadata(client, engine):
    meta = client.get(f"/v2/models/{LOG_PROB}").json()
    version = str(engine.describe(MODEL)["version"])
    assert meta == {
        "name": LOG_PROB, "versions": [version], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "INT64", "shape": [-1, *SHAPE]}],
        "outputs": [{"name": "log_prob", "datatype": "FP32", "shape": [-1]}],
    }
    assert client.get(f"/v2/models/{LOG_PROB}/versions/{version}").json() == meta
    given = client.get(f"/v2/models/{GIVEN_LABEL}").json()
    assert given["inputs"] == [{"name": "x", "datatype": "INT64", "shape": [-1, *SHAPE]},
                               {"name": "label", "datatype": "INT64", "shape": [-1]}]


def test_model_ready(client, engine):
    version = str(engine.describe(MODEL)["version"])
    assert client.get(f"/v2/models/{LOG_PROB}/ready").status_code == 200
    assert client.get(f"/v2/models/{LOG_PROB}/versions/{version}/ready").status_code == 200
    assert "model_name" in v2_error(client.get("/v2/models/nomodel.log_prob/ready"), 404)
    assert "model_name" in v2_error(client.get(f"/v2/models/{MODEL}/ready"), 404)  # no function part
    assert "no function 'nope'" in v2_error(client.get(f"/v2/models/{MODEL}.nope"), 404)
    assert "model_version" in v2_error(client.get(f"/v2/models/{LOG_PROB}/versions/99/ready"), 404)
    assert "model_version" in v2_error(client.get(f"/v2/models/{LOG_PROB}/versions/99"), 404)


def test_not_ready_engine_answers_4xx(engine):
    with TestClient(app_over(Proxy(engine, ready=lambda: False))) as c:
        assert c.get("/v2/health/live").status_code == 200
        v2_error(c.get("/v2/health/ready"), 400)
        v2_error(c.get(f"/v2/models/{LOG_PROB}/ready"), 400)
        index = c.post("/v2/repository/index").json()
        assert index and all(m["state"] == "UNAVAILABLE" and m["reason"] for m in index)
        assert c.post("/v2/repository/index", json={"ready": True}).json() == []


def test_repository_index(client, engine):
    version = str(engine.describe(MODEL)["version"])
    functions = engine.model(MODEL).manifest["functions"]
    index = client.post("/v2/repository/index").json()  # tritonclient posts an empty body
    assert index == [{"name": f"{MODEL}.{f}", "version": version, "state": "READY", "reason": ""} for f in functions]
    assert client.post("/v2/repository/index", json={"ready": True}).json() == index
    v2_error(client.post("/v2/repository/index", content=b"[not json"), 400)


# --- REST: inference -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True])
def test_infer_json_equals_engine_score(client, engine, images, expected, nested):
    response = infer(client, {"id": "req-1", "inputs": [tensor("x", images, nested=nested)]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == LOG_PROB and body["id"] == "req-1"
    assert body["model_version"] == str(engine.describe(MODEL)["version"])
    [out] = body["outputs"]
    assert out["name"] == "log_prob" and out["datatype"] == "FP32" and out["shape"] == [len(images)]
    np.testing.assert_allclose(out["data"], expected, rtol=RTOL)


def test_infer_versioned_path_and_requested_output(client, engine, images, expected):
    version = engine.describe(MODEL)["version"]
    response = client.post(f"/v2/models/{LOG_PROB}/versions/{version}/infer",
                           json={"inputs": [tensor("x", images)], "outputs": [{"name": "log_prob"}]})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["outputs"][0]["data"], expected, rtol=RTOL)
    assert "model_version" in v2_error(client.post(f"/v2/models/{LOG_PROB}/versions/99/infer",
                                                   json={"inputs": [tensor("x", images)]}), 404)


def test_infer_with_labels_equals_conditional_score(client, images, expected_given):
    body = {"inputs": [tensor("x", images), tensor("label", np.array([0, 1, 2]))]}
    response = infer(client, body, model=GIVEN_LABEL)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["outputs"][0]["data"], expected_given, rtol=RTOL)


def binary_request(client, header: dict, binary: bytes, **headers):
    head = json.dumps(header).encode()
    return client.post(f"/v2/models/{LOG_PROB}/infer", content=head + binary,
                       headers={"Inference-Header-Content-Length": str(len(head)), **headers})


def test_infer_binary_tensor_data_extension(client, images, expected):
    header = {"inputs": [{"name": "x", "shape": list(images.shape), "datatype": "INT64",
                          "parameters": {"binary_data_size": images.nbytes}}],
              "parameters": {"binary_data_output": True}}
    response = binary_request(client, header, images.astype("<i8").tobytes())
    assert response.status_code == 200, response.text
    n = int(response.headers["Inference-Header-Content-Length"])
    [out] = json.loads(response.content[:n])["outputs"]
    assert out["parameters"]["binary_data_size"] == 4 * len(images) and "data" not in out
    np.testing.assert_allclose(np.frombuffer(response.content[n:], "<f4"), expected, rtol=RTOL)

    header["outputs"] = [{"name": "log_prob", "parameters": {"binary_data": False}}]  # binary in, JSON out
    response = binary_request(client, header, images.astype("<i8").tobytes())
    assert "Inference-Header-Content-Length" not in response.headers
    np.testing.assert_allclose(response.json()["outputs"][0]["data"], expected, rtol=RTOL)

    message = v2_error(binary_request(client, header, images.astype("<i8").tobytes()[:-8]), 400)
    assert message.startswith("x:") and "binary_data_size" in message


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_infer_compressed_body(client, images, expected, encoding):
    body = json.dumps({"inputs": [tensor("x", images)]}).encode()
    body = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    response = client.post(f"/v2/models/{LOG_PROB}/infer", content=body, headers={"Content-Encoding": encoding})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["outputs"][0]["data"], expected, rtol=RTOL)


def test_content_coding_names_are_case_insensitive_and_trailing_bytes_are_refused(client, images, expected):
    body = gzip.compress(json.dumps({"inputs": [tensor("x", images)]}).encode())
    response = client.post(f"/v2/models/{LOG_PROB}/infer", content=body, headers={"Content-Encoding": " GZip"})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["outputs"][0]["data"], expected, rtol=RTOL)
    for tail in (b"junk", gzip.compress(b" ")):  # bytes after the stream, or a second gzip member
        response = client.post(f"/v2/models/{LOG_PROB}/infer", content=body + tail,
                               headers={"Content-Encoding": "gzip"})
        assert "after the gzip stream" in v2_error(response, 400)


def test_an_empty_outputs_list_answers_every_output_as_grpc_does(client, images, expected):
    response = infer(client, {"inputs": [tensor("x", images)], "outputs": []})
    assert response.status_code == 200, response.text
    assert [o["name"] for o in response.json()["outputs"]] == ["log_prob"]
    np.testing.assert_allclose(response.json()["outputs"][0]["data"], expected, rtol=RTOL)


def test_compressed_body_is_bounded_once_inflated(client, engine):
    bomb = gzip.compress(b" " * (engine.settings.max_body_bytes + 1))  # a few kB that inflate past the limit
    response = client.post(f"/v2/models/{LOG_PROB}/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert v2_error(response, 413).startswith("body:")
    response = client.post(f"/v2/models/{LOG_PROB}/infer", content=b"{}", headers={"Content-Encoding": "br"})
    assert v2_error(response, 400).startswith("Content-Encoding:")


def test_bad_shapes_are_400_naming_the_input(client, images):
    cropped = images[:, :, :, :27]
    assert v2_error(infer(client, {"inputs": [tensor("x", cropped)]}), 400).startswith("x:")
    flat = images.reshape(len(images), -1)
    assert v2_error(infer(client, {"inputs": [tensor("x", flat)]}), 400).startswith("x:")
    wrong_count = {**tensor("x", images), "shape": [len(images) + 1, *SHAPE]}
    assert v2_error(infer(client, {"inputs": [wrong_count]}), 400).startswith("x.data:")
    negative = {**tensor("x", images), "shape": [-1, *SHAPE]}
    assert v2_error(infer(client, {"inputs": [negative]}), 400).startswith("x.shape:")
    labels = np.array([0, 1])  # 2 labels for 3 images
    message = v2_error(infer(client, {"inputs": [tensor("x", images), tensor("label", labels)]}, GIVEN_LABEL), 400)
    assert message.startswith("label: batch size")


@pytest.mark.parametrize(("body", "field"), [
    ({"inputs": [{"name": "x", "shape": [1, *SHAPE], "datatype": "FP32", "data": [0.0] * 784}]}, "x:"),
    ({"inputs": [{"name": "x", "shape": [1, *SHAPE], "datatype": "INT64", "data": [0.5] * 784}]}, "x.data:"),
    ({"inputs": [{"name": "x", "shape": [1, *SHAPE], "datatype": "INT64"}]}, "x.data:"),
    ({"inputs": [{"name": "y", "shape": [1], "datatype": "INT64", "data": [0]}]}, "inputs[0].name:"),
    ({"inputs": []}, "inputs: "),
    ({"inputs": [{"name": "x", "shape": [1, *SHAPE], "datatype": "INT64", "data": [0] * 784}], "parameters": [1]},
     "parameters:"),
    ({"inputs": [{"name": "x", "shape": [1, *SHAPE], "datatype": "INT64", "parameters": 3}]}, "x.parameters:"),
    ({"inputs": "x"}, "inputs:"),
    ({"inputs": [{"name": "x", "shape": [1, *SHAPE], "datatype": "INT64", "data": [0] * 784}],
      "outputs": [{"name": "nll"}]}, "outputs[0].name:"),
])
def test_bad_requests_are_400_naming_the_field(client, body, field):
    assert v2_error(infer(client, body), 400).startswith(field)


DEEP = "[" * 990 + "]" * 990  # parses (orjson allows 1,024 levels), but its full repr overflows the stack
X = json.dumps({"name": "x", "shape": [1, *SHAPE], "datatype": "INT64", "data": [0] * 784})


@pytest.mark.parametrize(("template", "field"), [  # @X: a good input x; @DEEP: the nested list
    ('{"inputs": [@X], "outputs": [@DEEP]}', "outputs[0]:"),
    ('{"inputs": [@X], "outputs": [{"name": @DEEP}]}', "outputs[0].name:"),
    ('{"inputs": [{"name": "x", "shape": @DEEP, "datatype": "INT64", "data": [0]}]}', "x.shape:"),
    ('{"inputs": [{"name": "x", "shape": [1, 1], "datatype": @DEEP, "data": [0]}]}', "x:"),
    ('{"inputs": [@X], "parameters": {"binary_data_output": @DEEP}}', "parameters.binary_data_output:"),
])
def test_a_deeply_nested_value_is_quoted_briefly_in_a_400(client, template, field):
    body = template.replace("@X", X).replace("@DEEP", DEEP)
    response = client.post(f"/v2/models/{LOG_PROB}/infer", content=body, headers={"Content-Type": "application/json"})
    message = v2_error(response, 400)
    assert message.startswith(field) and "[[[[...]]]]" in message and len(message) < 200


def test_missing_input_names_it(client, images):
    assert "label" in v2_error(infer(client, {"inputs": [tensor("x", images)]}, GIVEN_LABEL), 400)


def test_invalid_json_and_unknown_model(client, images):
    response = client.post(f"/v2/models/{LOG_PROB}/infer", content=b"{nope",
                           headers={"Content-Type": "application/json"})
    assert v2_error(response, 400).startswith("body:")
    assert "model_name" in v2_error(infer(client, {"inputs": [tensor("x", images)]}, "nomodel.f"), 404)


def post_raw(client, body: bytes, model: str = LOG_PROB):
    return client.post(f"/v2/models/{model}/infer", content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(("shape", "field"), [
    ([0, *SHAPE], "x.shape:"),  # nothing to infer
    ([0, 2**62, 28, 28], "x.shape:"),  # a product numpy cannot reshape to
    ([1] * 70, "x.shape:"),  # more dimensions than numpy has
])
def test_empty_or_absurd_shapes_are_400(client, shape, field):
    assert v2_error(infer(client, {"inputs": [{"name": "x", "shape": shape, "datatype": "INT64", "data": []}]}),
                    400).startswith(field)


def test_json_that_python_cannot_parse_is_400(client):
    deep = b"[" * 10_000 + b"]" * 10_000
    long_integer = b'{"inputs": [{"name": "x", "shape": [' + b"9" * 5000 + b'], "datatype": "INT64", "data": []}]}'
    for body in (deep, long_integer):
        assert v2_error(post_raw(client, body), 400).startswith("body:")


def test_non_finite_float_inputs_are_400_naming_the_input(client):
    step = f"{MODEL}.sample_step"
    for value in (b"NaN", b"Infinity", b"1e39"):  # 1e39 is finite JSON, but no FP32
        body = b'{"inputs": [{"name": "temperature", "shape": [1], "datatype": "FP32", "data": [%s]}]}' % value
        assert v2_error(post_raw(client, body, step), 400).startswith("temperature: values must be finite")
    binary = json.dumps({"inputs": [{"name": "noise", "shape": [1, 28], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 112}}]}).encode()
    response = client.post(f"/v2/models/{step}/infer", content=binary + np.full(28, np.inf, "<f4").tobytes(),
                           headers={v2.HEADER_LENGTH: str(len(binary))})
    assert v2_error(response, 400).startswith("noise: values must be finite")


def test_non_finite_outputs_are_400_never_bare_nan_tokens(engine, images):
    async def overflowing(*_args, **_kwargs):
        return {"log_prob": np.array([np.nan, -np.inf, 0.0], np.float32)}

    with TestClient(app_over(Proxy(engine, infer=overflowing))) as c:
        for parameters in ({}, {"binary_data_output": True}):
            response = infer(c, {"inputs": [tensor("x", images)], "parameters": parameters})
            assert v2_error(response, 400).startswith("inputs: the model's output 'log_prob' is not finite")


def test_overload_is_503_with_retry_after(engine, images):
    async def full(*_args, **_kwargs):
        raise Overloaded("queue full (256 rows); retry later", field="inputs")

    with TestClient(app_over(Proxy(engine, infer=full))) as c:
        response = infer(c, {"inputs": [tensor("x", images)]})
        assert "queue full" in v2_error(response, 503)
        assert response.headers["Retry-After"] == "1"


# --- gRPC ------------------------------------------------------------------------------------------------------------


@contextmanager
def grpc_serving(engine) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """A GRPCInferenceService stub on a grpc.aio server over `engine`, in its own event loop thread, on 127.0.0.1."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        server = grpc.aio.server()
        assert add_inference_servicer(server, engine) == SERVICE_NAME == "inference.GRPCInferenceService"
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=TIMEOUT_S)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
        yield pb_grpc.GRPCInferenceServiceStub(channel)
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(timeout=TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def stub(tiny_store):
    with grpc_serving(new_engine(tiny_store)) as s:  # its own engine: schedulers belong to one event loop
        yield s


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT_S)
    return info.value


def raw_request(x: np.ndarray, model: str = LOG_PROB, **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name="x", datatype="INT64", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<i8").tobytes())
    return request


def test_grpc_health_and_metadata(stub, engine):
    version = str(engine.describe(MODEL)["version"])
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT_S).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT_S).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=LOG_PROB), timeout=TIMEOUT_S).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=LOG_PROB, version=version), timeout=TIMEOUT_S).ready
    server = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=TIMEOUT_S)
    assert (server.name, server.version, list(server.extensions)) == ("genserve", genserve.__version__,
                                                                      ["binary_tensor_data"])
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=LOG_PROB), timeout=TIMEOUT_S)
    assert (meta.name, list(meta.versions), meta.platform) == (LOG_PROB, [version], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "INT64", [-1, *SHAPE])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("log_prob", "FP32", [-1])]
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=TIMEOUT_S)
    functions = engine.model(MODEL).manifest["functions"]
    assert [(m.name, m.version, m.state) for m in index.models] == [(f"{MODEL}.{f}", version, "READY")
                                                                     for f in functions]


def test_grpc_unknown_models_are_not_found(stub):
    error = rpc_error(stub.ModelReady, pb.ModelReadyRequest(name="nomodel.log_prob"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details().startswith("name:")
    error = rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name=LOG_PROB, version="99"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details().startswith("version:")
    error = rpc_error(stub.ModelInfer, pb.ModelInferRequest(model_name=f"{MODEL}.nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details().startswith("model_name:")


def test_grpc_raw_infer_equals_engine_score(stub, engine, images, expected):
    response = stub.ModelInfer(raw_request(images, id="r1"), timeout=TIMEOUT_S)
    assert (response.model_name, response.id) == (LOG_PROB, "r1")
    assert response.model_version == str(engine.describe(MODEL)["version"])
    [out] = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("log_prob", "FP32", [len(images)])
    assert not out.HasField("contents") and len(response.raw_output_contents) == 1
    np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], "<f4"), expected, rtol=RTOL)


def test_grpc_typed_contents_infer(stub, images, expected_given):
    request = pb.ModelInferRequest(model_name=GIVEN_LABEL)
    request.inputs.add(name="x", datatype="INT64", shape=list(images.shape)).contents.int64_contents.extend(
        images.ravel().tolist())
    request.inputs.add(name="label", datatype="INT64", shape=[3]).contents.int64_contents.extend([0, 1, 2])
    request.outputs.add(name="log_prob")
    response = stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert len(response.raw_output_contents) == 0
    np.testing.assert_allclose(list(response.outputs[0].contents.fp32_contents), expected_given, rtol=RTOL)


def test_grpc_bad_requests_are_invalid_argument_naming_the_field(stub, images):
    cases = [
        (raw_request(images[:, :, :, :27]), "x:"),
        (raw_request(images, outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="nll")]),
         "outputs[0].name:"),
    ]
    short = raw_request(images)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-8]
    cases.append((short, "x: raw_input_contents[0]"))
    wrong_type = raw_request(images)
    wrong_type.inputs[0].datatype = "FP32"
    cases.append((wrong_type, "x: datatype"))
    extra = raw_request(images)
    extra.raw_input_contents.append(b"")
    cases.append((extra, "raw_input_contents:"))
    typed = pb.ModelInferRequest(model_name=LOG_PROB)
    typed.inputs.add(name="x", datatype="INT64", shape=list(images.shape)).contents.int64_contents.extend([0, 1])
    cases.append((typed, "x.contents.int64_contents:"))
    mismatched = raw_request(images, model=GIVEN_LABEL)
    mismatched.inputs.add(name="label", datatype="INT64", shape=[2])
    mismatched.raw_input_contents.append(np.array([0, 1], "<i8").tobytes())
    cases.append((mismatched, "label: batch size"))
    missing = pb.ModelInferRequest(model_name=GIVEN_LABEL, inputs=list(raw_request(images).inputs),
                                   raw_input_contents=list(raw_request(images).raw_input_contents))
    cases.append((missing, "inputs: log_prob_given_label needs input 'label'"))
    for request, field in cases:
        error = rpc_error(stub.ModelInfer, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert error.details().startswith(field), error.details()


def test_grpc_empty_or_absurd_shapes_and_non_finite_inputs_are_invalid_argument(stub):
    cases = []
    for shape in ([0, *SHAPE], [0, 2**62, 28, 28], [1] * 70):
        request = pb.ModelInferRequest(model_name=LOG_PROB, raw_input_contents=[b""])
        request.inputs.add(name="x", datatype="INT64", shape=shape)
        cases.append((request, "x.shape:"))
    for value in (np.nan, np.inf):
        request = pb.ModelInferRequest(model_name=f"{MODEL}.sample_step")
        request.inputs.add(name="temperature", datatype="FP32", shape=[1]).contents.fp32_contents.append(value)
        cases.append((request, "temperature: values must be finite"))
    for request, field in cases:
        error = rpc_error(stub.ModelInfer, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(field), \
            error.details()


def test_grpc_non_finite_outputs_are_invalid_argument(engine, images):
    async def overflowing(*_args, **_kwargs):
        return {"log_prob": np.array([np.nan, -np.inf, 0.0], np.float32)}

    with grpc_serving(Proxy(engine, infer=overflowing)) as s:
        error = rpc_error(s.ModelInfer, raw_request(images))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("inputs: the model's output 'log_prob' is not finite")


def test_grpc_overload_is_resource_exhausted_with_retry_after(engine, images):
    async def full(*_args, **_kwargs):
        raise Overloaded("queue full (256 rows); retry later", field="inputs")

    with grpc_serving(Proxy(engine, infer=full)) as s:
        error = rpc_error(s.ModelInfer, raw_request(images))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error.details().startswith("inputs:")
    assert ("retry-after", "1") in tuple(error.trailing_metadata())


def test_grpc_not_ready_engine(engine):
    with grpc_serving(Proxy(engine, ready=lambda: False)) as s:
        assert s.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT_S).live
        assert not s.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT_S).ready
        assert not s.ModelReady(pb.ModelReadyRequest(name=LOG_PROB), timeout=TIMEOUT_S).ready
        assert not s.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=TIMEOUT_S).models
