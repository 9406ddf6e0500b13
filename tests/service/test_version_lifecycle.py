"""A version's life in the engine (service.engine.engine, service.engine.workers): a load serves exactly the files
its manifest certifies, a version whose files go or change before its use is a clear refusal (naming the field that
chose the version: `version` where the request named it, else the model's, over REST and gRPC), a version the engine
cannot serve (vector data) is left out as a bad version is, and the store poll survives it. One tiny PixelCNN,
copied as versions; "new weights" are its log_prob.onnx with every float weight halved."""

import asyncio
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper
from prometheus_client import CollectorRegistry

from service.api import create_app
from service.engine.engine import PINNED_VERSION, Engine
from service.engine.errors import VERSION_FIELD, InvalidInput, UnknownModel, UnsupportedModel, VersionGone
from service.engine.oip import resolve
from service.engine.workers import WorkerPool, version_id
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.gen_inference import grpc_predict_v2_pb2 as v2pb
from service.grpc.gen_inference import grpc_predict_v2_pb2_grpc as v2pb_grpc
from service.grpc.server import build_grpc_server
from service.settings import Settings
from service.store import ModelStore

MODEL = "pixelcnn"
X = np.random.default_rng(0).integers(0, 2, (2, 1, 28, 28))


def settings(**kwargs) -> Settings:
    return Settings(runtime="onnx", intra_op_threads=1, **kwargs)


def add_version(store: Path, version: int, name: str = MODEL, kind: str | None = None) -> Path:
    """<store>/<name>/<version>/: the tiny pixelcnn's files (`source`, beside the store) under a manifest naming
    them so (and data.kind `kind`)."""
    target = store / name / str(version)
    shutil.copytree(store.parent / "source", target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.update(name=name, version=version)
    if kind is not None:
        manifest["data"] = {**manifest["data"], "kind": kind}
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture
def store(tiny_store, tmp_path) -> Path:
    """A store holding the tiny pixelcnn as version 1 (its export kept beside it, as `source`)."""
    shutil.copytree(next((tiny_store / MODEL).iterdir()), tmp_path / "source")
    add_version(tmp_path / "store", 1)
    return tmp_path / "store"


def halve_weights(directory: Path, certify: bool = True) -> None:
    """New weights for log_prob (every float initializer halved, saved whole); `certify`: its manifest's sha256 too."""
    model = onnx.load(str(directory / "log_prob.onnx"))  # with its external data
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) / 2, tensor.name))
    onnx.save(model, str(directory / "log_prob.onnx"))
    if certify:
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["files"]["log_prob.onnx"] = hashlib.sha256((directory / "log_prob.onnx").read_bytes()).hexdigest()
        (directory / "manifest.json").write_text(json.dumps(manifest))


def short_deadline() -> Settings:
    """Settings whose deadline (100 ms) retires a version 0.2 s after an unload. Set after a version's first call,
    whose runtime load a busy machine may stretch past such a deadline."""
    return settings(timeout_ms=100)


def log_prob(engine: Engine) -> np.ndarray:
    return asyncio.run(engine.infer(MODEL, "log_prob", {"x": X}))["log_prob"]


def test_a_version_reloaded_with_new_files_runs_the_new_files_and_frees_the_old(store):
    engine = Engine(ModelStore(store), settings())
    version_two = add_version(store, 2)
    assert engine.load_model(MODEL) == [1, 2]
    old = log_prob(engine)  # version 2, the latest: its runtime is loaded now
    engine.settings = short_deadline()
    engine.unload_model(MODEL)
    assert [key for key in engine.runner.functions.loaded if key[0] != MODEL]  # kept for requests in flight
    time.sleep(0.3)  # every request begun on it is past its deadline
    engine.forget_retired()
    assert not [key for key in engine.runner.functions.loaded if key[0] != MODEL]  # version 2's runtimes freed
    assert not engine._batchers
    engine.settings = settings()
    halve_weights(version_two)
    assert engine.load_model(MODEL) == [1, 2]
    new = log_prob(engine)
    assert not np.allclose(new, old)  # was: byte-equal to the old weights' answer
    assert engine.model(MODEL, 1).runner_id != MODEL  # unloaded: its runner (a restarted worker) may not know it
    fresh = Engine(ModelStore(store), settings())  # version 2 as a fresh start reads it
    assert np.array_equal(new, log_prob(fresh))


def test_a_loaded_version_whose_files_go_or_change_before_its_use_is_refused_naming_the_version(store):
    engine = Engine(ModelStore(store), settings())
    version_two = add_version(store, 2)
    engine.load_model(MODEL)
    halve_weights(version_two, certify=False)  # weights replaced, the manifest left as it was
    with pytest.raises(UnknownModel, match="version 2: its files in the store are gone or changed") as refused:
        log_prob(engine)
    assert refused.value.field == "model"  # a call that named no version: it ran on the model's latest
    engine.load_model(MODEL)  # the store now refuses version 2 (sha256): version 1 is served
    assert engine.model(MODEL).version == 1
    add_version(store, 3)
    engine.load_model(MODEL)
    shutil.rmtree(store / MODEL / "3")
    with TestClient(create_app(engine, engine.settings)) as client:
        body = {"inputs": [{"name": "x", "shape": list(X.shape), "datatype": "INT64", "data": X.ravel().tolist()}]}
        answer = client.post(f"/v2/models/{MODEL}.log_prob/versions/3/infer", json=body)
        assert answer.status_code == 404 and "version 3: its files in the store are gone" in answer.text, answer.text
        gone = client.post(f"/v1/models/{MODEL}/versions/3/sample", json={"n": 1, "seed": 1})
        assert gone.status_code == 404 and gone.json()["error"]["field"] == "version", gone.text


def test_a_worker_refuses_a_version_whose_directory_went_and_forgets_a_version(store):
    directories = {MODEL: store / MODEL / "1"}
    version_two = add_version(store, 2)
    manifest = json.loads((version_two / "manifest.json").read_text())
    two = version_id(version_two, manifest)

    async def main() -> tuple:
        pool = WorkerPool(directories, "onnx", 1)
        await pool.start()
        try:
            for _ in range(600):  # bounded: 30 s
                if pool.ready():
                    break
                await asyncio.sleep(0.05)
            first = await pool.call(two, "log_prob", {"x": X})
            pool.forget(two)
            again = await pool.call(two, "log_prob", {"x": X})  # loaded again, from the same files
            shutil.rmtree(version_two)
            pool.forget(two)
            with pytest.raises(VersionGone, match="version 2: its files in the store are gone") as refused:
                await pool.call(two, "log_prob", {"x": X})  # was: RuntimeError (a 500) naming a KeyError
            return first, again, refused.value
        finally:
            await pool.stop()

    first, again, refused = asyncio.run(main())
    assert np.array_equal(first["log_prob"], again["log_prob"])
    assert refused.detail.startswith(f"model: model '{MODEL}' version 2: its files")  # no version named in this context


GONE = f"model '{MODEL}' version 2: its files in the store are gone or changed since it was loaded"
V2_BODY = {"inputs": [{"name": "x", "shape": list(X.shape), "datatype": "INT64", "data": X.ravel().tolist()}]}


def latest_gone(store: Path) -> Engine:
    """An engine serving versions 1 and 2 of the model, version 2 (its latest, loaded after the start) since gone from
    the store."""
    engine = Engine(ModelStore(store), settings())
    add_version(store, 2)
    engine.load_model(MODEL)
    shutil.rmtree(store / MODEL / "2")
    return engine


def test_a_gone_version_is_named_by_the_field_that_chose_it_over_rest(store):
    with TestClient(create_app(latest_gone(store), settings())) as client:
        sample = client.post(f"/v1/models/{MODEL}/sample", json={"n": 1, "seed": 1})
        versioned = client.post(f"/v1/models/{MODEL}/versions/2/sample", json={"n": 1, "seed": 1})
        infer = client.post(f"/v2/models/{MODEL}.log_prob/infer", json=V2_BODY)
        infer_versioned = client.post(f"/v2/models/{MODEL}.log_prob/versions/2/infer", json=V2_BODY)
        infer_unknown = client.post(f"/v2/models/{MODEL}.log_prob/versions/9/infer", json=V2_BODY)
    assert {r.status_code for r in (sample, versioned, infer, infer_versioned, infer_unknown)} == {404}
    assert sample.json()["error"]["field"] == "model", sample.text  # was: version, which the request never named
    assert sample.json()["error"]["message"].startswith(f"model: {GONE}"), sample.text
    assert versioned.json()["error"]["field"] == "version", versioned.text
    assert versioned.json()["error"]["message"].startswith(f"version: {GONE}"), versioned.text
    assert infer.json()["error"].startswith(f"model_name: {GONE}"), infer.text  # was: version
    # V2's version field has one name, whether the version it names is gone (was: version) or unknown
    assert infer_versioned.json()["error"].startswith(f"model_version: {GONE}"), infer_versioned.text
    assert infer_unknown.json()["error"].startswith("model_version: "), infer_unknown.text


def test_a_gone_version_is_named_by_the_field_that_chose_it_over_grpc(store):
    engine = latest_gone(store)

    def infer(version: str) -> v2pb.ModelInferRequest:
        return v2pb.ModelInferRequest(
            model_name=f"{MODEL}.log_prob", model_version=version, raw_input_contents=[X.astype("<i8").tobytes()],
            inputs=[v2pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT64", shape=X.shape)])

    async def refusals() -> list[grpc.aio.AioRpcError]:
        server = build_grpc_server(engine, engine.settings, 0)
        await server.start()
        answers = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}") as channel:
                v2 = v2pb_grpc.GRPCInferenceServiceStub(channel)
                for call in (pb_grpc.GenserveStub(channel).Sample(pb.SampleRequest(model=MODEL, n=1, seed=1)),
                             v2.ModelInfer(infer("")), v2.ModelInfer(infer("2")), v2.ModelInfer(infer("9"))):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await asyncio.wait_for(call, 60)
                    answers.append(info.value)
        finally:
            await server.stop(grace=None)
        return answers

    sample, infer_latest, infer_versioned, infer_unknown = asyncio.run(refusals())
    assert {e.code() for e in (sample, infer_latest, infer_versioned, infer_unknown)} == {grpc.StatusCode.NOT_FOUND}
    assert sample.details().startswith(f"model: {GONE}"), sample.details()  # was: version, which it cannot name
    assert infer_latest.details().startswith(f"model_name: {GONE}"), infer_latest.details()  # was: version
    assert infer_versioned.details().startswith(f"model_version: {GONE}"), infer_versioned.details()  # was: version
    assert infer_unknown.details().startswith("model_version: "), infer_unknown.details()


def test_one_refusal_answers_each_request_of_a_batch_with_the_field_that_chose_its_version(store):
    engine = latest_gone(store)

    async def request(field: str) -> tuple[Exception, str]:
        VERSION_FIELD.set(field)  # as an adapter does for its request (each task has its own context)
        with pytest.raises(VersionGone) as refused:
            await engine.infer(MODEL, "log_prob", {"x": X})
        return refused.value, refused.value.detail

    async def both() -> list[tuple[Exception, str]]:
        return await asyncio.gather(request("model"), request("version"))

    (latest, latest_said), (named, named_said) = asyncio.run(both())
    assert latest is named  # one batch, one refusal
    assert latest_said.startswith(f"model: {GONE}") and named_said.startswith(f"version: {GONE}")


def test_a_pinned_version_dropped_before_its_use_is_named_by_the_field_that_chose_it(store):
    engine = latest_gone(store)
    engine.load_model(MODEL)  # the store holds version 1 only now: version 2, pinned below, is dropped

    async def request(field: str) -> UnknownModel:
        PINNED_VERSION.set((MODEL, 2))  # as VersionedRoutes (v2_pin) pinned the latest when the request came
        VERSION_FIELD.set(field)
        with pytest.raises(UnknownModel) as refused:
            await engine.infer(MODEL, "log_prob", {"x": X})
        return refused.value

    for field in ("model", "model_name", "model_version"):
        refused = asyncio.run(request(field))  # (each run in a context of its own)
        assert refused.field == field, refused.detail  # was: version, whatever chose it
        assert refused.detail.startswith(f"{field}: model '{MODEL}' has no version 2 now"), refused.detail
    with pytest.raises(UnknownModel, match=r"^version: model 'pixelcnn' has no version 2; it has \[1\]") as named:
        engine.model(MODEL, 2)  # a version given by the caller: named `version`
    assert named.value.field == "version"


def test_resolve_leaves_the_version_field_to_the_adapters_that_set_and_reset_it(store):
    engine = Engine(ModelStore(store), settings())

    async def after(version: str) -> str:
        resolve(engine, f"{MODEL}.log_prob", version)
        return VERSION_FIELD.get()

    assert [asyncio.run(after(version)) for version in ("", "1")] == ["model", "model"]  # was: model_name, version


BACKGROUND = "background"


def gone_background(store: Path) -> Engine:
    """An engine serving the model with the likelihood ratio as its default detector over BACKGROUND (the tiny
    pixelcnn again), whose latest version (2, loaded after the start) is since gone from the store."""
    path = store / MODEL / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = {"score": "nll_minus_background_nll_nats", "quantiles": [0.0, 1.0], "values": [-50.0, 50.0], "n": 2,
             "split": "test", "background": BACKGROUND}
    manifest["calibration"] |= {"default": "likelihood_ratio", "detectors": {"likelihood_ratio": entry}}
    path.write_text(json.dumps(manifest))
    add_version(store, 1, BACKGROUND)
    engine = Engine(ModelStore(store), settings())
    add_version(store, 2, BACKGROUND)
    engine.load_model(BACKGROUND)
    shutil.rmtree(store / BACKGROUND / "2")
    return engine


def test_a_gone_background_is_as_a_missing_one_a_default_falls_back_a_named_detector_is_refused(store):
    engine = gone_background(store)

    async def scores(anomaly_method: str | None) -> list[dict]:
        return await engine.score(MODEL, X, anomaly_method=anomaly_method)

    fallback = asyncio.run(scores(None))  # was: 404 naming `model`, which chose the model, not its background
    assert fallback == asyncio.run(scores("nll")) and {r["anomaly"]["method"] for r in fallback} == {"nll"}
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(scores("likelihood_ratio"))
    assert refused.value.field == "anomaly_method", refused.value.detail
    assert f"background model {BACKGROUND!r}, which is not available now" in refused.value.detail
    with TestClient(create_app(engine, settings())) as client:
        body = {"inputs": X.tolist(), "anomaly_method": "likelihood_ratio"}
        named = client.post(f"/v1/models/{MODEL}/score", json=body)
    assert named.status_code == 422 and named.json()["error"]["field"] == "anomaly_method", named.text


def test_a_worker_pool_started_after_a_forget_does_not_load_what_it_forgot(store):
    pool = WorkerPool({MODEL: store / MODEL / "1", "other": store / MODEL / "1"}, "onnx", 1)
    pool.forget(MODEL)  # (a model whose version the engine cannot serve, at its start; an unloaded one)
    assert list(pool.directories) == ["other"]


def test_an_unservable_version_is_left_out_and_the_model_served_from_its_good_ones(store):
    add_version(store, 2, kind="vector")
    with pytest.raises(UnsupportedModel, match="vector data is not served"):  # as a bad version stops the start
        Engine(ModelStore(store), settings())
    engine = Engine(ModelStore(store), settings(skip_bad_models=True))  # was: refused whole
    assert sorted(engine.versions[MODEL]) == [1] and engine.unavailable_models() == []
    assert engine.runner.functions.loaded == {}  # version 2, the start's latest, is not loaded; version 1 on first use
    assert log_prob(engine).shape == (len(X),)
    index = {m["version"]: m for m in engine.repository_index(True) if m["name"] == f"{MODEL}.log_prob"}
    assert index["1"]["state"] == "READY"
    assert index["2"]["state"] == "UNAVAILABLE" and "vector data is not served" in index["2"]["reason"]
    assert engine.load_model(MODEL) == [1]  # was: 404 nothing to load

    add_version(store, 1, name="gan", kind="vector")  # a model with no servable version: left out, listed
    served = ModelStore(store)
    engine = Engine(served, settings(skip_bad_models=True))
    assert "gan" not in engine.models and MODEL in engine.models
    [unavailable] = engine.unavailable_models()
    assert unavailable["name"] == "gan" and "vector data" in unavailable["reason"]
    registry = CollectorRegistry()  # and counted in genserve_model_unavailable, as service.main registers it
    served.register_metrics(registry, [u for u in engine.unavailable if u["name"] not in served.unavailable])
    assert registry.get_sample_value("genserve_model_unavailable",
                                     {"model": "gan", "version": "1", "reason": "unsupported"}) == 1
    with pytest.raises(UnknownModel, match="nothing to load: .*vector data"):
        engine.load_model("gan")


def test_the_store_poll_outlives_a_version_it_cannot_serve(store, caplog):
    add_version(store, 1, name="other")

    async def poll() -> int:
        engine = Engine(ModelStore(store), settings(store_poll_s=0.02))
        await engine.start()
        try:
            add_version(store, 2, name="other", kind="vector")
            await asyncio.sleep(0.2)  # about 10 polls
            add_version(store, 2)
            for _ in range(250):  # bounded: 5 s
                if engine.model(MODEL).version == 2:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            return engine.model(MODEL).version
        finally:
            await engine.stop()

    with caplog.at_level(logging.WARNING, logger="genserve.engine"):
        assert asyncio.run(poll()) == 2  # was: 1, the poll ended at other/2
    refusals = [r for r in caplog.records if "other: version 2 not loaded" in r.getMessage()]
    assert len(refusals) == 1 and "vector data" in refusals[0].getMessage()  # logged once, not every poll


def test_a_replaced_version_keeps_its_runtimes_for_the_requests_in_flight(store):
    """A load that replaces a version frees the old one's runtimes only once every request begun on it is past its
    deadline, so a request in flight finishes on the files it began with (freed at once, the request reloaded the
    version, failed its digest and was refused with 'load the model again')."""
    engine = Engine(ModelStore(store), settings())
    version_two = add_version(store, 2)
    engine.load_model(MODEL)
    log_prob(engine)
    before = engine.model(MODEL, 2)
    halve_weights(version_two)
    engine.load_model(MODEL)
    engine.forget_retired()  # as each load and unload does
    assert engine.model(MODEL, 2).runner_id != before.runner_id
    assert (before.runner_id, "log_prob") in engine.runner.functions.loaded  # kept: the default deadline is 60 s
    assert before.runner_id in engine._retired


def test_an_unload_while_the_poll_hashes_the_files_stands(store):
    """The poll hashes off the event loop; an admin's unload that lands meanwhile is not undone by the poll's load."""
    engine = Engine(ModelStore(store), settings())
    add_version(store, 2)
    scan, unloads = engine.store.scan_model, []

    def scan_then_unload(name: str):
        found = scan(name)
        if not unloads:  # the admin's unload, landing while the poll's thread hashes
            unloads.append(engine.unload_model(name))
        return found

    engine.store.scan_model = scan_then_unload
    asyncio.run(engine._poll_model(MODEL))
    assert MODEL not in engine.models and MODEL in engine.unloaded


def test_every_function_of_a_version_runs_the_files_checked_at_its_first_use(store):
    """A version's first use checks its files and loads all its functions from them: a file changed later (its
    manifest left as it was) is never run, even by a function first called after the change (it was: the review's
    probe answered with the new weights)."""
    engine = Engine(ModelStore(store), settings())
    version_two = add_version(store, 2)  # the same files as version 1
    certified = log_prob(Engine(ModelStore(store), settings()))  # version 2 as a fresh start reads it
    engine.load_model(MODEL)
    runner_id = engine.model(MODEL, 2).runner_id
    other = next(function for function in engine.model(MODEL, 2).manifest["functions"] if function != "log_prob")
    engine.runner.functions[runner_id, other]  # version 2's first use, by another function
    halve_weights(version_two, certify=False)
    assert np.array_equal(log_prob(engine), certified)


def test_a_retired_version_is_freed_when_due_with_no_load_unload_or_poll(store):
    """Unloading retires a version; a timer frees its runtimes and schedulers once every request begun on it is past
    its deadline (before, they waited for the next load, unload or poll tick, forever without GENSERVE_STORE_POLL_S)."""
    engine = Engine(ModelStore(store), settings())
    add_version(store, 2)

    async def unload_then_wait() -> list:
        engine.load_model(MODEL)
        await engine.infer(MODEL, "log_prob", {"x": X})  # version 2's runtime and scheduler exist now
        engine.settings = short_deadline()
        engine.unload_model(MODEL)
        kept = [key for key in engine.runner.functions.loaded if key[0] != MODEL]
        assert kept and engine._batchers  # kept for requests in flight
        await asyncio.sleep(0.5)
        return [key for key in engine.runner.functions.loaded if key[0] != MODEL]

    assert asyncio.run(unload_then_wait()) == []  # was: version 2's log_prob still loaded
    assert not engine._batchers and engine._retired == {}


def test_a_stopped_engine_arms_no_timer(store):
    """After stop(), an unload retires its versions but sets no timer that would outlive the engine (the review's
    probe: armed, due in 120 s)."""
    engine = Engine(ModelStore(store), settings())

    async def stop_then_unload():
        await engine.stop()
        engine.unload_model(MODEL)
        return engine._forget_timer

    assert asyncio.run(stop_then_unload()) is None
