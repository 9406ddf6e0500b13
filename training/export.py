"""Family -> named tensor functions -> ONNX + TorchScript + manifest.json.

Writes models/<name>/<version>/ with one .onnx and one .pt file per function,
and a manifest validated by proto/manifest.schema.json. The batch axis (0) of
every input and output is dynamic, and a family may name more (a text's length).
"""

import datetime
import hashlib
import json
import subprocess
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import torch

from training.data import SpeechSplit, Split, TextSplit
from training.evaluate import evaluate
from training.families import family_module
from training.train import load_model

SCHEMA = Path(__file__).resolve().parent.parent / "proto" / "manifest.schema.json"
DEFAULT_BATCHING = {"max_batch_size": 32, "max_queue_delay_us": 2000, "max_queue_size": 256, "timeout_ms": 60000}
QUANTILES = [round(q, 3) for q in np.linspace(0, 1, 201)]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def tensor_spec(name: str, t: torch.Tensor, dynamic: dict[int, str]) -> dict:
    """The manifest entry of a tensor; its dynamic axes (batch, and any in `dynamic`) are -1."""
    shape = [-1 if axis == 0 or axis in dynamic else size for axis, size in enumerate(t.shape)]
    return {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": shape}


def export_function(out_dir: Path, name: str, module: torch.nn.Module, inputs: dict, outputs: list[str],
                    dynamic: dict[str, dict[int, str]] | None = None) -> dict:
    """Trace one function to <name>.pt and <name>.onnx; returns its manifest entry.

    Axis 0 of every tensor is the batch; `dynamic` names more variable axes by tensor, e.g. {"x": {1: "time"}}.
    A module with a `torchscript(example inputs)` method gives its own TorchScript form instead of a trace
    (a WaveNet step: a loop, where ONNX gets the K samples unrolled). A trace is frozen, so that a function
    keeps only the weights it uses (a VAE's decode leaves the encoder out), as its ONNX file does.
    """
    dynamic = dynamic or {}
    axes = {n: {0: "batch", **dynamic.get(n, {})} for n in [*inputs, *outputs]}
    module.eval()
    args = tuple(inputs.values())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        results = module(*args)
        results = results if isinstance(results, tuple) else (results,)
        traced = (module.torchscript(args) if hasattr(module, "torchscript")  # frozen: only the weights it uses
                  else torch.jit.freeze(torch.jit.trace(module, args, check_trace=False)))
        traced.save(str(out_dir / f"{name}.pt"))
        torch.onnx.export(
            module, args, str(out_dir / f"{name}.onnx"), dynamo=False, opset_version=17,
            input_names=list(inputs), output_names=outputs,
            dynamic_axes=axes,
        )
    return {
        "inputs": [tensor_spec(n, t, axes[n]) for n, t in inputs.items()],
        "outputs": [tensor_spec(n, t, axes[n]) for n, t in zip(outputs, results, strict=True)],
        "files": {"onnx": f"{name}.onnx", "torchscript": f"{name}.pt"},
    }


def calibration(held_out_nll: np.ndarray, split_name: str, score: str = "nll_nats") -> dict:
    """Quantiles of held-out NLL: a new input's percentile is read off them."""
    return {
        "score": score, "quantiles": QUANTILES,
        "values": np.quantile(held_out_nll, QUANTILES).tolist(),
        "threshold_quantile": 0.99, "n": len(held_out_nll), "split": split_name,
    }


def held_out_calibration(test_nll: np.ndarray, split: Split) -> dict:
    """Per input for images; per character for text and per sample for audio, whose inputs may have any length."""
    if isinstance(split, TextSplit):
        return calibration(test_nll / split.shape[0], f"{split.name}/test", score="nll_nats_per_char")
    if isinstance(split, SpeechSplit):
        return calibration(test_nll / split.shape[0], f"{split.name}/test", score="nll_nats_per_sample")
    return calibration(test_nll, f"{split.name}/test")


def data_spec(split: Split) -> dict:
    """The manifest's `data`: images carry their classes and class prior, text its vocabulary, audio its
    sample rate, encoding and voices (the classes) with their prior."""
    spec = {"shape": list(split.shape), "levels": split.levels}
    if isinstance(split, TextSplit):
        return {"kind": "text", **spec, "vocabulary": list(split.vocabulary)}
    prior = (np.bincount(split.y_train, minlength=split.num_classes) / len(split.y_train)).tolist()
    if isinstance(split, SpeechSplit):
        return {"kind": "audio", **spec, "sample_rate": split.sample_rate, "encoding": "mu-law-8bit",
                "classes": list(split.voices), "class_prior": prior}
    return {"kind": "image", **spec, "classes": [str(c) for c in range(split.num_classes)], "class_prior": prior}


def measured_report(run_dir: Path, baseline: bool, reuse_eval: bool) -> dict:
    """The run's test report: measured afresh, or with reuse_eval the run's eval.json (written by `genserve eval`
    or an earlier export), refused when it is older than the checkpoint."""
    saved, checkpoint = Path(run_dir) / "eval.json", Path(run_dir) / "model.safetensors"
    if not reuse_eval:
        return evaluate(run_dir, baseline=baseline)
    if not saved.exists() or saved.stat().st_mtime < checkpoint.stat().st_mtime:
        raise ValueError(f"{saved}: missing or older than {checkpoint}; run `genserve eval {run_dir}` first")
    return json.loads(saved.read_text())


def export(run_dir: Path, models_dir: Path, name: str | None = None, version: int = 1, baseline: bool = True,
           reuse_eval: bool = False) -> Path:
    """Export a training run into the model store as <models_dir>/<name>/<version>/.

    The test metrics are measured afresh (or read from the run's eval.json with reuse_eval), with the baseline
    beside them unless `baseline` is False (there is one for binary images only).
    """
    model, config, split = load_model(run_dir)
    family = family_module(config["family"])
    if not hasattr(family, "exported_functions"):
        raise ValueError(f"family {config['family']!r} trains but has no exporter yet")
    name = name or config["family"]
    out_dir = Path(models_dir) / name / str(version)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = measured_report(run_dir, baseline, reuse_eval)
    functions, capabilities = family.exported_functions(model, split)
    entries = {fn: export_function(out_dir, fn, *spec) for fn, spec in functions.items()}
    files = sorted(f for e in entries.values() for f in e["files"].values())
    manifest = {
        "schema_version": 1, "name": name, "version": version, "family": config["family"],
        "description": (family.__doc__ or "").strip().splitlines()[0],
        "data": data_spec(split),
        "functions": entries,
        "capabilities": capabilities,
        "batching": DEFAULT_BATCHING,
        "files": {f: sha256(out_dir / f) for f in files},
        "metrics": {k: v for k, v in report.items() if k != "test_nll_per_example"},
        "calibration": held_out_calibration(np.array(report["test_nll_per_example"]), split),
        "provenance": {
            "dataset": split.name, "split": split.describe(), "seed": config["train"]["seed"],
            "config": config, "command": config.get("command"), "git_commit": git_commit(),
            "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "torch_version": torch.__version__,
        },
    }
    jsonschema.validate(manifest, json.loads(SCHEMA.read_text()))
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir
