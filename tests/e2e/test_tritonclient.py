"""Open Inference Protocol conformance: unmodified tritonclient (http and grpc) against a real genserve server.

The server is `genserve serve` over the tiny PixelCNN store, on free ports of
127.0.0.1 (/v2 over REST, inference.GRPCInferenceService over gRPC). tritonclient
runs in a client subprocess: its `inference.*` protobuf messages clash with
genserve's own stubs in protobuf's default descriptor pool, so the two never
share a process. Inference must equal the engine's exact
log-likelihoods. Every wait is bounded.
"""

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.test_drain import start_server
from tests.e2e.test_server import free_port, stop, wait_ready

REPO = Path(__file__).resolve().parents[2]
MODEL = "pixelcnn"
LOG_PROB = f"{MODEL}.log_prob"
CLIENT_TIMEOUT_S = 120.0
RTOL = 1e-5

CLIENT = r"""
import json, sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

http_url, grpc_url, images_file, out_file = sys.argv[1:5]
images = np.load(images_file)
MODEL = "pixelcnn.log_prob"
T = 30  # seconds, every call
results = {}


def error(call):
    try:
        call()
    except InferenceServerException as e:
        return {"status": str(e.status()), "message": e.message()}
    return None


def infer(client, module, binary, **kwargs):
    x = module.InferInput("x", list(images.shape), "INT64")
    x.set_data_from_numpy(images, **({} if binary is None else {"binary_data": binary}))
    outputs = [module.InferRequestedOutput("log_prob", **({} if binary is None else {"binary_data": binary}))]
    default = client.infer(MODEL, [x], **kwargs)  # no outputs named: every output
    named = client.infer(MODEL, [x], outputs=outputs, model_version="1", request_id="req-7", **kwargs)
    return {"default": default.as_numpy("log_prob").tolist(), "named": named.as_numpy("log_prob").tolist(),
            "dtype": str(named.as_numpy("log_prob").dtype), "id": named.get_response(**(
                {"as_json": True} if module is grpcclient else {})).get("id")}


def bad_shape(client, module, **kwargs):
    x = module.InferInput("x", [len(images), 1, 28, 27], "INT64")
    x.set_data_from_numpy(np.ascontiguousarray(images[:, :, :, :27]))
    return error(lambda: client.infer(MODEL, [x], **kwargs))


http = httpclient.InferenceServerClient(http_url, connection_timeout=T, network_timeout=T)
results["http"] = {
    "live": http.is_server_live(), "ready": http.is_server_ready(),
    "model_ready": http.is_model_ready(MODEL), "model_ready_v1": http.is_model_ready(MODEL, "1"),
    "unknown_ready": http.is_model_ready("nomodel.log_prob"),
    "server": http.get_server_metadata(), "model": http.get_model_metadata(MODEL),
    "index": http.get_model_repository_index(),
    "infer": infer(http, httpclient, None), "infer_json": infer(http, httpclient, False),
    "bad_shape": bad_shape(http, httpclient),
    "unknown_model": error(lambda: http.get_model_metadata("nomodel.log_prob")),
}
http.close()

g = grpcclient.InferenceServerClient(grpc_url)
results["grpc"] = {
    "live": g.is_server_live(client_timeout=T), "ready": g.is_server_ready(client_timeout=T),
    "model_ready": g.is_model_ready(MODEL, client_timeout=T),
    "model_ready_v1": g.is_model_ready(MODEL, "1", client_timeout=T),
    "server": g.get_server_metadata(as_json=True, client_timeout=T),
    "model": g.get_model_metadata(MODEL, as_json=True, client_timeout=T),
    "index": g.get_model_repository_index(as_json=True, client_timeout=T),
    "infer": infer(g, grpcclient, None, client_timeout=T),
    "bad_shape": bad_shape(g, grpcclient, client_timeout=T),
    "unknown_model": error(lambda: g.get_model_metadata("nomodel.log_prob", client_timeout=T)),
}
g.close()
with open(out_file, "w") as f:
    json.dump(results, f)
"""

WIRE = r"""
import json
from tritonclient.grpc import service_pb2

def fields(d):
    out = {d.full_name: sorted((f.name, f.number, f.type) for f in d.fields)}
    for nested in d.nested_types:
        out.update(fields(nested))
    return out

result = {}
for message in service_pb2.DESCRIPTOR.message_types_by_name.values():
    result.update(fields(message))
methods = {m.name: [m.input_type.full_name, m.output_type.full_name]
           for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
print(json.dumps({"messages": result, "methods": methods}))
"""


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    clean.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return clean


@pytest.fixture(scope="module")
def servers(tiny_store, tmp_path_factory) -> dict[str, str]:
    """{"http": "127.0.0.1:P", "grpc": "127.0.0.1:Q"} of a running `genserve serve`, stopped at teardown."""
    logs = tmp_path_factory.mktemp("v2-server")
    port, grpc_port = free_port(), free_port()
    process = start_server(tiny_store, port, grpc_port, logs)
    try:
        wait_ready(process, f"http://127.0.0.1:{port}", logs)
        yield {"http": f"127.0.0.1:{port}", "grpc": f"127.0.0.1:{grpc_port}"}
    finally:
        stop(process)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """[2, 1, 28, 28] int64 binarized mnist5k test digits."""
    from training.data import mnist5k_binarized

    return mnist5k_binarized().x_test[:2].astype(np.int64)


@pytest.fixture(scope="module")
def expected(tiny_store, images) -> list[float]:
    """The engine's own exact log-likelihoods of `images`, in this process."""
    from service.engine.engine import Engine
    from service.settings import Settings
    from service.store import ModelStore

    engine = Engine(ModelStore(tiny_store), Settings(runtime="onnx", intra_op_threads=1))
    return [r["log_likelihood_nats"] for r in asyncio.run(engine.score(MODEL, images))]


@pytest.fixture(scope="module")
def results(servers, images, tmp_path_factory) -> dict:
    """What unmodified tritonclient (http, then grpc) saw, from a client subprocess."""
    if importlib.util.find_spec("tritonclient") is None:  # finds without importing it
        pytest.fail("tritonclient is not installed: pip install --no-deps tritonclient, then its http/grpc "
                    "dependencies except protobuf (it pins protobuf<7; genserve's stubs need >=7.35.1)")
    work = tmp_path_factory.mktemp("v2-client")
    np.save(work / "images.npy", images)
    out = work / "results.json"
    done = subprocess.run([sys.executable, "-c", CLIENT, servers["http"], servers["grpc"], str(work / "images.npy"),
                           str(out)], cwd=REPO, env=env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=CLIENT_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_health_and_readiness(results, kind):
    r = results[kind]
    assert r["live"] is True and r["ready"] is True
    assert r["model_ready"] is True and r["model_ready_v1"] is True


def test_unknown_model_is_not_ready_over_http(results):
    assert results["http"]["unknown_ready"] is False


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_server_metadata(results, kind):
    import genserve

    server = results[kind]["server"]
    assert server["name"] == "genserve" and server["version"] == genserve.__version__
    assert "binary_tensor_data" in server["extensions"]


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_model_metadata(results, kind):
    model = results[kind]["model"]
    assert model["name"] == LOG_PROB and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    def shapes(tensors: list[dict]) -> list[tuple]:
        return [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in tensors]

    assert shapes(model["inputs"]) == [("x", "INT64", [-1, 1, 28, 28])]  # grpc's JSON writes int64 as strings
    assert shapes(model["outputs"]) == [("log_prob", "FP32", [-1])]


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_list_models(results, kind):
    index = results[kind]["index"]
    models = index if kind == "http" else index["models"]
    names = {m["name"] for m in models}
    assert {LOG_PROB, f"{MODEL}.log_prob_given_label", f"{MODEL}.sample_step"} <= names
    assert all(m["state"] == "READY" and m["version"] == "1" for m in models)


@pytest.mark.parametrize(("kind", "mode"), [("http", "infer"), ("http", "infer_json"), ("grpc", "infer")])
def test_infer_equals_engine_log_likelihood(results, expected, kind, mode):
    r = results[kind][mode]
    assert r["dtype"] == "float32" and r["id"] == "req-7"
    np.testing.assert_allclose(r["default"], expected, rtol=RTOL)
    np.testing.assert_allclose(r["named"], expected, rtol=RTOL)


def test_errors_reach_tritonclient(results):
    http, grpc = results["http"], results["grpc"]
    assert http["bad_shape"]["status"] == "400" and http["bad_shape"]["message"].startswith("x:")
    assert grpc["bad_shape"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert grpc["bad_shape"]["message"].startswith("x:")
    assert http["unknown_model"]["status"] == "404" and "model_name" in http["unknown_model"]["message"]
    assert grpc["unknown_model"]["status"] == "StatusCode.NOT_FOUND"


def test_wire_contract_matches_tritonclient():
    """Every message and method of our proto has the names, numbers and types of tritonclient's (Triton's) proto."""
    from service.grpc.gen_inference import grpc_predict_v2_pb2 as pb

    done = subprocess.run([sys.executable, "-c", WIRE], cwd=REPO, env=env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout)

    def fields(d) -> dict:
        out = {d.full_name: [list(f) for f in sorted((f.name, f.number, f.type) for f in d.fields)]}
        for nested in d.nested_types:
            out.update(fields(nested))
        return out

    ours = {}
    for message in pb.DESCRIPTOR.message_types_by_name.values():
        ours.update(fields(message))
    for name, ours_fields in ours.items():
        assert theirs["messages"].get(name) == ours_fields, name
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        assert theirs["methods"][method.name] == [method.input_type.full_name, method.output_type.full_name]
