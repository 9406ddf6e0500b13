"""The bad-input corpus (issue 15): inputs that once answered 500 or gRPC INTERNAL, and the classes they stand for.

A real `genserve serve` over shipped models gets each case over REST (/v1), the Open Inference Protocol's REST
(/v2), genserve gRPC and V2 gRPC. Each must be refused in its protocol's error contract: a 4xx with
{"error": {"code", "message", "field"?}} (/v1) or {"error": "<message>"} (/v2), or INVALID_ARGUMENT (gRPC), the
message naming the field. Afterwards the server is live, answers good requests, logged no unhandled error and
never restarted its engine worker.
"""

import base64
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from service.engine import audio
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.gen_inference import grpc_predict_v2_pb2 as ipb
from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as ipb_grpc
from tests.e2e.test_drain import start_server
from tests.e2e.test_server import REPO, free_port, stop, wait_ready

MODELS = ("charrnn", "infogan", "vae", "wavenet")  # shipped: text, controls, latents, audio
RATE = 16000  # wavenet's sample rate
LATENT = 32  # vae's
RPC_S = 30.0
JSON = {"content-type": "application/json"}

# the WAV: its header declares 200 bytes of 16-bit data, 3 follow
TRUNCATED_WAV = base64.b64decode("UklGRuwAAABXQVZFZm10IBAAAAABAAEAgD4AAAB9AAACABAAZGF0YcgAAAAAAAA=")
GOOD_WAV = audio.to_wav(np.arange(0, 256, 2), RATE)
CHUNK_PAST_END = GOOD_WAV[:16] + (195).to_bytes(4, "little") + GOOD_WAV[20:]  # the wave module's RuntimeError
SLOW_WAV = audio.to_wav(np.arange(0, 256, 2), 8000)
ZEROS = [[0] * 28] * 28
DEEP = b"[" * 10_000 + b"]" * 10_000
LONG_INTEGER = b"9" * 5000  # Python parses at most 4,300 digits


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def f32(value: float, count: int = LATENT) -> bytes:
    return np.full(count, value, "<f4").tobytes()


@dataclass(frozen=True)
class Server:
    base: str
    target: str
    logs: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    store = tmp_path_factory.mktemp("bad-input-models")
    for name in MODELS:
        (store / name).symlink_to(REPO / "models" / name, target_is_directory=True)
    logs = tmp_path_factory.mktemp("bad-input-server")
    port, grpc_port = free_port(), free_port()
    process = start_server(store, port, grpc_port, logs)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base, logs)
        yield Server(base, f"127.0.0.1:{grpc_port}", logs)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base, timeout=RPC_S) as client:
        yield client


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.target) as c:
        yield c


def send(http: httpx.Client, method: str, path: str, body, headers: dict | None) -> httpx.Response:
    """`body`: a dict sent as JSON, or bytes sent as they are (what json.dumps cannot write: NaN, deep nesting)."""
    if isinstance(body, bytes):
        return http.request(method, path, content=body, headers=headers or JSON)
    return http.request(method, path, json=body, headers=headers)


def case(name: str, method: str, path: str, body=None, status: int = 422, field: str = "body", headers=None):
    return pytest.param(method, path, body, headers, status, field, id=name)


# --- REST /v1 ------------------------------------------------------------------------------------------------------

V1 = [
    case("truncated-wav-named-score", "POST", "/score", {"model": "wavenet", "inputs": [b64(TRUNCATED_WAV)]},
         field="body.inputs[0]: the WAV is truncated"),
    case("truncated-wav-score", "POST", "/v1/models/wavenet/score", {"inputs": [b64(TRUNCATED_WAV)]},
         field="body.inputs[0]: the WAV is truncated"),
    case("truncated-wav-complete", "POST", "/v1/models/wavenet/complete",
         {"inputs": [b64(GOOD_WAV[:-1])], "length": 2}, field="body.inputs[0]: the WAV is truncated"),
    case("wav-chunk-past-its-end", "POST", "/v1/models/wavenet/score", {"inputs": [b64(CHUNK_PAST_END)]},
         field="body.inputs[0]: not a PCM WAV file"),
    case("wav-other-rate", "POST", "/v1/models/wavenet/score", {"inputs": [b64(SLOW_WAV)]}, field="body.inputs[0]"),
    case("wav-not-base64", "POST", "/v1/models/wavenet/score", {"inputs": ["%%% not base64"]},
         field="body.inputs[0]"),
    case("top-k-beyond-int64", "POST", "/v1/models/charrnn/sample", {"length": 2, "top_k": 2**70},
         field="body.top_k"),
    case("top-k-negative", "POST", "/v1/models/charrnn/sample", {"length": 2, "top_k": -5}, field="body.top_k"),
    case("label-beyond-int64", "POST", "/v1/models/vae/sample", {"label": 2**64}, field="body.label"),
    case("k-beyond-int64", "POST", "/v1/models/vae/score", {"inputs": [ZEROS], "k": 2**64}, field="body.k"),
    case("control-infinity", "POST", "/v1/models/infogan/sample", b'{"controls": {"code": Infinity}}',
         field="body.controls.code"),
    case("control-nan", "POST", "/v1/models/infogan/sample", b'{"controls": {"code": NaN}}',
         field="body.controls.code"),
    case("control-1e400", "POST", "/v1/models/infogan/sample", b'{"controls": {"code": 1e400}}',
         field="body.controls.code"),
    case("control-list-1e400", "POST", "/v1/models/infogan/sample", b'{"controls": {"style": [1e400, 0]}}',
         field="body.controls.style"),
    case("control-beyond-float32", "POST", "/v1/models/infogan/sample", {"controls": {"style": [1e39, 0]}},
         field="controls.style"),
    case("control-lone-surrogate", "POST", "/v1/models/infogan/sample", b'{"controls": {"\\ud800": 1}}',
         field="controls.\\ud800"),
    case("temperature-nan", "POST", "/v1/models/vae/sample", b'{"temperature": NaN}', field="body.temperature"),
    case("seconds-infinity", "POST", "/v1/models/wavenet/sample", b'{"seconds": Infinity}', field="body.seconds"),
    case("unknown-field-sample", "POST", "/v1/models/charrnn/sample", {"length": 2, "temprature": 0.5},
         field="body.temprature"),
    case("unknown-field-named-score", "POST", "/score", {"model": "vae", "inputs": [ZEROS], "lables": [1]},
         field="body.lables"),
    case("unknown-field-decode", "POST", "/v1/models/vae/decode", {"z": [[0.0] * LATENT], "formt": "png"},
         field="body.formt"),
    case("decode-output-not-finite", "POST", "/v1/models/vae/decode", {"z": [[3.4e38] * LATENT]},
         field="body.z: the model's output"),
    case("decode-beyond-float32", "POST", "/v1/models/vae/decode", {"z": [[1e39] * LATENT]}, field="body.z"),
    case("decode-nan", "POST", "/v1/models/vae/decode", b'{"z": [[NaN]]}', field="body.z"),
    case("prompt-lone-surrogate", "POST", "/v1/models/charrnn/sample", b'{"prompt": "\\ud800", "length": 2}',
         field="prompt"),
    case("text-lone-surrogate", "POST", "/v1/models/charrnn/score", b'{"inputs": ["a\\udfff"]}',
         field="inputs[0]"),
    case("image-wrong-shape", "POST", "/v1/models/vae/score", {"inputs": [[[0] * 27] * 28]}, field="inputs[0]"),
    case("image-out-of-range", "POST", "/v1/models/vae/score", {"inputs": [[[2] * 28] * 28]}, field="inputs[0]"),
    case("json-nested-10000-deep", "POST", "/v1/models/vae/score", DEEP, status=400),
    case("json-integer-5000-digits", "POST", "/v1/models/vae/sample", b'{"n": ' + LONG_INTEGER + b"}", status=400),
    case("json-not-utf8", "POST", "/v1/models/vae/sample", b'{"n": "\xff"}', status=400),
    case("json-not-an-object", "POST", "/v1/models/vae/sample", b"[1, 2]"),
    case("unknown-route", "GET", "/v1/nothing", status=404, field="/v1/nothing"),
    case("wrong-method", "GET", "/v1/models/vae/sample", status=405, field="GET"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "field"), V1)
def test_rest_refuses_with_the_error_contract(http, method, path, body, headers, status, field):
    response = send(http, method, path, body, headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert field in error["message"], error
    assert isinstance(error.get("field", ""), str)


# --- REST /v2 ------------------------------------------------------------------------------------------------------


def v2_tensor(name: str, shape: list[int], datatype: str = "FP32", data=None) -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": [] if data is None else data}]}


DECODE = "/v2/models/vae.decode/infer"
V2 = [
    case("zero-length-dimension", "POST", "/v2/models/charrnn.log_prob/infer", v2_tensor("x", [1, 0], "INT64"),
         status=400, field="x.shape"),
    case("shape-product-overflow", "POST", DECODE, v2_tensor("z", [0, 4611686018427387904]), status=400,
         field="z.shape"),
    case("seventy-dimensions", "POST", DECODE, v2_tensor("z", [1] * 70, data=[0.0]), status=400, field="z.shape"),
    case("json-nested-10000-deep", "POST", DECODE, DEEP, status=400),
    case("json-integer-5000-digits", "POST", DECODE, b'{"inputs": [{"name": "z", "shape": [' + LONG_INTEGER + b"]}]}",
         status=400),
    case("json-not-utf8", "POST", DECODE, b'{"inputs": "\xff"}', status=400),
    case("z-nan", "POST", DECODE, b'{"inputs": [{"name": "z", "shape": [1, 1], "datatype": "FP32", "data": [NaN]}]}',
         status=400, field="z: values must be finite"),
    case("z-beyond-fp32", "POST", DECODE, v2_tensor("z", [1, LATENT], data=[1e300] * LATENT), status=400,
         field="z: values must be finite"),
    case("decode-output-not-finite", "POST", DECODE, v2_tensor("z", [1, LATENT], data=[3.4e38] * LATENT),
         status=400, field="z: the model's output"),
    case("wrong-datatype", "POST", DECODE, v2_tensor("z", [1, LATENT], "INT64", [0] * LATENT), status=400,
         field="z: datatype"),
    case("binary-header-length-not-an-integer", "POST", DECODE, b"{}",
         headers={**JSON, "Inference-Header-Content-Length": "many"}, status=400,
         field="Inference-Header-Content-Length"),
    case("unknown-route", "GET", "/v2/nothing", status=404, field="/v2/nothing"),
    case("wrong-method", "GET", DECODE, status=405, field="GET"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "field"), V2)
def test_v2_rest_refuses_with_the_v2_error_format(http, method, path, body, headers, status, field):
    response = send(http, method, path, body, headers)
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"error"} and isinstance(payload["error"], str)
    assert field in payload["error"], payload


# --- gRPC ----------------------------------------------------------------------------------------------------------


def control(**values: list[float]) -> pb.SampleRequest:
    return pb.SampleRequest(model="infogan", controls={k: pb.ControlValue(values=v) for k, v in values.items()})


def z_tensor(shape: list[int], data: bytes = b"") -> pb.Tensor:
    return pb.Tensor(dtype="float32", shape=shape, data=data)


GENSERVE = [
    pytest.param("Score", pb.ScoreRequest(model="wavenet", wavs=[TRUNCATED_WAV]), "wavs[0]: the WAV is truncated",
                 id="truncated-wav-score"),
    pytest.param("Complete", pb.CompleteRequest(model="wavenet", wavs=[TRUNCATED_WAV], length=2),
                 "wavs[0]: the WAV is truncated", id="truncated-wav-complete"),
    pytest.param("Score", pb.ScoreRequest(model="wavenet", wavs=[CHUNK_PAST_END]), "wavs[0]: not a PCM WAV",
                 id="wav-chunk-past-its-end"),
    pytest.param("Sample", control(code=[math.nan]), "controls.code", id="control-nan"),
    pytest.param("Sample", control(code=[math.inf]), "controls.code", id="control-inf"),
    pytest.param("Sample", control(style=[-math.inf, 0.0]), "controls.style", id="control-list-inf"),
    pytest.param("Sample", control(**{"\u00e9": [1.0]}), "controls.\\xe9", id="control-non-ascii-key"),
    pytest.param("Sample", pb.SampleRequest(model="charrnn", length=2, top_k=-5), "top_k", id="top-k-negative"),
    pytest.param("Sample", pb.SampleRequest(model="vae", temperature=math.nan), "temperature", id="temperature-nan"),
    pytest.param("Sample", pb.SampleRequest(model="wavenet", seconds=math.nan), "seconds", id="seconds-nan"),
    pytest.param("Decode", pb.DecodeRequest(model="vae", z=z_tensor([0, 2**62])), "z.shape",
                 id="decode-shape-product-overflow"),
    pytest.param("Decode", pb.DecodeRequest(model="vae", z=z_tensor([1, 0])), "z.shape", id="decode-zero-length"),
    pytest.param("Decode", pb.DecodeRequest(model="vae", z=z_tensor([1, LATENT], f32(math.nan))), "z",
                 id="decode-nan"),
    pytest.param("Decode", pb.DecodeRequest(model="vae", z=z_tensor([1, LATENT], f32(3.4e38))),
                 "z: the model's output", id="decode-output-not-finite"),
    pytest.param("Score", pb.ScoreRequest(model="vae", inputs=pb.Tensor(dtype="uint8", shape=[0] * 70)),
                 "inputs.shape", id="seventy-zero-dimensions"),
    pytest.param("Score", pb.ScoreRequest(model="vae", inputs=pb.Tensor(dtype="uint8", shape=[1] * 70, data=b"\0")),
                 "inputs.shape", id="seventy-dimensions"),
    pytest.param("Score", pb.ScoreRequest(model="vae", inputs=pb.Tensor(dtype="uint8", shape=[-1, 1, 28, 28])),
                 "inputs.shape", id="negative-dimension"),
    pytest.param("Score", pb.ScoreRequest(model="vae", inputs=pb.Tensor(dtype="complex64", shape=[1])),
                 "inputs.dtype", id="unknown-dtype"),
]


@pytest.mark.parametrize(("method", "request_", "field"), GENSERVE)
def test_grpc_refuses_with_invalid_argument(channel, method, request_, field):
    with pytest.raises(grpc.RpcError) as info:
        getattr(pb_grpc.GenserveStub(channel), method)(request_, timeout=RPC_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details().startswith(field), info.value.details()
    assert dict(info.value.trailing_metadata())["genserve-error-code"] == "invalid_input"


def infer_request(model: str, name: str, datatype: str, shape: list[int], raw: bytes | None = None,
                  fp32: list[float] | None = None) -> ipb.ModelInferRequest:
    request = ipb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    if fp32 is not None:
        tensor.contents.fp32_contents.extend(fp32)
    else:
        request.raw_input_contents.append(raw or b"")
    return request


V2_GRPC = [
    pytest.param(infer_request("charrnn.log_prob", "x", "INT64", [1, 0]), "x.shape", id="zero-length-dimension"),
    pytest.param(infer_request("vae.decode", "z", "FP32", [0, 2**62]), "z.shape", id="shape-product-overflow"),
    pytest.param(infer_request("vae.decode", "z", "FP32", [1] * 70, f32(0.0, 1)), "z.shape", id="seventy-dimensions"),
    pytest.param(infer_request("vae.decode", "z", "FP32", [1, LATENT], f32(math.nan)), "z: values must be finite",
                 id="z-nan-raw"),
    pytest.param(infer_request("vae.decode", "z", "FP32", [1, LATENT], fp32=[math.inf] * LATENT),
                 "z: values must be finite", id="z-inf-typed"),
    pytest.param(infer_request("vae.decode", "z", "FP32", [1, LATENT], f32(3.4e38)), "z: the model's output",
                 id="decode-output-not-finite"),
]


@pytest.mark.parametrize(("request_", "field"), V2_GRPC)
def test_v2_grpc_refuses_with_invalid_argument(channel, request_, field):
    with pytest.raises(grpc.RpcError) as info:
        ipb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request_, timeout=RPC_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details().startswith(field), info.value.details()


# --- and afterwards ------------------------------------------------------------------------------------------------


def test_the_server_is_live_answers_good_requests_and_logged_no_unhandled_error(server, http, channel):
    assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
    response = http.post("/v1/models/charrnn/sample", json={"length": 4, "seed": 1, "top_k": 5})
    assert response.status_code == 200 and len(response.json()["samples"][0]) == 4
    response = send(http, "POST", DECODE, v2_tensor("z", [1, LATENT], data=[0.0] * LATENT), None)
    assert response.status_code == 200 and json.loads(response.text)["outputs"][0]["shape"] == [1, 1, 28, 28]
    sample = pb_grpc.GenserveStub(channel).Sample(control(code=[3.0], style=[0.5, -0.5]), timeout=RPC_S)
    assert list(sample.samples.shape) == [1, 1, 28, 28]
    log = (server.logs / "stderr").read_text()
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
    assert len(re.findall(r"engine worker cpu: started", log)) == 1, "a bad input cost the engine its worker"
