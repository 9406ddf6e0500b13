"""Inputs outside what a model declares, refused alike by the engine, REST and gRPC (a 4xx naming the field the
client can change, never an answer computed from NaN), on the shipped models: a DVBF's actions and an InfoGAN's
continuous control outside their declared ranges, temperatures below MIN_TEMPERATURE, prompts and Markov chains
too long, versions that are not numbers; and a gRPC stream's request id set and reset in different contexts."""

import asyncio
import contextvars
from pathlib import Path

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.engine.validation import MIN_TEMPERATURE
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_tensor
from service.grpc.request_id import answering_with_id
from service.logs import REQUEST_ID
from service.settings import Settings
from service.store import ModelStore

MODELS = Path(__file__).resolve().parents[2] / "models"
USED = ("dvbf", "infogan", "charrnn", "maf")
FRAMES = np.zeros((1, 3, 1, 16, 16), np.int64)  # one sequence of the 3 frames a DVBF filters from


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    """A store of the shipped models these tests use (links), so that only they load."""
    root = tmp_path_factory.mktemp("store")
    for name in USED:
        (root / name).symlink_to(MODELS / name, target_is_directory=True)
    return Settings(host="127.0.0.1", models=root, intra_op_threads=1, runtime="onnx")


@pytest.fixture(scope="module")
def engine(settings) -> Engine:
    return Engine(ModelStore(settings.models), settings)


@pytest.fixture(scope="module")
def client(engine, settings):
    with TestClient(create_app(engine, settings)) as c:
        yield c


def over_grpc(engine, settings, calls):
    """calls(stub) run against a gRPC server over `engine`: what it returns."""
    async def run():
        server = build_grpc_server(engine, settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            return await calls(pb_grpc.GenserveStub(channel))
        finally:
            await channel.close()
            await server.stop(grace=None)
    return asyncio.run(run())


def grpc_refusal(engine, settings, method: str, request) -> grpc.aio.AioRpcError:
    async def call(stub):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await getattr(stub, method)(request, timeout=30)
        return refused.value
    return over_grpc(engine, settings, call)


def rest_error(reply) -> dict:
    assert reply.status_code == 422, reply.text
    return reply.json()["error"]


# --- 1. a DVBF's actions and an InfoGAN's continuous control: within the declared range ---------------------------


@pytest.mark.parametrize("action", [1e10, -3.001, float("nan")])
def test_actions_outside_the_declared_range_are_refused_by_the_engine(engine, action):
    u = np.full((2, 1), action)  # [T - 1, 1] for 3 frames
    for call in (engine.encode("dvbf", FRAMES, actions=u), engine.predict("dvbf", FRAMES, np.vstack([u, u])),
                 engine.sample("dvbf", 1, 0, 1.0, None, actions=u)):
        with pytest.raises(InvalidInput) as refused:
            asyncio.run(call)
        assert refused.value.field == "actions" and "[-3, 3]" in str(refused.value)


def test_actions_at_the_ends_of_the_range_are_served_finite(engine):
    u = np.array([[-3.0], [3.0]])
    out = asyncio.run(engine.predict("dvbf", FRAMES, np.vstack([u, u])))
    assert np.isfinite(out["states"]).all() and out["frames"].shape == (1, 2, 1, 16, 16)


@pytest.mark.parametrize("capability", ["predict", "encode", "sample"])
def test_rest_names_actions_and_the_range(client, capability):
    actions = [[1e10]] * (4 if capability == "predict" else 2)
    body = {"actions": actions} if capability == "sample" else {"inputs": FRAMES[:, :, 0].tolist(),
                                                                "actions": actions}
    error = rest_error(client.post(f"/v1/models/dvbf/{capability}", json=body))
    assert error["field"] == "actions" and "[-3, 3]" in error["message"]


def test_grpc_names_actions_and_the_range(engine, settings):
    u = to_tensor(np.full((2, 1), 1e10, np.float32))
    for method, request in (("Encode", pb.EncodeRequest(model="dvbf", inputs=to_tensor(FRAMES), actions=u)),
                            ("Predict", pb.PredictRequest(model="dvbf", inputs=to_tensor(FRAMES), actions=u)),
                            ("Sample", pb.SampleRequest(model="dvbf", actions=u))):
        refused = grpc_refusal(engine, settings, method, request)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "[-3, 3]" in refused.details()
        assert refused.details().startswith("actions"), (method, refused.details())


def test_a_continuous_control_beyond_twice_its_range_is_refused(engine, settings, client):
    """InfoGAN's style codes, trained on [-1, 1], may extrapolate to [-2, 2] (its paper's figures); not beyond."""
    for inside in ([1, -1], [1.5, -2]):
        answer = client.post("/v1/models/infogan/sample", json={"n": 1, "seed": 0, "controls": {"style": inside}})
        assert answer.status_code == 200, answer.text
    error = rest_error(client.post("/v1/models/infogan/sample", json={"controls": {"style": [2.5, 0]}}))
    assert error["field"] == "controls.style" and "[-2, 2]" in error["message"]
    refused = grpc_refusal(engine, settings, "Sample", pb.SampleRequest(
        model="infogan", controls={"style": pb.ControlValue(values=[0, -2.01])}))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and refused.details().startswith("controls.style")


# --- 2. the least temperature ---------------------------------------------------------------------------------------


def test_a_temperature_below_the_floor_is_refused_by_rest_and_grpc(engine, settings, client):
    body = {"prompt": "The ", "length": 5, "temperature": 1e-300}
    error = rest_error(client.post("/v1/models/charrnn/sample", json=body))
    assert error["field"] == "body.temperature" and "at least 1e-30" in error["message"], error
    refused = grpc_refusal(engine, settings, "Sample", pb.SampleRequest(model="charrnn", prompt="The ", length=5,
                                                                        temperature=MIN_TEMPERATURE / 2))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and refused.details().startswith("temperature")


def test_the_least_temperature_samples_greedily(engine, settings, client):
    """At MIN_TEMPERATURE every seed gives the likeliest continuation (not a degenerate one of newlines)."""
    body = {"n": 1, "prompt": "The ", "length": 12, "temperature": MIN_TEMPERATURE}
    texts = {client.post("/v1/models/charrnn/sample", json={**body, "seed": seed}).json()["samples"][0]
             for seed in (0, 1)}
    assert len(texts) == 1 and texts.pop()[4:].strip()

    async def call(stub):
        return await stub.Sample(pb.SampleRequest(model="charrnn", seed=2, prompt="The ", length=12,
                                                  temperature=MIN_TEMPERATURE), timeout=30)
    greedy = over_grpc(engine, settings, call)
    assert greedy.texts[0] == client.post("/v1/models/charrnn/sample", json=body).json()["samples"][0]


# --- 4. the field the client can change -----------------------------------------------------------------------------


def test_a_chain_over_the_work_limit_names_n_unless_steps_were_given(client):
    image = np.zeros((28, 28), int).tolist()
    mask = [[1] * 28] * 14 + [[0] * 28] * 14
    error = rest_error(client.post("/v1/models/maf/complete", json={"inputs": [image], "mask": mask, "n": 64}))
    assert error["field"] == "n" and "64 x 500" in error["message"]
    error = rest_error(client.post("/v1/models/maf/complete", json={"inputs": [image], "mask": mask, "n": 8,
                                                                    "steps": 4000}))
    assert error["field"] == "steps"


def test_a_prompt_too_long_names_prompt_and_a_length_too_long_names_length(client):
    most = 15000  # charrnn's capabilities.sample.max_length
    for body, field in (({"prompt": "e" * most, "length": 1}, "prompt"),
                        ({"prompt": "e" * (most - 100)}, "prompt"),  # the default length, which it did not send
                        ({"prompt": "The ", "length": most}, "length")):
        error = rest_error(client.post("/v1/models/charrnn/sample", json=body))
        assert error["field"] == field, (body.get("length"), error)


@pytest.mark.parametrize("version", ["+1", "1.0", "²", "-1"])
def test_a_version_that_is_not_a_number_is_named_as_given(client, version):
    reply = client.post(f"/v1/models/maf/versions/{version}/sample", json={"n": 1})
    assert reply.status_code == 404
    assert reply.json()["error"]["field"] == "version"
    assert f"{version!r} is not a version number" in reply.json()["error"]["message"]


def test_a_numbered_version_is_served_or_named(client):
    assert client.post("/v1/models/maf/versions/1/sample", json={"n": 1, "seed": 0}).status_code == 200
    missing = client.post("/v1/models/maf/versions/7/sample", json={"n": 1})
    assert missing.status_code == 404 and "no version 7" in missing.json()["error"]["message"]


# --- 3. the request id across contexts -------------------------------------------------------------------------------


class Context:
    """The part of a grpc.aio ServicerContext that answering_with_id uses."""

    def __init__(self, rid: str):
        self.metadata, self.trailing = (("x-request-id", rid),), None

    def invocation_metadata(self):
        return self.metadata

    def set_trailing_metadata(self, metadata):
        self.trailing = metadata


def test_a_stream_closed_in_another_context_resets_nothing_and_raises_nothing():
    """A cancelled stream's generator may be finalized in another context than the one that set its id (grpc.aio
    closes it from its own task): closing it there is no error, and the id stays where it was set."""
    seen = []

    async def stream(context):
        with answering_with_id(context):
            seen.append(REQUEST_ID.get())
            yield 1
            yield 2

    async def run():
        chunks = stream(Context("stream-1"))
        started = contextvars.copy_context()  # the call's context, where the id is set
        await asyncio.create_task(anext(chunks), context=started)
        await chunks.aclose()  # here, another context: reset(token) would raise ValueError
        return started

    started = asyncio.run(run())
    assert seen == ["stream-1"] and started[REQUEST_ID] == "stream-1" and REQUEST_ID.get() is None


def test_a_unary_call_sets_then_resets_the_id():
    context = Context("unary-1")
    before = REQUEST_ID.set("outer")
    try:
        with answering_with_id(context):
            assert REQUEST_ID.get() == "unary-1"
        assert REQUEST_ID.get() == "outer" and context.trailing == (("x-request-id", "unary-1"),)
    finally:
        REQUEST_ID.reset(before)
