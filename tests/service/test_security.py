"""Issue 15, "Security": API keys (REST 401, gRPC UNAUTHENTICATED), JSON-only POST bodies (415), CORS, and the
startup checks of the keys file and the TLS pair. REST against the fake engine of test_api; gRPC in-process."""

import asyncio
import gzip
import logging

import grpc
import pytest
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.api import create_app
from service.credentials import ApiKeys, CredentialsError, tls_pair
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.gen_inference import grpc_predict_v2_pb2 as v2_pb
from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as v2_pb_grpc
from service.grpc.handlers import around_calls
from service.grpc.server import CallsInFlight
from service.main import check_security
from service.settings import Settings
from tests.service.test_api import FakeEngine

KEYS = ("key-one-4f1c9a", "key-two-77d0b2")
SAMPLE = "/v1/models/binary/sample"
V2_INFER = "/v2/models/binary.log_prob/infer"
ORIGIN = "https://app.example"
RPC_S = 10.0


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# the team's keys\n\n  {KEYS[0]}  \n   # retired: old-key\n{KEYS[1]}\n")
    return path


def app_client(**settings) -> TestClient:
    return TestClient(create_app(FakeEngine(), Settings(**settings)))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_refused(response, status: int, code: str, field: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    return error["message"]


# --- the keys file -------------------------------------------------------------------------------------------------


def test_keys_file_skips_blank_lines_and_comments_and_admits_each_key(keys_file):
    keys = ApiKeys.from_file(keys_file)
    assert len(keys) == 2
    assert all(keys.admits(f"Bearer {key}") for key in KEYS)
    assert keys.admits(f"bearer {KEYS[1]}".encode())  # the scheme in any case; bytes as ASGI gives them
    refused = [None, "", "Bearer", f"Basic {KEYS[0]}", f"Bearer {KEYS[0]}x", f"Bearer {KEYS[0][:-1]}",
               "Bearer old-key", "Bearer # the team's keys", KEYS[0]]
    assert not any(keys.admits(value) for value in refused)


@pytest.mark.parametrize("text, problem", [
    ("# only a comment\n\n", "holds no keys"),
    ("good-key\nbad key with spaces\n", "line 2 of"),
    ("good-key\nkey-\u00e9\n", "line 2 of"),
])
def test_a_keys_file_without_usable_keys_is_refused_naming_the_line_not_the_key(tmp_path, text, problem):
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(CredentialsError, match=problem) as raised:
        ApiKeys.from_file(path)
    assert "GENSERVE_API_KEYS_FILE" in str(raised.value) and "with spaces" not in str(raised.value)


def test_a_missing_keys_file_is_a_clear_error(tmp_path):
    with pytest.raises(CredentialsError, match=r"GENSERVE_API_KEYS_FILE: cannot read .*nokeys"):
        ApiKeys.from_file(tmp_path / "nokeys")


# --- startup -------------------------------------------------------------------------------------------------------


def test_startup_refuses_half_a_tls_pair_and_an_unloadable_one(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    key.write_text("not a key\n")
    assert tls_pair(Settings()) is None
    with pytest.raises(SystemExit, match="GENSERVE_TLS_KEY: not set, but GENSERVE_TLS_CERT is"):
        check_security(Settings(tls_cert=cert))
    with pytest.raises(SystemExit, match="GENSERVE_TLS_CERT: not set, but GENSERVE_TLS_KEY is"):
        check_security(Settings(tls_key=key))
    with pytest.raises(SystemExit, match=r"GENSERVE_TLS_CERT/GENSERVE_TLS_KEY: cannot load .*cert\.pem"):
        check_security(Settings(tls_cert=cert, tls_key=key))
    with pytest.raises(SystemExit, match="GENSERVE_API_KEYS_FILE: cannot read"):
        check_security(Settings(api_keys_file=tmp_path / "nokeys"))


def test_startup_says_once_that_the_server_is_open_and_never_logs_a_key(keys_file, caplog):
    caplog.set_level(logging.INFO)
    check_security(Settings())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no GENSERVE_API_KEYS_FILE" in warnings[0].getMessage()
    caplog.clear()
    check_security(Settings(api_keys_file=keys_file))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "API keys: 2 from" in caplog.text and not any(key in caplog.text for key in KEYS)


# --- REST: keys ----------------------------------------------------------------------------------------------------


def test_with_keys_every_route_but_health_needs_one(keys_file):
    with app_client(api_keys_file=keys_file) as client:
        for path in ("/v1/models", "/v1/models/binary", "/metrics", "/openapi.json", "/docs", "/v2",
                     "/v2/models/binary.log_prob", "/nowhere"):
            response = client.get(path)
            if path.startswith("/v2"):  # the Open Inference Protocol's error body
                assert response.status_code == 401 and "authorization: missing" in response.json()["error"]
            else:
                assert "authorization: missing" in assert_refused(response, 401, "unauthorized", "authorization")
            assert response.headers["www-authenticate"] == "Bearer"
        assert_refused(client.post(SAMPLE, json={"n": 1}), 401, "unauthorized", "authorization")
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}


def test_a_valid_key_is_admitted_and_an_invalid_one_refused(keys_file):
    with app_client(api_keys_file=keys_file) as client:
        for key in KEYS:
            assert client.get("/v1/models", headers=bearer(key)).status_code == 200
            assert client.post(SAMPLE, json={"n": 1, "seed": 1}, headers=bearer(key)).status_code == 200
        for header in (f"Bearer {KEYS[0]}-", f"Token {KEYS[0]}", "Bearer "):
            response = client.get("/v1/models", headers={"Authorization": header})
            assert "not a valid" in assert_refused(response, 401, "unauthorized", "authorization")


def test_metrics_follow_the_keys_unless_public(keys_file):
    with app_client(api_keys_file=keys_file) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=bearer(KEYS[0])).status_code == 200
    with app_client(api_keys_file=keys_file, metrics_public=True) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/models").status_code == 401


def test_no_key_reaches_a_log_line_or_a_metric_label(keys_file, caplog):
    caplog.set_level(logging.DEBUG)
    with app_client(api_keys_file=keys_file) as client:
        client.get("/v1/models", headers=bearer(KEYS[0]))
        client.get("/v1/models", headers=bearer(KEYS[1] + "x"))
        client.post(SAMPLE, json={"n": 1}, headers=bearer(KEYS[1]))
        metrics = client.get("/metrics", headers=bearer(KEYS[0])).text
    assert 'code="401"' in metrics
    assert not any(key in text for key in KEYS for text in (metrics, caplog.text))


# --- REST: bodies and CORS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain; charset=utf-8", "TEXT/PLAIN", "application/xml",
                                          "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
def test_a_post_body_that_is_not_json_is_415(content_type):
    body = b'{"n": 1}'
    with app_client() as client:
        response = client.post(SAMPLE, content=body, headers={"Content-Type": content_type, "Origin": ORIGIN})
        message = assert_refused(response, 415, "unsupported_media_type", "content-type")
        assert content_type.split(";")[0].lower() in message and "application/json" in message
        response = client.post(V2_INFER, content=body, headers={"Content-Type": content_type})
        assert response.status_code == 415 and "application/json" in response.json()["error"]


def test_json_and_v2_binary_bodies_pass_and_a_browser_must_say_json():
    body = b'{"n": 1, "seed": 3}'
    with app_client() as client:
        for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
            assert client.post(SAMPLE, content=body, headers={"Content-Type": content_type}).status_code == 200
        # no Content-Type, as tritonclient.http sends: the V2 route itself answers (the fake has no such function)
        assert client.post(V2_INFER, content=b"{}").status_code == 404
        response = client.post(V2_INFER, content=b"{}", headers={"Origin": ORIGIN})  # a page's fetch() of raw bytes
        assert response.status_code == 415 and "content-type: missing" in response.json()["error"]
        response = client.post(SAMPLE, content=body, headers={"Origin": ORIGIN})
        assert "missing" in assert_refused(response, 415, "unsupported_media_type", "content-type")
        for content_type in ("application/octet-stream",
                             "application/vnd.sagemaker-triton.binary+json;json-header-size=2"):
            response = client.post(V2_INFER, content=b"{}", headers={"Content-Type": content_type})
            assert response.status_code != 415, response.text  # the V2 route itself answers


@pytest.mark.parametrize("headers", [{"Content-Type": "application/octet-stream"},
                                     {"Content-Type": "application/vnd.foo+json"}, {}])
def test_v1_reads_json_only_the_binary_types_and_no_type_are_v2s(headers):
    body = b'{"n": 1, "seed": 3}'
    with app_client() as client:
        message = assert_refused(client.post(SAMPLE, content=body, headers=headers), 415, "unsupported_media_type",
                                 "content-type")
        assert "application/json" in message
        assert client.post(V2_INFER, content=b"{}", headers=headers).status_code != 415  # the V2 route answers
        response = client.post(SAMPLE)  # no body, no type: the route itself says what is missing
        assert response.status_code == 422, response.text


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", " GZip"])
def test_a_coded_body_is_415_except_where_v2_infer_inflates_it(encoding):
    body = gzip.compress(b'{"n": 1, "seed": 3}')
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    with app_client() as client:
        message = assert_refused(client.post(SAMPLE, content=body, headers=headers), 415, "unsupported_media_type",
                                 "content-encoding")
        assert encoding.strip() in message and SAMPLE in message
        response = client.post(V2_INFER, content=body, headers=headers)  # the V2 route itself answers
        assert response.status_code != 415, response.text
        plain = {"Content-Type": "application/json", "Content-Encoding": "identity"}
        assert client.post(SAMPLE, content=b'{"n": 1, "seed": 3}', headers=plain).status_code == 200


def test_cors_is_off_by_default_and_on_for_the_configured_origins(keys_file):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    with app_client() as client:
        assert "access-control-allow-origin" not in client.get("/v1/models", headers={"Origin": ORIGIN}).headers
        response = client.options(SAMPLE, headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    with app_client(api_keys_file=keys_file, cors_origins=[ORIGIN]) as client:
        response = client.options(SAMPLE, headers=preflight)  # a preflight carries no key, and needs none
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in response.headers["access-control-allow-headers"].lower()
        response = client.post(SAMPLE, json={"n": 1}, headers={"Origin": ORIGIN, **bearer(KEYS[0])})
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == ORIGIN
        refused = client.get("/v1/models", headers={"Origin": ORIGIN})  # a page can read the 401
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
        other = client.options(SAMPLE, headers={**preflight, "Origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


# --- gRPC ----------------------------------------------------------------------------------------------------------


def grpc_scenario(settings: Settings, body) -> None:
    """`body(channel)` against an in-process gRPC server over the fake engine."""

    async def main() -> None:
        server = build_grpc_server(FakeEngine(), settings, 0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}") as channel:
                await asyncio.wait_for(body(channel), 60.0)
        finally:
            await server.stop(grace=None)

    asyncio.run(main())


async def code_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def test_grpc_calls_need_a_key_except_health(keys_file):
    settings = Settings(host="127.0.0.1", api_keys_file=keys_file)
    good, bad = (("authorization", f"Bearer {KEYS[1]}"),), (("authorization", f"Bearer {KEYS[1]}x"),)
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED

    async def sample_stream(channel, metadata):
        async for _ in pb_grpc.GenserveStub(channel).SampleStream(pb.SampleRequest(model="binary", n=1),
                                                                  timeout=RPC_S, metadata=metadata):
            pass

    async def reflect(channel, metadata):
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=RPC_S,
                                                                                      metadata=metadata)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await call.done_writing()
        return await call.read()

    async def body(channel):
        genserve, v2 = pb_grpc.GenserveStub(channel), v2_pb_grpc.GRPCInferenceServiceStub(channel)
        models = genserve.ListModels
        assert await code_of(models(pb.ListModelsRequest(), timeout=RPC_S)) == (
            unauthenticated, "authorization: missing; send the metadata 'authorization: Bearer <key>'")
        assert await code_of(models(pb.ListModelsRequest(), timeout=RPC_S, metadata=bad)) == (
            unauthenticated, "authorization: not a valid 'Bearer <key>'")
        listed = await models(pb.ListModelsRequest(), timeout=RPC_S, metadata=good)
        assert {m.name for m in listed.models} == {"binary", "quad"}
        assert (await code_of(sample_stream(channel, None)))[0] == unauthenticated
        assert (await code_of(v2.ServerLive(v2_pb.ServerLiveRequest(), timeout=RPC_S)))[0] == unauthenticated
        assert (await v2.ServerLive(v2_pb.ServerLiveRequest(), timeout=RPC_S, metadata=good)).live
        assert (await code_of(reflect(channel, None)))[0] == unauthenticated
        assert (await reflect(channel, good)).list_services_response.service
        unknown = channel.unary_unary("/genserve.v1.Genserve/NoSuchMethod")
        assert (await code_of(unknown(b"", timeout=RPC_S)))[0] == unauthenticated
        assert (await code_of(unknown(b"", timeout=RPC_S, metadata=good)))[0] == grpc.StatusCode.UNIMPLEMENTED
        health = health_pb2_grpc.HealthStub(channel)
        checked = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_S)
        assert checked.status == health_pb2.HealthCheckResponse.SERVING

    grpc_scenario(settings, body)


def test_calls_in_flight_are_counted_by_method_until_they_end():
    calls, release = CallsInFlight(), asyncio.Event()

    async def unary(_request, _context):
        await release.wait()
        return "done"

    async def stream(_request, _context):
        await release.wait()
        yield "row"

    async def main():
        def wrapped(method, handler):
            return around_calls(handler, lambda _context: calls.tracked(method))

        one = wrapped("/s/Unary", grpc.unary_unary_rpc_method_handler(unary))
        two = wrapped("/s/Stream", grpc.unary_stream_rpc_method_handler(stream))
        rows = two.unary_stream(None, None)
        running = [asyncio.ensure_future(one.unary_unary(None, None)), asyncio.ensure_future(anext(rows)),
                   asyncio.ensure_future(one.unary_unary(None, None))]
        await asyncio.sleep(0)
        assert calls.methods == {"/s/Unary": 2, "/s/Stream": 1}
        assert not await calls.finished(0.01)
        release.set()
        assert await asyncio.gather(*running) == ["done", "row", "done"]
        assert calls.methods == {"/s/Stream": 1}  # the stream has not ended yet
        await rows.aclose()
        assert not calls.methods and await calls.finished(0.01)

    asyncio.run(main())
