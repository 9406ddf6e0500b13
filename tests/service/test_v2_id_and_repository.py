"""V2 REST bodies that parse as JSON but that the server cannot answer as they are: an `id` with a lone surrogate
(refused before the model runs, since no answer could echo it), a repository index body nested too deeply or with
a huge integer, a `ready` that is no JSON bool; and the refusals' texts for an integer out of INT64's range and a
gzip body cut short. On the tiny PixelCNN store; each answer is a 400 naming the field, never a 500."""

import gzip
import json

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api import v2
from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore

LOG_PROB = "pixelcnn.log_prob"
DEPTH = 5000  # past orjson's 1,024 levels and the standard library's recursion limit


class CountingInfer:
    """The real engine, counting its infer calls."""

    def __init__(self, engine: Engine):
        self._engine, self.calls = engine, 0

    def __getattr__(self, name):
        return getattr(self._engine, name)

    async def infer(self, *args, **kwargs):
        self.calls += 1
        return await self._engine.infer(*args, **kwargs)


@pytest.fixture(scope="module")
def engine(tiny_store) -> CountingInfer:
    return CountingInfer(Engine(ModelStore(tiny_store), Settings(runtime="onnx", intra_op_threads=1)))


@pytest.fixture(scope="module")
def client(engine):
    app = FastAPI()
    app.include_router(v2.router(engine))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def body(**extra) -> dict:
    x = np.zeros((1, 1, 28, 28), np.int64)
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "INT64", "data": x.ravel().tolist()}],
            **extra}


def infer(client, payload: bytes | dict, **kwargs):
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post(f"/v2/models/{LOG_PROB}/infer", content=content, **kwargs)


def refusal(response, field: str) -> str:
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert message.startswith(f"{field}:"), message
    return message


def test_an_id_with_a_lone_surrogate_is_refused_before_the_model_runs(client, engine):
    calls = engine.calls
    message = refusal(infer(client, json.dumps(body(id="\ud800")).encode()), "id")  # json.dumps writes "\ud800"
    assert "surrogate" in message and "\\ud800" in message
    refusal(infer(client, body(id="ok-\udfff-tail")), "id")
    refusal(infer(client, body(id=7)), "id")
    assert engine.calls == calls  # refused before engine.infer
    answer = infer(client, body(id="r\u00e9q-\U0001f600"))  # any valid text is echoed as it is
    assert answer.status_code == 200 and answer.json()["id"] == "r\u00e9q-\U0001f600"
    assert "id" not in infer(client, body(id="")).json()  # an empty id is not echoed, as before
    assert "id" not in infer(client, body(id=None)).json()  # nor is null: as if absent


def deep(levels: int) -> bytes:
    return b'{"a": ' * levels + b"1" + b"}" * levels


@pytest.mark.parametrize("content", [deep(DEPTH), b'{"ready": ' + b"9" * 5000 + b"}", b"[" * DEPTH + b"]" * DEPTH],
                         ids=["nested", "huge-integer", "nested-list"])
def test_repository_index_refuses_what_python_cannot_read(client, content):
    refusal(client.post("/v2/repository/index", content=content), "body")


@pytest.mark.parametrize("ready", ["false", "true", 0, 1, None, [], {}])
def test_repository_index_ready_is_a_json_bool(client, ready):
    assert "ready" in refusal(client.post("/v2/repository/index", json={"ready": ready}), "body.ready")


def test_repository_index_bodies_still_read(client):
    index = client.post("/v2/repository/index").json()
    assert index and client.post("/v2/repository/index", content=b"  ").json() == index
    assert client.post("/v2/repository/index", json={}).json() == index
    assert client.post("/v2/repository/index", json={"ready": False}).json() == index
    assert client.post("/v2/repository/index", json={"ready": True}).json() == index  # all ready
    refusal(client.post("/v2/repository/index", json=[1]), "body")


@pytest.mark.parametrize("value", ["1180591620717411303424", "9223372036854775808", "-1180591620717411303424",
                                   "1" + "0" * 400],
                         ids=["2**70", "2**63", "-2**70", "10**400"])
def test_an_integer_out_of_int64_is_said_so(client, value):
    payload = json.dumps(body()).replace('"data": [0,', f'"data": [{value},', 1).encode()
    message = refusal(infer(client, payload), "x.data")
    assert "out of INT64's range" in message and "float64" not in message


def test_a_whole_float_in_int64_stays_a_float_refusal(client):
    payload = json.dumps(body()).replace('"data": [0,', '"data": [3.0,', 1).encode()
    assert "got float64 values" in refusal(infer(client, payload), "x.data")


def test_a_truncated_gzip_body_names_the_encoding(client):
    whole = gzip.compress(json.dumps(body()).encode())
    message = refusal(infer(client, whole[:len(whole) // 2], headers={"Content-Encoding": "gzip"}), "body")
    assert "Content-Encoding: gzip" in message and "invalid JSON" not in message
    assert infer(client, whole, headers={"Content-Encoding": "gzip"}).status_code == 200


@pytest.mark.parametrize("dtype, says", [(np.float32, "out of FP32's range"), (np.bool_, "got object values")])
def test_an_integer_beyond_a_double_is_refused_for_other_datatypes(dtype, says):
    with pytest.raises(v2.InvalidInput, match="z.data: ") as refused:
        v2._json_array([1, 10**400], np.dtype(dtype), "z")  # the standard library's reading of such a body
    assert says in str(refused.value)


def test_an_integer_beyond_64_bits_within_a_float_datatype_is_read_as_a_float():
    """The standard library reads 10**20 as a Python int (a body orjson refuses falls back to it): in FP32's range."""
    np.testing.assert_array_equal(v2._json_array([1, 10**20], np.dtype(np.float32), "z"), np.float32([1, 1e20]))


def test_the_repository_index_rescans_off_the_event_loop(engine):
    """The index rescans and hashes the whole store (about 1.8 s for the shipped one): the health route is answered
    while it runs, as gRPC's RepositoryIndex already did (the old code held the event loop until it returned)."""
    import asyncio
    import time

    import httpx

    returned = []

    class SlowIndex:
        def __getattr__(self, name):
            return getattr(engine, name)

        def repository_index(self, ready: bool) -> list:
            time.sleep(0.5)  # a large store's rescan
            returned.append(time.monotonic())
            return engine.repository_index(ready)

    app = FastAPI()
    app.include_router(v2.router(SlowIndex()))

    async def scenario() -> tuple[float, int, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            index = asyncio.ensure_future(client.post("/v2/repository/index"))
            await asyncio.sleep(0.05)  # the index request is under way
            live = await client.get("/v2/health/live")
            answered = time.monotonic()
            return answered, live.status_code, (await index).status_code

    answered, live, index = asyncio.run(scenario())
    assert (live, index) == (200, 200)
    assert answered < returned[0]  # the health answer came while the index was still rescanning
