"""LAGAN: the locally connected layer against a naive loop and a convolution, the baseline's size, export parity,
and the served sample (seeded, class-conditional) from a tiny exported model."""

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.engine.latent import control_values
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_array
from service.settings import Settings
from service.store import ModelStore
from training.export import export, export_function
from training.families import lagan
from training.nn.local import LocallyConnected2d
from training.train import train

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def naive(layer: LocallyConnected2d, x: torch.Tensor) -> torch.Tensor:
    """y[b, o, i, j] = bias[o, (i, j)] + sum_{c, u, v} W[(i, j), (c, u, v), o] x[b, c, s i + u, s j + v]."""
    k, s, n = layer.kernel, layer.stride, layer.out_size
    y = torch.zeros(len(x), layer.weight.shape[2], n, n)
    for i in range(n):
        for j in range(n):
            patch = x[:, :, s * i: s * i + k, s * j: s * j + k].reshape(len(x), -1)  # [B, C k k]
            y[:, :, i, j] = patch @ layer.weight[i * n + j] + layer.bias[:, i * n + j]
    return y


@pytest.mark.parametrize("stride", [1, 2])
def test_locally_connected_equals_the_naive_loop(stride):
    torch.manual_seed(0)
    layer = LocallyConnected2d(3, 4, 3, in_size=9, stride=stride)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, 9, 9)
    np.testing.assert_allclose(layer(x).detach(), naive(layer, x).detach(), rtol=1e-5, atol=1e-5)


def test_locally_connected_shares_no_weights():
    """With one conv filter copied to every position it is that convolution; changing one position's filter changes
    that output position only."""
    torch.manual_seed(0)
    layer = LocallyConnected2d(2, 3, 3, in_size=6, bias=False)
    conv = torch.randn(3, 2, 3, 3)
    with torch.no_grad():
        layer.weight.copy_(conv.reshape(3, -1).T.expand(16, -1, -1))
    x = torch.randn(2, 2, 6, 6)
    np.testing.assert_allclose(layer(x).detach(), F.conv2d(x, conv), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        layer.weight[5] += 1.0  # position (1, 1) of the 4 x 4 output
    changed = (layer(x) - F.conv2d(x, conv)).abs().amax(dim=(0, 1)) > 1e-4  # [4, 4]
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 1] = True
    assert torch.equal(changed, expected)


def test_the_baseline_is_a_dcgan_of_the_same_size():
    def built(name: str) -> lagan.LAGAN:
        return lagan.LAGAN(lagan.LAGANConfig(**json.loads((CONFIGS / f"{name}.json").read_text())["model"]))

    ours, baseline = built("lagan"), built("lagan-dcgan")
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert abs(count(baseline) / count(ours) - 1) < 0.1
    assert any(isinstance(m, LocallyConnected2d) for m in ours.modules())
    assert not any(isinstance(m, LocallyConnected2d) for m in baseline.modules())


def test_layer_and_sample_export_parity(tmp_path, three_ways):
    torch.manual_seed(0)
    layer = LocallyConnected2d(2, 3, 5, in_size=11, stride=2).eval()
    inputs = {"x": torch.randn(3, 2, 11, 11)}
    export_function(tmp_path, "local", layer, inputs, ["y"])
    eager, onnx_out, scripted = three_ways(tmp_path, "local", layer, inputs)
    np.testing.assert_allclose(onnx_out[0], eager[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scripted[0], eager[0], rtol=1e-6, atol=1e-6)

    model = lagan.LAGAN(lagan.LAGANConfig(latent=8, generator=[4, 4, 2], critic=[2, 2])).eval()
    sample = lagan.Sample(model)
    inputs = {"eps": torch.randn(5, 8), "temperature": torch.ones(5), "class": torch.tensor([0, 1, 0, 1, 1])}
    export_function(tmp_path, "sample", sample, inputs, ["x"])
    eager, onnx_out, scripted = three_ways(tmp_path, "sample", sample, inputs)
    assert eager[0].shape == (5, 1, 25, 25) and eager[0].min() >= 0
    assert np.abs(onnx_out[0] - eager[0]).max() <= 1 and (onnx_out[0] != eager[0]).mean() < 0.01  # rounding ties
    assert np.array_equal(scripted[0], eager[0])


@pytest.fixture(scope="module")
def served(tmp_path_factory, one_thread) -> Engine:
    """The tiny config trained for one epoch and exported into a store of its own."""
    root = tmp_path_factory.mktemp("lagan")
    run = train(CONFIGS / "lagan-tiny.json", root / "run")
    export(run, root / "models", name="lagan")
    return Engine(ModelStore(root / "models"), Settings(runtime="onnx", intra_op_threads=1))


def test_served_sample_is_seeded_and_class_conditional(served):
    manifest = served.model("lagan").manifest
    assert manifest["capabilities"]["sample"]["controls"]["class"] == {"kind": "categorical", "classes": 2,
                                                                       "names": ["qcd", "w"]}
    assert set(manifest["metrics"]) >= {"w1_mass_qcd", "w1_pt_w", "w1_tau21_w"}

    async def run():
        w = await served.sample("lagan", 4, 7, 1.0, None, controls={"class": 1})
        again = await served.sample("lagan", 4, 7, 1.0, None, controls={"class": 1})
        qcd = await served.sample("lagan", 4, 7, 1.0, None, controls={"class": 0})
        other_seed = await served.sample("lagan", 4, 8, 1.0, None, controls={"class": 1})
        return w, again, qcd, other_seed

    w, again, qcd, other_seed = asyncio.run(run())
    assert w.shape == (4, 1, 25, 25) and w.min() >= 0 and w.max() <= 255
    assert np.array_equal(w, again)
    assert not np.array_equal(w, qcd)  # same noise, another class
    assert not np.array_equal(w, other_seed)


@pytest.mark.parametrize("kwargs, field", [({"controls": {"class": 2}}, "controls.class"),
                                           ({"controls": {"kind": 1}}, "controls.kind"),
                                           ({"label": 1}, "label")])
def test_bad_class_is_refused_naming_the_field(served, kwargs, field):
    label = kwargs.pop("label", None)
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(served.sample("lagan", 1, 0, 1.0, label, **kwargs))
    assert refused.value.field == field


def test_a_class_given_by_name_is_the_class_of_that_index_over_engine_rest_and_grpc(served):
    """controls {"class": "w"} is {"class": 1} (the control's names); an unknown name is a 4xx naming the field and
    the names (before: 422, a name was not a number)."""
    by_index = asyncio.run(served.sample("lagan", 3, 5, 1.0, None, controls={"class": 1}))
    assert np.array_equal(asyncio.run(served.sample("lagan", 3, 5, 1.0, None, controls={"class": "w"})), by_index)
    with pytest.raises(InvalidInput, match=r"controls.class: unknown class 'top'; give one of \['qcd', 'w'\]") as info:
        asyncio.run(served.sample("lagan", 1, 0, 1.0, None, controls={"class": "top"}))
    assert info.value.field == "controls.class"
    settings = Settings(runtime="onnx", intra_op_threads=1, host="127.0.0.1", models=served.store.root)
    with TestClient(create_app(served, settings)) as client:
        body = {"n": 3, "seed": 5, "controls": {"class": "w"}}
        response = client.post("/v1/models/lagan/sample", json=body)
        assert response.status_code == 200, response.text
        assert np.array_equal(np.asarray(response.json()["samples"]), by_index[:, 0])  # v1 drops the channel
        response = client.post("/v1/models/lagan/sample", json={**body, "controls": {"class": "top"}})
        assert response.status_code == 422 and "controls.class" in response.text and "'qcd'" in response.text

    async def grpc_sample(name: str, values: tuple = ()):
        server = build_grpc_server(served, settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            value = pb.ControlValue(name=name, values=values)
            request = pb.SampleRequest(model="lagan", n=3, seed=5, controls={"class": value})
            return to_array((await pb_grpc.GenserveStub(channel).Sample(request, timeout=20)).samples, "samples")
        except grpc.aio.AioRpcError as e:
            return e
        finally:
            await channel.close()
            await server.stop(grace=None)

    assert np.array_equal(asyncio.run(grpc_sample("w")), by_index)
    refused = asyncio.run(grpc_sample("top"))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and refused.details().startswith("controls.class")
    refused = asyncio.run(grpc_sample("w", values=[0]))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "not both" in refused.details()
    refused = asyncio.run(grpc_sample("w" * 65))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 64 characters" in refused.details()


@pytest.mark.parametrize("spec, given, message", [
    ({"kind": "categorical", "classes": 10}, "x", "this control's classes have no names; give an integer in 0..9"),
    ({"kind": "uniform", "low": -1, "high": 1, "shape": [1]}, "0.5", "must be 1 finite float32 numbers"),
])
def test_a_name_where_no_class_name_belongs_is_refused_plainly(spec, given, message):
    with pytest.raises(InvalidInput, match=message) as info:
        control_values(spec, given, [np.random.default_rng(0)], "controls.c")
    assert info.value.field == "controls.c"
