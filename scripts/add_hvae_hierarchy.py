"""Add the hierarchical bounds' function (training/families/hvae.py: log_weights_above, Havtorn et al. 2021) to the
shipped hvae without retraining or re-exporting the rest: the model is rebuilt from the weights of the store's
TorchScript bundle, since the training run is not kept.

Only what is new is written: log_weight_above.onnx (its weights point into weights.onnx.data, where every tensor it
uses already lies), the bundle model.pt with one more submodule (the others are the loaded ones, unchanged), and the
manifest's new function, its `hierarchy` entry in the score capability and the changed files' sha256. Before
writing, every existing function of the new bundle is checked bit-identical to the old one, and the new function's
ONNX and TorchScript forms against eager.

    .venv/bin/python scripts/add_hvae_hierarchy.py [--store models]

A one-off migration, already applied to the shipped store (issue 17, commit df4a809); a fresh `genserve train hvae`
+ `genserve export` writes the function by itself. Its ONNX-writing steps repeat a few lines of training/export.py
on purpose: it patches a store in place rather than exporting a run.
"""

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.external_data_helper import set_external_data

from training.export import BUNDLE, SCHEMA, SHARED_WEIGHTS, export_function, graph_initializers, save_bundle, sha256
from training.families import hvae

NEW = "log_weight_above"


def rebuilt_model(bundle: torch.jit.ScriptModule, config: dict) -> hvae.HVAE:
    """The HVAE whose parameters are the bundle's own tensors (shared, so that the bundle saves them once)."""
    model = hvae.HVAE(hvae.HVAEConfig(**config))
    prefix = "log_weight.model."
    state = {k[len(prefix):]: v for k, v in bundle.state_dict().items() if k.startswith(prefix)}
    model.load_state_dict(state, assign=True)
    return model.eval()


def shared_offsets(out_dir: Path) -> dict[str, tuple[int, int]]:
    """sha256 of each tensor already in weights.onnx.data -> (offset, length)."""
    data = (out_dir / SHARED_WEIGHTS).read_bytes()
    offsets = {}
    for path in out_dir.glob("*.onnx"):
        for tensor in graph_initializers(onnx.load(str(path), load_external_data=False).graph):
            info = {e.key: e.value for e in tensor.external_data}
            if tensor.data_location == onnx.TensorProto.EXTERNAL and info.get("location") == SHARED_WEIGHTS:
                offset, length = int(info["offset"]), int(info["length"])
                offsets[hashlib.sha256(data[offset:offset + length]).hexdigest()] = (offset, length)
    return offsets


def point_into_shared(out_dir: Path, filename: str, min_bytes: int = 1024) -> None:
    """The new ONNX file's large initializers become references to the same bytes in weights.onnx.data; a tensor
    that is not there yet is refused rather than appended, so that the shared file stays as it is."""
    offsets = shared_offsets(out_dir)
    model = onnx.load(str(out_dir / filename))
    for tensor in graph_initializers(model.graph):
        if len(tensor.raw_data) < min_bytes:
            continue
        key = hashlib.sha256(tensor.raw_data).hexdigest()
        if key not in offsets:
            raise SystemExit(f"{filename}: initializer {tensor.name!r} is not in {SHARED_WEIGHTS}")
        set_external_data(tensor, SHARED_WEIGHTS, *offsets[key])
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
    onnx.save(model, str(out_dir / filename))


def check_parity(old: torch.jit.ScriptModule, new_dir: Path, model: hvae.HVAE, manifest: dict) -> None:
    """Old functions bit-identical in the new bundle; the new one's ONNX and TorchScript equal to eager."""
    g, b, d = torch.Generator().manual_seed(0), 5, model.config.z1 + model.config.z2
    inputs = {"x": torch.randint(0, 2, (b, 1, 28, 28), generator=g), "z": torch.randn(b, d, generator=g),
              "eps": torch.randn(b, d, generator=g), "noise": torch.rand(b, 1, 28, 28, generator=g),
              "temperature": torch.full((b,), 0.8), "observed": torch.randint(0, 2, (b, 1, 28, 28), generator=g),
              "mask": torch.randint(0, 2, (b, 1, 28, 28), generator=g)}
    new = torch.jit.load(str(new_dir / BUNDLE))
    with torch.no_grad():
        for name, entry in manifest["functions"].items():
            args = [inputs[i["name"]] for i in entry["inputs"]]
            before, after = getattr(old, name)(*args), getattr(new, name)(*args)
            pairs = zip(before, after, strict=True) if isinstance(before, tuple) else [(before, after)]
            assert all(torch.equal(a, c) for a, c in pairs), name
        args = [inputs["x"], inputs["eps"]]
        eager = hvae.log_weights_above(model, *args)
        assert torch.equal(eager[:, 0], old.log_weight(*args)), "column 0 is not the served log-weight"
        assert torch.allclose(getattr(new, NEW)(*args), eager, atol=1e-4)
    session = ort.InferenceSession(str(new_dir / f"{NEW}.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"x": inputs["x"].numpy(), "eps": inputs["eps"].numpy()})[0]
    assert np.allclose(onnx_out, eager.numpy(), atol=1e-3), np.abs(onnx_out - eager.numpy()).max()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("models"))
    out_dir = parser.parse_args().store / "hvae" / "1"
    manifest = json.loads((out_dir / "manifest.json").read_text())
    if NEW in manifest["functions"]:
        raise SystemExit(f"{out_dir}: {NEW} is there already")
    old = torch.jit.load(str(out_dir / BUNDLE))
    model = rebuilt_model(old, manifest["provenance"]["config"]["model"])
    functions, capabilities = hvae.exported_functions(model, None)
    with tempfile.TemporaryDirectory() as tmp:  # everything is checked before the store is touched
        tmp_dir = Path(tmp)
        for path in out_dir.iterdir():
            (tmp_dir / path.name).write_bytes(path.read_bytes())
        traced: dict = {}
        entry = export_function(tmp_dir, NEW, *functions[NEW], bundle=traced)
        point_into_shared(tmp_dir, f"{NEW}.onnx")
        save_bundle(tmp_dir, {**{name: getattr(old, name) for name in manifest["functions"]}, **traced})
        check_parity(old, tmp_dir, model, manifest)
        for name in (f"{NEW}.onnx", BUNDLE):
            (out_dir / name).write_bytes((tmp_dir / name).read_bytes())
    manifest = json.loads((out_dir / "manifest.json").read_text())  # re-read: the benchmark may write it too
    manifest["functions"][NEW] = entry
    manifest["capabilities"]["score"]["hierarchy"] = capabilities["score"]["hierarchy"]
    for name in (f"{NEW}.onnx", BUNDLE, SHARED_WEIGHTS):
        manifest["files"][name] = sha256(out_dir / name)
    jsonschema.validate(manifest, json.loads(SCHEMA.read_text()))
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"{out_dir}: added {NEW}; model.pt {(out_dir / BUNDLE).stat().st_size} bytes")


if __name__ == "__main__":
    main()
