"""Per-request work limits of a sequence score and of V2 infer, and the V2 outputs' strict parameters.

A direct score of a text or audio model takes at most its limit of values per input and of values in all (the score
capability's max_length and max_row_steps, else its sample's, neither over MAX_SEQUENCE_LENGTH), refused before any
work with a 422 / INVALID_ARGUMENT naming `inputs[i]` or `inputs`. A V2 infer request holds at most the model's
max_queue_size rows, refused with 400 / INVALID_ARGUMENT naming the input. A V2 output asked for twice, or a
binary_data that is no JSON boolean, is a 400 naming it.
"""

import asyncio
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api import create_app, v2
from service.engine import text
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.gen_inference import grpc_predict_v2_pb2 as v2pb
from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as v2pb_grpc
from service.grpc.inference import add_inference_servicer
from service.grpc.server import build_grpc_server
from service.settings import Settings
from service.store import ModelStore

ROOT = Path(__file__).resolve().parents[2]
TEXT = "charrnn"
LOG_PROB = "pixelcnn.log_prob"


def store_with(store, tmp_path, model: str, **limits_by_capability) -> ModelStore:
    """A copy of the store whose model's capabilities carry the given limits."""
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    path = next(copy.glob(f"{model}/*/manifest.json"))
    manifest = json.loads(path.read_text())
    for capability, limits in limits_by_capability.items():
        manifest["capabilities"][capability].update(limits)
    path.write_text(json.dumps(manifest))
    return ModelStore(copy)


def refusal(engine: Engine, lengths: list[int]) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(engine.score(TEXT, [np.ones(n, np.int64) for n in lengths]))
    return caught.value


@pytest.fixture
def text_engine(tiny_text_store, tmp_path) -> Engine:
    """charrnn whose sample capability allows 50 values per row and 120 samples x values."""
    store = store_with(tiny_text_store, tmp_path, TEXT, sample={"max_length": 50, "max_row_steps": 120})
    return Engine(store, Settings(intra_op_threads=1))


def test_a_score_takes_the_sample_limits_per_input_and_per_request(text_engine):
    too_long = refusal(text_engine, [10, 51])
    assert too_long.field == "inputs[1]" and "51 values" in too_long.message and "limit of 50" in too_long.message
    too_much = refusal(text_engine, [50, 50, 50])
    assert too_much.field == "inputs" and "150 values" in too_much.message and "limit of 120" in too_much.message
    results = asyncio.run(text_engine.score(TEXT, [np.ones(n, np.int64) for n in (50, 20, 50)]))  # 120 in all
    assert len(results) == 3 and all(r["log_likelihood_nats"] < 0 for r in results)


def test_the_refusal_comes_before_any_work(text_engine, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work was queued for a refused score")

    monkeypatch.setattr(text_engine, "_batcher", no_work)
    assert refusal(text_engine, [60]).field == "inputs[0]"
    assert refusal(text_engine, [40, 40, 41]).field == "inputs"


def test_the_score_capability_and_the_setting_bound_it_too(tiny_text_store, tmp_path):
    store = store_with(tiny_text_store, tmp_path, TEXT, sample={"max_length": 50, "max_row_steps": 120},
                       score={"max_row_steps": 60})
    assert "limit of 60" in refusal(Engine(store, Settings(intra_op_threads=1)), [31, 30]).message
    capped = Engine(store, Settings(intra_op_threads=1, max_sequence_length=40))
    assert refusal(capped, [41]).field == "inputs[0]"  # the setting caps the sample's 50
    assert len(asyncio.run(capped.score(TEXT, [np.ones(40, np.int64)]))) == 1


def test_rest_and_grpc_score_refuse_too_many_values_naming_inputs_and_grpc_texts(text_engine):
    settings = text_engine.settings
    with TestClient(create_app(text_engine, settings)) as client:
        for path, body in ((f"/v1/models/{TEXT}/score", {"inputs": ["a" * 50] * 3}),
                           ("/score", {"model": TEXT, "inputs": ["a" * 50] * 3})):
            response = client.post(path, json=body)
            assert response.status_code == 422 and response.json()["error"]["field"] == "inputs", response.text
        response = client.post(f"/v1/models/{TEXT}/score", json={"inputs": ["a", "a" * 51]})
        assert response.status_code == 422 and response.json()["error"]["field"] == "inputs[1]", response.text
        assert client.post(f"/v1/models/{TEXT}/score", json={"inputs": ["a" * 50] * 2}).status_code == 200

    async def main():
        server = build_grpc_server(text_engine, settings, 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await pb_grpc.GenserveStub(channel).Score(pb.ScoreRequest(model=TEXT, texts=["a" * 50] * 3),
                                                              timeout=30)
        finally:
            await server.stop(grace=None)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("texts:") and "limit of 120" in info.value.details()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_shipped_limits_refuse_the_reported_requests_before_any_work(tmp_path):
    """charrnn: 15,000 characters per input and 110,000 per request (its sample's); wavenet: 480,000 samples
    per request (MAX_SEQUENCE_LENGTH, under its sample's 860,000)."""
    for name in (TEXT, "wavenet"):
        (tmp_path / name).symlink_to(ROOT / "models" / name)
    engine = Engine(ModelStore(tmp_path), Settings(intra_op_threads=1))
    vocabulary = engine.data_spec(TEXT)["vocabulary"]
    for inputs, field in ((["a" * 15000] * 8, "inputs"), (["a" * 15001], "inputs[0]"), (["a" * 100000], "inputs[0]")):
        with pytest.raises(InvalidInput) as caught:
            asyncio.run(engine.score(TEXT, [text.encode(s, vocabulary, "inputs") for s in inputs]))
        assert caught.value.field == field
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(engine.score("wavenet", [np.full(480000, 5, np.int64)] * 2))
    assert caught.value.field == "inputs" and "limit of 480000" in caught.value.message


class ReachedTheWork(Exception):
    pass


def test_an_input_without_a_label_counts_once_per_class(tmp_path, monkeypatch):
    """wavenet's score without a voice is the exact marginal over its 4 voices: 4 rows per input."""
    (tmp_path / "wavenet").symlink_to(ROOT / "models" / "wavenet")
    engine = Engine(ModelStore(tmp_path), Settings(intra_op_threads=1))

    async def reached(*args, **kwargs):
        raise ReachedTheWork

    monkeypatch.setattr(engine, "_log_prob", reached)
    audio = np.full(480000, 5, np.int64)
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(engine.score("wavenet", [audio[:120001]]))
    assert caught.value.field == "inputs" and "480004 rows x values (x 4 classes" in caught.value.message
    for inputs, labels in (([audio[:120000]], None), ([audio], [0]), ([audio[:60000], audio[:240000]], [None, 1])):
        with pytest.raises(ReachedTheWork):
            asyncio.run(engine.score("wavenet", inputs, labels))


# --- V2 ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_queue(tiny_store) -> Engine:
    """The tiny PixelCNN behind a queue of 4 rows."""
    return Engine(ModelStore(tiny_store), Settings(runtime="onnx", intra_op_threads=1, max_queue_size=4))


@pytest.fixture(scope="module")
def client(small_queue):
    app = FastAPI()
    app.include_router(v2.router(small_queue))
    with TestClient(app) as c:
        yield c


def images(rows: int) -> np.ndarray:
    return (np.arange(rows * 784).reshape(rows, 1, 28, 28) % 2).astype(np.int64)


def json_body(x: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "INT64", "data": x.ravel().tolist()}], **extra}


def error(response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_v2_rest_refuses_more_rows_than_the_queue_holds(client, small_queue, tiny_store):
    assert small_queue.max_rows("pixelcnn") == 4
    default = Engine(ModelStore(tiny_store), Settings(runtime="onnx", intra_op_threads=1))
    assert default.max_rows("pixelcnn") == default.describe("pixelcnn")["batching"]["max_queue_size"]
    assert error(client.post(f"/v2/models/{LOG_PROB}/infer", json=json_body(images(5)))).startswith("x: 5 rows")
    raw = images(5).astype("<i8").tobytes()
    header = json.dumps({"inputs": [{"name": "x", "shape": [5, 1, 28, 28], "datatype": "INT64",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    binary = client.post(f"/v2/models/{LOG_PROB}/infer", content=header + raw,
                         headers={"Inference-Header-Content-Length": str(len(header))})
    assert "limit of 4" in error(binary)
    answered = client.post(f"/v2/models/{LOG_PROB}/infer", json=json_body(images(4))).json()
    want = [r["log_likelihood_nats"] for r in asyncio.run(small_queue.score("pixelcnn", images(4)))]
    assert answered["outputs"][0]["data"] == pytest.approx(want, rel=1e-5)


def test_v2_rest_outputs_binary_data_must_be_a_boolean_and_names_unique(client):
    body = json_body(images(1), outputs=[{"name": "log_prob", "parameters": {"binary_data": "false"}}])
    assert error(client.post(f"/v2/models/{LOG_PROB}/infer", json=body)).startswith(
        "outputs[0].parameters.binary_data: must be true or false")
    body = json_body(images(1), parameters={"binary_data_output": "true"})
    assert error(client.post(f"/v2/models/{LOG_PROB}/infer", json=body)).startswith("parameters.binary_data_output")
    body = json_body(images(1), outputs=[{"name": "log_prob", "parameters": {"binary_data": False}}])
    assert len(client.post(f"/v2/models/{LOG_PROB}/infer", json=body).json()["outputs"][0]["data"]) == 1
    body = json_body(images(1), outputs=[{"name": "log_prob"}, {"name": "log_prob"}])
    assert error(client.post(f"/v2/models/{LOG_PROB}/infer", json=body)).startswith("outputs[1].name")


def test_v2_grpc_refuses_too_many_rows_and_a_duplicate_output(small_queue):
    async def main():
        server = grpc.aio.server()
        add_inference_servicer(server, small_queue)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        details = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = v2pb_grpc.GRPCInferenceServiceStub(channel)
                for x, outputs in ((images(5), ["log_prob"]), (images(1), ["log_prob", "log_prob"])):
                    request = v2pb.ModelInferRequest(
                        model_name=LOG_PROB, raw_input_contents=[x.astype("<i8").tobytes()],
                        inputs=[v2pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT64", shape=x.shape)],
                        outputs=[v2pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs])
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.ModelInfer(request, timeout=30)
                    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    details.append(info.value.details())
        finally:
            await server.stop(grace=None)
        return details

    rows, duplicate = asyncio.run(asyncio.wait_for(main(), 60))
    assert rows.startswith("x: 5 rows") and "limit of 4" in rows
    assert duplicate.startswith("outputs[1].name")
