"""The request id: REST's X-Request-ID and gRPC's x-request-id in, the same out, on every kind of answer, and the id
the request's own code (and so its log lines) sees. A real engine on the tiny PixelCNN store."""

import asyncio
import json
import logging
import uuid

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine.engine import Engine
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.logs import REQUEST_ID, JsonFormatter, request_id
from service.settings import Settings
from service.store import ModelStore

MODEL = "pixelcnn"
RPC_S = 20.0
GIVEN = "trace-42/abc.DEF:1"


@pytest.fixture(scope="module")
def engine(tiny_store) -> Engine:
    return Engine(ModelStore(tiny_store), Settings(intra_op_threads=1))


class Seen:
    """The real engine; sample records the request id it ran under, list_models fails unexpectedly."""

    def __init__(self, engine: Engine):
        self._engine = engine
        self.ids: list[str | None] = []

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    async def sample(self, *args, **kwargs):
        self.ids.append(REQUEST_ID.get())
        return await self._engine.sample(*args, **kwargs)

    def list_models(self):
        raise RuntimeError("the store went away")


@pytest.fixture(scope="module")
def seen(engine) -> Seen:
    return Seen(engine)


@pytest.fixture(scope="module")
def client(seen):
    with TestClient(create_app(seen, Settings(intra_op_threads=1)), raise_server_exceptions=False) as c:
        yield c


def is_generated(rid: str) -> bool:
    """A uuid4 in hex, as uuid.uuid4().hex writes it."""
    parsed = uuid.UUID(hex=rid)
    return parsed.hex == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize("given, kept", [
    ("a", True), ("x" * 128, True), (GIVEN, True), ("with space ~!", True),
    (None, False), ("", False), ("x" * 129, False), ("tab\there", False), ("caf\u00e9", False), ("nul\x00", False),
])
def test_a_caller_id_is_kept_only_if_short_and_printable_ascii(given, kept):
    rid = request_id(given)
    assert (rid == given) is kept
    if not kept:
        assert is_generated(rid) and rid != request_id(given)  # a fresh uuid4 each time


# --- REST ----------------------------------------------------------------------------------------------------------


def sample(client, **headers):
    return client.post(f"/v1/models/{MODEL}/sample", json={"n": 1, "seed": 3}, headers=headers)


def test_rest_echoes_the_callers_id_and_runs_the_request_under_it(client, seen):
    response = sample(client, **{"X-Request-ID": GIVEN})  # the /v1 fast path (RestFastPath)
    assert response.status_code == 200 and response.headers["x-request-id"] == GIVEN
    assert seen.ids[-1] == GIVEN
    assert REQUEST_ID.get() is None  # not left behind in the caller's context


def test_rest_makes_a_fresh_id_when_none_or_an_unusable_one_is_given(client, seen):
    ids = []
    for headers in ({}, {"X-Request-ID": "x" * 129}, {"X-Request-ID": b"caf\xc3\xa9"}):
        response = sample(client, **headers)
        assert response.status_code == 200
        ids.append(response.headers["x-request-id"])
        assert seen.ids[-1] == ids[-1]
    assert all(is_generated(rid) for rid in ids) and len(set(ids)) == 3


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/healthz", None, 200),
    ("GET", f"/v1/models/{MODEL}", None, 200),
    ("POST", f"/v1/models/{MODEL}/sample", {"n": 0}, 422),  # refused by FastAPI past the fast path
    ("POST", "/v1/models/nope/sample", {"n": 1}, 404),
    ("GET", "/no/such/route", None, 404),
    ("POST", f"/v1/models/{MODEL}/sample", "x" * 20_000_000, 413),  # refused before routing
    ("GET", "/v1/models", None, 500),  # an unexpected error: Starlette's ServerErrorMiddleware answers
])
def test_every_rest_answer_carries_the_id(client, method, path, body, status):
    typed = {"Content-Type": "application/json"} if isinstance(body, str) else {}  # a raw body says it is JSON
    response = client.request(method, path, headers={"X-Request-ID": GIVEN, **typed},
                              **({"content": body} if isinstance(body, str) else {"json": body}))
    assert response.status_code == status and response.headers["x-request-id"] == GIVEN
    assert response.headers.get_list("x-request-id") == [GIVEN]  # once


def test_the_v2_fast_path_and_streams_carry_the_id(client):
    x = np.zeros((1, 1, 28, 28), np.int64)
    infer = client.post(f"/v2/models/{MODEL}.log_prob/infer", headers={"X-Request-ID": GIVEN},
                        json={"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "INT64",
                                          "data": x.ravel().tolist()}]})
    assert infer.status_code == 200 and infer.headers["x-request-id"] == GIVEN
    with client.stream("POST", f"/v1/models/{MODEL}/sample/stream", json={"n": 1, "seed": 1},
                       headers={"X-Request-ID": GIVEN}) as stream:
        assert stream.status_code == 200 and stream.headers["x-request-id"] == GIVEN
        assert b"event: done" in b"".join(stream.iter_bytes())


def test_an_unexpected_errors_log_line_carries_the_id(client):
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(handler.format(record))
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("genserve")
    logger.addHandler(handler)
    try:
        response = client.get("/v1/models", headers={"X-Request-ID": GIVEN})
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 500
    entries = [json.loads(line) for line in lines]
    failures = [e for e in entries if e["level"] == "ERROR"]
    assert failures and all(e["request_id"] == GIVEN for e in failures)
    assert "RuntimeError: the store went away" in failures[0]["exception"]


# --- gRPC ----------------------------------------------------------------------------------------------------------


def grpc_scenario(engine, body, **settings) -> None:
    async def main() -> None:
        server = build_grpc_server(engine, Settings(host="127.0.0.1", intra_op_threads=1, **settings), 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            await body(pb_grpc.GenserveStub(channel))
        finally:
            await channel.close()
            await server.stop(grace=None)

    asyncio.run(asyncio.wait_for(main(), 60))


async def answered_id(call) -> str:
    """The x-request-id of a call's trailing metadata, however the call ended."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return dict(error.trailing_metadata())["x-request-id"]
    return dict(await call.trailing_metadata())["x-request-id"]


def test_grpc_echoes_the_callers_id_on_answers_streams_and_errors(seen):
    given = (("x-request-id", GIVEN),)

    async def body(stub):
        assert await answered_id(stub.Sample(pb.SampleRequest(model=MODEL, seed=2), metadata=given,
                                             timeout=RPC_S)) == GIVEN
        assert seen.ids[-1] == GIVEN
        unknown = stub.Sample(pb.SampleRequest(model="nope"), metadata=given, timeout=RPC_S)
        assert await answered_id(unknown) == GIVEN  # status.abort_with keeps it beside its own metadata
        assert dict(await unknown.trailing_metadata())["genserve-error-code"] == "unknown_model"
        stream = stub.SampleStream(pb.SampleRequest(model=MODEL, seed=2), metadata=given, timeout=RPC_S)
        assert len([chunk async for chunk in stream]) == 28
        assert dict(await stream.trailing_metadata())["x-request-id"] == GIVEN
        made = {await answered_id(stub.Sample(pb.SampleRequest(model=MODEL, seed=2), metadata=m, timeout=RPC_S))
                for m in ((), (("x-request-id", "x" * 129),))}
        assert all(is_generated(rid) for rid in made) and len(made) == 2

    grpc_scenario(seen, body)


def test_grpc_a_call_refused_for_its_key_still_answers_with_its_id(engine, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("k" * 32 + "\n")

    async def body(stub):
        call = stub.ListModels(pb.ListModelsRequest(), metadata=(("x-request-id", GIVEN),), timeout=RPC_S)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert dict(refused.value.trailing_metadata())["x-request-id"] == GIVEN

    grpc_scenario(engine, body, api_keys_file=keys)


def test_grpc_every_registered_service_answers_with_the_id_and_counts_its_calls(engine):
    """Health, reflection and the V2 service are wrapped like genserve.v1 (AroundEveryCall): the caller's id comes
    back, and a call still open (a health Watch) is counted in flight until it ends."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from service.grpc.gen_inference import grpc_predict_v2_pb2 as v2
    from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as v2_grpc

    given = (("x-request-id", GIVEN),)
    watch_method = "/grpc.health.v1.Health/Watch"

    async def reflect(channel):
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(metadata=given, timeout=RPC_S)
        await stream.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await stream.read()
        await stream.done_writing()
        await stream.read()  # the end of the stream
        return dict(await stream.trailing_metadata())["x-request-id"]

    async def main() -> None:
        server = build_grpc_server(engine, Settings(host="127.0.0.1", intra_op_threads=1), 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            health = health_pb2_grpc.HealthStub(channel)
            assert await answered_id(health.Check(health_pb2.HealthCheckRequest(), metadata=given,
                                                  timeout=RPC_S)) == GIVEN
            assert await answered_id(health.Check(health_pb2.HealthCheckRequest(service="nope"), metadata=given,
                                                  timeout=RPC_S)) == GIVEN  # NOT_FOUND
            assert await answered_id(v2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
                v2.ServerLiveRequest(), metadata=given, timeout=RPC_S)) == GIVEN
            assert await reflect(channel) == GIVEN
            watch = health.Watch(health_pb2.HealthCheckRequest(), metadata=given, timeout=RPC_S)
            await watch.read()  # the first status: the call is open
            assert server.genserve_calls.methods == {watch_method: 1}
            watch.cancel()
            for _ in range(100):  # the server learns of the cancellation on its next poll
                if not server.genserve_calls.methods:
                    break
                await asyncio.sleep(0.05)
            assert not server.genserve_calls.methods
        finally:
            await channel.close()
            await server.stop(grace=None)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_grpc_a_service_registered_without_its_method_handlers_is_refused_at_build():
    """A generic handler alone (hand-written, or stubs older than grpcio-tools 1.62) would bypass the per-call code
    and, through AroundEveryCall, not be served at all: building the server names it instead."""
    from service.grpc.handlers import AroundEveryCall

    async def unary(_request, _context):
        return b""

    class Server:  # what AroundEveryCall passes on
        def add_generic_rpc_handlers(self, generic_handlers):
            pass

        def add_registered_method_handlers(self, service, method_handlers):
            pass

    wrapping = AroundEveryCall(Server(), lambda method, context: None)
    handlers = {"Call": grpc.unary_unary_rpc_method_handler(unary)}
    wrapping.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("a.Registered", handlers),))
    wrapping.add_registered_method_handlers("a.Registered", handlers)
    wrapping.check_all_wrapped()  # both ways, as generated code does: fine
    wrapping.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("b.GenericOnly", handlers),))
    with pytest.raises(TypeError, match=r"\['b.GenericOnly'\]"):
        wrapping.check_all_wrapped()
