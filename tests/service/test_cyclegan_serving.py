"""cyclegan's two-way `translate` through the engine, REST and gRPC: each `direction` serves its own generator (the
eager one's images, on ONNX and TorchScript), the answers are deterministic and agree across protocols, leaving
`direction` out takes the manifest's default, and an unknown direction or a bad image is a 4xx naming the field;
pix2pix (one way) refuses a direction but still translates without one."""

import asyncio
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_array, to_tensor
from service.settings import Settings
from service.store import ModelStore

ROOT = Path(__file__).resolve().parents[2]
DIRECTIONS = ("a_to_b", "b_to_a")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A run of the tiny config at its seeded initial weights (training is tested in tests/training), exported with
    its domain-b classifier for the metrics trained briefly, beside a copy of the shipped pix2pix: (store, run)."""
    from safetensors.torch import save_file

    from training import quality
    from training.export import export
    from training.families import cyclegan

    root = tmp_path_factory.mktemp("cyclegan")
    config = json.loads((ROOT / "training" / "configs" / "cyclegan-tiny.json").read_text())
    (run := root / "run").mkdir()
    (run / "config.json").write_text(json.dumps(config))
    torch.manual_seed(config["train"]["seed"])
    save_file(cyclegan.CycleGAN(cyclegan.CycleGANConfig(**config["model"])).state_dict(), run / "model.safetensors")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cyclegan, "target_classifier",
                      lambda mnist_frame=False: quality.train_classifier(cyclegan.digits28(mnist_frame), epochs=1,
                                                                         max_train=64))
        export(run, root / "models", name="cyclegan", baseline=False)
    shutil.copytree(ROOT / "models" / "pix2pix", root / "models" / "pix2pix")
    return root / "models", run


def digits(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 1, 28, 28))


def test_manifest_names_the_directions_and_their_functions(store):
    manifest = json.loads((store[0] / "cyclegan" / "1" / "manifest.json").read_text())
    capability = manifest["capabilities"]["translate"]
    assert {d: v["function"] for d, v in capability["directions"].items()} == {d: d for d in DIRECTIONS}
    assert capability["function"] == "a_to_b" and set(manifest["functions"]) == set(DIRECTIONS)
    assert all(0 <= manifest["metrics"][f"{d}_class_survival"] <= 1 for d in DIRECTIONS)


@pytest.mark.parametrize("runtime", ["onnx", "torchscript"])
def test_each_direction_serves_its_own_generator(store, runtime):
    from safetensors.torch import load_file

    from training.families import cyclegan

    config = json.loads((store[1] / "config.json").read_text())["model"]
    model = cyclegan.CycleGAN(cyclegan.CycleGANConfig(**config)).eval()
    model.load_state_dict(load_file(store[1] / "model.safetensors"))
    engine = Engine(ModelStore(store[0]), Settings(runtime=runtime, intra_op_threads=1))
    x = digits(3)
    for direction, generator in zip(DIRECTIONS, (model.g_ab, model.g_ba), strict=True):
        served = asyncio.run(engine.translate("cyclegan", x, direction))
        with torch.no_grad():
            eager = cyclegan.Translate(generator)(torch.from_numpy(x)).numpy()
        assert served.shape == (3, 1, 28, 28)
        assert np.abs(served - eager).max() <= 1 and (served != eager).mean() < 0.01  # rounding ties (ONNX)
        assert np.array_equal(asyncio.run(engine.translate("cyclegan", x, direction)), served)  # deterministic
    assert np.array_equal(asyncio.run(engine.translate("cyclegan", x)),
                          asyncio.run(engine.translate("cyclegan", x, "a_to_b")))  # the manifest's default


def test_engine_refuses_an_unknown_direction_naming_it(store):
    engine = Engine(ModelStore(store[0]), Settings(runtime="onnx", intra_op_threads=1))
    for name, direction in (("cyclegan", "sideways"), ("pix2pix", "a_to_b")):
        with pytest.raises(InvalidInput) as info:
            asyncio.run(engine.translate(name, digits(1) % 2, direction))
        assert info.value.field == "direction" and repr(direction) in info.value.message
    assert asyncio.run(engine.translate("pix2pix", digits(1) % 2)).shape == (1, 1, 28, 28)  # one way, no direction


def test_rest_and_grpc_translate_both_ways_and_refuse_bad_input(store):
    settings = Settings(host="127.0.0.1", models=store[0], intra_op_threads=1)
    x = digits(2, seed=1)
    rest = {}
    with TestClient(create_app(Engine(ModelStore(store[0]), settings), settings)) as client:
        for direction in DIRECTIONS:
            reply = client.post("/v1/models/cyclegan/translate", json={"inputs": x.tolist(), "direction": direction})
            assert reply.status_code == 200, reply.text
            rest[direction] = np.asarray(reply.json()["images"])
        assert not np.array_equal(rest["a_to_b"], rest["b_to_a"])  # two generators
        for body, field in (({"inputs": x.tolist(), "direction": "sideways"}, "direction"),
                            ({"inputs": [np.zeros((1, 8, 8), int).tolist()], "direction": "b_to_a"}, "body.inputs[0]"),
                            ({"inputs": x.tolist(), "direction": 3}, "body.direction")):
            bad = client.post("/v1/models/cyclegan/translate", json=body)
            assert bad.status_code == 422 and field in bad.json()["error"]["field"], bad.text

    async def over_grpc() -> dict[str, np.ndarray]:
        server = build_grpc_server(Engine(ModelStore(store[0]), settings), settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            stub = pb_grpc.GenserveStub(channel)
            answers = {d: await stub.Translate(pb.TranslateRequest(model="cyclegan", inputs=to_tensor(x), direction=d),
                                               timeout=20) for d in DIRECTIONS}
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Translate(pb.TranslateRequest(model="cyclegan", inputs=to_tensor(x), direction="up"),
                                     timeout=20)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "direction" in info.value.details()
            return {d: to_array(a.images, "images") for d, a in answers.items()}
        finally:
            await channel.close()
            await server.stop(grace=None)

    over = asyncio.run(asyncio.wait_for(over_grpc(), 60))
    assert all(np.array_equal(over[d], rest[d]) for d in DIRECTIONS)
