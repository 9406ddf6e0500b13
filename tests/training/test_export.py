"""The store layout of training.export: ONNX weights shared in one file, TorchScript functions in one bundle."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from service.engine.runtimes import load_function
from training.export import BUNDLE, SHARED_WEIGHTS, export_function, next_free_version, save_bundle, share_onnx_weights


class Twice(nn.Module):
    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return 2 * self.layer(x)


class Residual(nn.Module):
    def __init__(self, layer: nn.Linear, other: nn.Linear):
        super().__init__()
        self.layer, self.other = layer, other

    def forward(self, x, y):
        return x + self.other(self.layer(y))


def exported(tmp_path):
    """Two functions that share one 64x64 layer, the second with a layer of its own, exported as export() does."""
    torch.manual_seed(0)
    shared, own = nn.Linear(64, 64), nn.Linear(64, 64)
    x = torch.randn(3, 64)
    functions = {"twice": (Twice(shared), {"x": x}, ["y"]),
                 "residual": (Residual(shared, own), {"x": x, "y": x}, ["z"])}
    bundle: dict = {}
    entries = {name: export_function(tmp_path, name, *spec, bundle=bundle) for name, spec in functions.items()}
    save_bundle(tmp_path, bundle)
    share_onnx_weights(tmp_path, [entry["files"]["onnx"] for entry in entries.values()])
    return functions, entries, (shared, own)


def test_shared_weights_hold_each_distinct_tensor_once_and_onnx_files_none(tmp_path):
    functions, entries, (shared, own) = exported(tmp_path)
    weights = (tmp_path / SHARED_WEIGHTS).read_bytes()
    matrix_bytes = 64 * 64 * 4
    for layer in (shared, own):  # each weight matrix is in the file once (as it is, or transposed for a Gemm)
        found = [weights.count(layer.weight.detach().numpy().tobytes()),
                 weights.count(layer.weight.detach().numpy().T.copy().tobytes())]
        assert sum(found) == 1
    assert len(weights) == 2 * matrix_bytes  # two matrices (16 KiB each, so page-aligned without padding), not three
    for entry in entries.values():
        model = onnx.load(str(tmp_path / entry["files"]["onnx"]), load_external_data=False)
        assert all(len(t.raw_data) < 1024 for t in model.graph.initializer)
        assert (tmp_path / entry["files"]["onnx"]).stat().st_size < 4096


def test_onnx_and_bundle_give_the_eager_outputs_through_the_service_runtimes(tmp_path):
    functions, entries, _ = exported(tmp_path)
    assert {entry["files"]["torchscript"] for entry in entries.values()} == {BUNDLE}
    g = torch.Generator().manual_seed(1)
    feeds = {"x": torch.randn(5, 64, generator=g), "y": torch.randn(5, 64, generator=g)}  # another batch size
    for name, (module, example, outputs) in functions.items():
        inputs = {n: feeds[n] for n in example}
        with torch.no_grad():
            eager = module(*inputs.values()).numpy()
        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        assert np.allclose(session.run(None, {n: v.numpy() for n, v in inputs.items()})[0], eager, atol=1e-5)
        entry = json.loads(json.dumps(entries[name]))
        for runtime in ("onnx", "torchscript"):
            function = load_function(name, entry, tmp_path, runtime, threads=1)
            got = function(**{n: v.numpy() for n, v in inputs.items()})[outputs[0]]
            assert np.allclose(got, eager, atol=1e-5), (name, runtime)


def test_next_free_version_counts_numbered_directories_only(tmp_path):
    for name in ("1", "3", "²", "notes"):  # "²".isdigit() is True, but int("²") fails
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert next_free_version(tmp_path) == 4
    assert next_free_version(tmp_path / "new-model") == 1
