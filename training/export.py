"""Family -> named tensor functions -> ONNX + TorchScript + manifest.json.

Writes models/<name>/<version>/ with one .onnx file per function, whose weights
lie in one shared file (weights.onnx.data, each distinct tensor once), one
TorchScript bundle (model.pt: each function a submodule of its name, sharing the
model's parameters), and a manifest validated by proto/manifest.schema.json.
The batch axis (0) of every input and output is dynamic, and a family may name
more (a text's length). Models exported before the bundle have one frozen .pt
per function and ONNX files holding their own weights; the service reads both.
"""

import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import torch
from onnx.external_data_helper import set_external_data
from safetensors.torch import save_file

from service.store import is_version_number
from training.data import SpeechSplit, Split, TextSplit
from training.evaluate import evaluate, write_report
from training.families import family_module
from training.nn.flows import fold_masks
from training.train import load_model, run_lock

SCHEMA = Path(__file__).resolve().parent.parent / "proto" / "manifest.schema.json"
DEFAULT_BATCHING = {"max_batch_size": 32, "max_queue_delay_us": 2000, "max_queue_size": 256, "timeout_ms": 60000}
QUANTILES = [round(q, 3) for q in np.linspace(0, 1, 201)]
BUNDLE, SHARED_WEIGHTS = "model.pt", "weights.onnx.data"
WEIGHT_ALIGNMENT = 4096  # bytes: each tensor in the shared file starts on a page boundary
MAX_VERSION = 10**18 - 1  # the largest the store reads (is_version_number; test_export_guards checks they agree)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# Warnings torch gives on every export that say nothing about the model: the ONNX exporter leaves a strided
# Slice unfolded (the graph is still exact), and TorchScript and the TorchScript-based ONNX exporter are
# deprecated (the service reads both formats as written; the torch.export-based exporter is not used).
KNOWN_HARMLESS = [
    (UserWarning, r"Constant folding - Only steps=1 can be constant folded"),
    (DeprecationWarning, r"`torch\.jit\.(trace|trace_method|script)` is deprecated"),
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export"),
    (DeprecationWarning, r"The feature will be removed\. Please remove usage of this function"),
]


@contextlib.contextmanager
def quiet_export():
    """Within the export only, silence the warnings in KNOWN_HARMLESS; any other warning still shows."""
    with warnings.catch_warnings():
        for category, message in KNOWN_HARMLESS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def tensor_spec(name: str, t: torch.Tensor, dynamic: dict[int, str]) -> dict:
    """The manifest entry of a tensor; its dynamic axes (batch, and any in `dynamic`) are -1."""
    shape = [-1 if axis == 0 or axis in dynamic else size for axis, size in enumerate(t.shape)]
    return {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": shape}


def export_function(out_dir: Path, name: str, module: torch.nn.Module, inputs: dict, outputs: list[str],
                    dynamic: dict[str, dict[int, str]] | None = None, bundle: dict | None = None) -> dict:
    """Trace one function to <name>.onnx and TorchScript; returns its manifest entry.

    Axis 0 of every tensor is the batch; `dynamic` names more variable axes by tensor, e.g. {"x": {1: "time"}}.
    A module with a `torchscript(example inputs)` method gives its own TorchScript form instead of a trace
    (a WaveNet step: a loop, where ONNX gets the K samples unrolled). With a `bundle` dict the TorchScript
    module is put in it, for save_bundle; without one it is saved alone to <name>.pt, a trace frozen so that
    it keeps only the weights it uses.
    """
    dynamic = dynamic or {}
    axes = {n: {0: "batch", **dynamic.get(n, {})} for n in [*inputs, *outputs]}
    module.eval()
    args = tuple(inputs.values())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        results = module(*args)
        results = results if isinstance(results, tuple) else (results,)
        own = hasattr(module, "torchscript")
        traced = module.torchscript(args) if own else torch.jit.trace(module, args, check_trace=False)
        if bundle is not None:
            bundle[name] = traced
        else:  # a trace alone is frozen; a module's own TorchScript is saved as it gives it
            (traced if own else torch.jit.freeze(traced)).save(str(out_dir / f"{name}.pt"))
        options = {"dynamo": False, "opset_version": 17, "input_names": list(inputs), "output_names": outputs,
                   "dynamic_axes": axes}
        if hasattr(module, "onnx_export"):  # a module's own ONNX form (a WaveNet step: a Loop over unrolled chunks)
            module.onnx_export(out_dir / f"{name}.onnx", args, **options)
        else:
            torch.onnx.export(module, args, str(out_dir / f"{name}.onnx"), **options)
    entry = {
        "inputs": [tensor_spec(n, t, axes[n]) for n, t in inputs.items()],
        "outputs": [tensor_spec(n, t, axes[n]) for n, t in zip(outputs, results, strict=True)],
        "files": {"onnx": f"{name}.onnx", "torchscript": f"{name}.pt" if bundle is None else BUNDLE},
    }
    return entry | export_kernel(out_dir, name, module, entry["files"])


def export_kernel(out_dir: Path, name: str, module: torch.nn.Module, files: dict) -> dict:
    """A module with a `fused_kernel()` method that gives (kind, weights) runs on the service's kernel of that kind
    too: its weights go to <name>.kernel.safetensors, and the entry names the kernel (else nothing is added)."""
    kernel = module.fused_kernel() if hasattr(module, "fused_kernel") else None
    if kernel is None:
        return {}
    kind, weights = kernel
    save_file({n: w.contiguous() for n, w in weights.items()}, str(out_dir / f"{name}.kernel.safetensors"))
    return {"kernel": kind, "files": {**files, "kernel": f"{name}.kernel.safetensors"}}


class Bundle(torch.nn.Module):
    """Every function's TorchScript module as a submodule of its name: the model's weights are saved once."""

    def __init__(self, functions: dict[str, torch.jit.ScriptModule]):
        super().__init__()
        for name, function in functions.items():
            setattr(self, name, function)


def save_bundle(out_dir: Path, functions: dict[str, torch.jit.ScriptModule]) -> None:
    torch.jit.script(Bundle(functions)).save(str(out_dir / BUNDLE))


def graph_initializers(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """The initializers of a graph and of every subgraph (a Loop's body) in it."""
    found = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                found += graph_initializers(subgraph)
    return found


def share_onnx_weights(out_dir: Path, onnx_files: list[str], min_bytes: int = 1024) -> None:
    """Move every initializer of at least min_bytes out of the ONNX files into SHARED_WEIGHTS, each distinct
    tensor (by content) once, so functions that use the same weights do not each carry a copy."""
    offsets: dict[str, tuple[int, int]] = {}  # sha256 of the raw bytes -> (offset, length)
    with open(out_dir / SHARED_WEIGHTS, "wb") as shared:
        for filename in onnx_files:
            model = onnx.load(str(out_dir / filename))
            for tensor in graph_initializers(model.graph):
                if len(tensor.raw_data) < min_bytes:
                    continue
                key = hashlib.sha256(tensor.raw_data).hexdigest()
                if key not in offsets:
                    shared.write(b"\0" * (-shared.tell() % WEIGHT_ALIGNMENT))
                    offsets[key] = (shared.tell(), len(tensor.raw_data))
                    shared.write(tensor.raw_data)
                set_external_data(tensor, SHARED_WEIGHTS, *offsets[key])
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
            onnx.save(model, str(out_dir / filename))


def calibration(held_out_nll: np.ndarray, split_name: str, score: str = "nll_nats") -> dict:
    """Quantiles of held-out NLL: a new input's percentile is read off them. Quantile q at rank q (n + 1) of the
    sorted scores (numpy's `weibull`), as service.engine.anomaly.calibration_for: a flag at 0.99 then has a 1%
    false-positive rate in the mean (numpy's default rank: 1.2% at n = 500)."""
    return {
        "score": score, "quantiles": QUANTILES,
        "values": np.quantile(held_out_nll, QUANTILES, method="weibull").tolist(), "quantile_method": "weibull",
        "threshold_quantile": 0.99, "n": len(held_out_nll), "split": split_name,
    }


def held_out_calibration(report: dict, split: Split) -> dict | None:
    """From the test NLL: per input for images; per character for text and per sample for audio, whose inputs
    may have any length. From a critic's test scores (a GAN): their negatives. None for a model without a score.
    An importance-sampled bound's entry records the bound's k and method (service.engine.anomaly.bound_settings),
    so that the service scores anomalies at the bound these quantiles come from."""
    if "test_critic_per_example" in report:
        return calibration(-np.array(report["test_critic_per_example"]), f"{split.name}/test", score="negative_critic")
    if "test_nll_per_example" not in report:
        return None
    test_nll = np.array(report["test_nll_per_example"])
    bound = {"k": report["k"], "method": report["method"]} if "k" in report else {}
    if isinstance(split, TextSplit):
        return calibration(test_nll / split.shape[0], f"{split.name}/test", score="nll_nats_per_char")
    if isinstance(split, SpeechSplit):
        return calibration(test_nll / split.shape[0], f"{split.name}/test", score="nll_nats_per_sample") | bound
    return calibration(test_nll, f"{split.name}/test") | bound


def data_spec(split: Split) -> dict:
    """The manifest's `data`: images carry their classes and class prior, text its vocabulary, audio its
    sample rate, encoding and voices (the classes) with their prior."""
    if hasattr(split, "data_spec"):  # a split that describes itself (music: one bar per step)
        return split.data_spec()
    spec = {"shape": list(split.shape), "levels": split.levels}
    if isinstance(split, TextSplit):
        return {"kind": "text", **spec, "vocabulary": list(split.vocabulary)}
    prior = (np.bincount(split.y_train, minlength=split.num_classes) / len(split.y_train)).tolist()
    if isinstance(split, SpeechSplit):
        return {"kind": "audio", **spec, "sample_rate": split.sample_rate, "encoding": "mu-law-8bit",
                "classes": list(split.voices), "class_prior": prior}
    return {"kind": "image", **spec, "classes": [str(c) for c in range(split.num_classes)], "class_prior": prior}


def saved_baseline(saved: Path, split: Split) -> dict | None:
    """The baseline in a run's eval.json for the same data split, if any. It depends on the split alone (a
    fixed seed, no model weights), so what `genserve eval` fitted holds however old the checkpoint is."""
    try:
        report = json.loads(saved.read_text())
    except (OSError, ValueError):
        return None
    return report.get("baseline") if report.get("dataset") == split.name else None


def measured_report(run_dir: Path, baseline: bool, reuse_eval: bool, loaded: tuple) -> dict:
    """The run's test report: measured afresh on the loaded (model, config, split), or with reuse_eval the run's
    eval.json (written by `genserve eval` or an earlier export), refused when it is older than the checkpoint.
    Measured afresh, the baseline is still taken from eval.json where it holds one for the same split."""
    saved, checkpoint = Path(run_dir) / "eval.json", Path(run_dir) / "model.safetensors"
    if not reuse_eval:
        fitted = saved_baseline(saved, loaded[2]) if baseline else None
        report = evaluate(run_dir, baseline=baseline and fitted is None, loaded=loaded)
        if fitted is not None and "test_nll_nats" in report:
            report["baseline"] = fitted
            write_report(run_dir, report)
            print(f"baseline {fitted['name']} (K={fitted['components']}): {fitted['test_nll_nats']:.2f} nats, "
                  f"{fitted['test_bits_per_dim']:.4f} bits/dim (from {saved}: it depends on the data split only)")
        return report
    if not saved.exists() or saved.stat().st_mtime < checkpoint.stat().st_mtime:
        raise ValueError(f"{saved}: missing or older than {checkpoint}; run `genserve eval {run_dir}` first")
    return json.loads(saved.read_text())


def training_sessions(run_dir: Path) -> dict:
    """{"training": the sessions that trained the run's epochs} (training.train: each one's command, first and last
    epoch, intra-op threads), or nothing for a run from before they were recorded; and for a run that selected its
    epoch (train.select), "selection": the rule, every epoch's score and the selected epoch (the exported weights)."""
    try:
        state = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return ({"training": state["sessions"]} if state.get("sessions") else {}) | (
        {"selection": state["selection"]} if "selection" in state else {})


class VersionExists(FileExistsError):
    """The version to export is in the store already (a re-export needs force=True)."""


def next_free_version(model_dir: Path) -> int:
    """One more than the highest version under <models>/<name>/ that the store reads as one (1 for a new model)."""
    versions = [int(p.name) for p in Path(model_dir).glob("*") if p.is_dir() and is_version_number(p.name)]
    return max(versions, default=0) + 1


def check_free(out_dir: Path, force: bool) -> None:
    """Refuse to replace an existing version unless `force`, naming the next free version number; refuse always a
    version that is a file, not a directory."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file, not a model version's directory: give another --version or --models")
    if out_dir.exists() and not force:
        raise VersionExists(f"{out_dir} exists; export as --version {next_free_version(out_dir.parent)} (the next "
                            f"free version), or give --force to replace it")


def check_name_and_version(name: str, version: int) -> None:
    """Refuse, before anything is written, a name outside the store's rule (the manifest schema's pattern: no
    "..", no "/") or a version below 1 or above MAX_VERSION (one the store would not read)."""
    properties = json.loads(SCHEMA.read_text())["properties"]
    pattern = properties["name"]["pattern"]
    if not re.fullmatch(pattern, name):
        raise ValueError(f"--name {name!r} is not a model name: it must match {pattern} (lowercase letters, "
                         "digits and -)")
    if version < properties["version"]["minimum"]:
        raise ValueError(f"--version {version} is not a version: it must be {properties['version']['minimum']} "
                         "or more")
    if not is_version_number(str(version)):
        raise ValueError(f"--version {version} is not a version the store reads: it must be {MAX_VERSION} "
                         "(18 digits) or less")


class FamilyMismatch(ValueError):
    """The model name holds a model of another family (a re-export under it needs force=True)."""


def stored_families(model_dir: Path) -> set[str]:
    """The families of the versions stored under <models>/<name>/ (unreadable manifests left out)."""
    families = set()
    for manifest_path in Path(model_dir).glob("*/manifest.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            families.add(json.loads(manifest_path.read_text()).get("family"))
    return families - {None}


def check_family(model_dir: Path, family: str, force: bool) -> None:
    """Refuse, unless `force`, to export a run of one family under a name that holds a model of another; refuse
    always a name that is a file, not a directory."""
    if model_dir.exists() and not model_dir.is_dir():
        raise ValueError(f"{model_dir} is a file, not a model's directory: give another --name or --models")
    others = sorted(stored_families(model_dir) - {family})
    if others and not force:
        raise FamilyMismatch(f"{model_dir} holds a {' and a '.join(map(repr, others))} model, but this run is a "
                             f"{family!r}: give another --name, or --force to export it under this name anyway")


class DataMismatch(ValueError):
    """The model name holds versions trained on other data (a re-export under it needs force=True)."""


def stored_data(model_dir: Path, skip: Path) -> dict[str, dict]:
    """The manifest `data` of each version stored under <models>/<name>/ but `skip` (unreadable ones left out)."""
    found = {}
    for manifest_path in sorted(Path(model_dir).glob("*/manifest.json")):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            data = json.loads(manifest_path.read_text()).get("data")
            if manifest_path.parent != skip and isinstance(data, dict):
                found[manifest_path.parent.name] = data
    return found


def data_differences(a: dict, b: dict) -> list[str]:
    """The fields of two manifests' `data` that both have and that differ, but the class prior (a statistic of
    the training split, not what the model's inputs and outputs mean)."""
    return sorted(k for k in a.keys() & b.keys() - {"class_prior"} if a[k] != b[k])


def check_data(out_dir: Path, data: dict, force: bool) -> None:
    """Refuse, unless `force`, to add a version whose data (kind, shape, levels, classes, vocabulary...) differs
    from that of the model's other versions: a model name stands for one kind of input."""
    for version, stored in stored_data(out_dir.parent, out_dir).items():
        differ = data_differences(data, stored)
        if differ and not force:
            shown = ", ".join(f"{k} {stored[k]!r} there, {data[k]!r} here" for k in differ if k != "vocabulary")
            raise DataMismatch(f"{out_dir.parent / version} holds a model of other data than this run "
                               f"({shown or 'another vocabulary'}): give this run another --name, or --force "
                               "to add it under this name anyway")


def export(run_dir: Path, models_dir: Path, name: str | None = None, version: int = 1, baseline: bool = True,
           reuse_eval: bool = False, force: bool = False) -> Path:
    """Export a training run into the model store as <models_dir>/<name>/<version>/.

    A name outside the store's rule or a version the store would not read (below 1, over 18 digits) is refused
    (ValueError) before anything is written. An existing version, or a name that holds a model of another family
    or of other data (DataMismatch: kind, shape, levels, classes...), is refused (VersionExists, FamilyMismatch,
    before anything is measured) unless `force`, which replaces the version whole. The version is written beside
    the store's versions and renamed into place (`staged`): an export that fails or is stopped leaves the store
    as it was. The test metrics are measured
    afresh (or read from the run's eval.json with reuse_eval), with the baseline beside them unless `baseline` is
    False (there is one for binary images only).
    """
    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run: it has no config.json")
    run_family = json.loads(config_path.read_text())["family"]
    name = name or run_family
    check_name_and_version(name, version)
    out_dir = Path(models_dir) / name / str(version)
    check_free(out_dir, force)
    check_family(out_dir.parent, run_family, force)
    with run_lock(Path(run_dir), shared=True):  # to the end: eval.json and state.json are the weights' too
        model, config, split = load_model(run_dir)
        family = family_module(config["family"])
        if not hasattr(family, "exported_functions"):
            raise ValueError(f"family {config['family']!r} trains but has no exporter yet")
        data = family.data_spec(split) if hasattr(family, "data_spec") else data_spec(split)
        check_data(out_dir, data, force)
        report = measured_report(run_dir, baseline, reuse_eval, (model, config, split))  # one load: RBM's AIS once
        check_free(out_dir, force)  # measuring takes a while: another export may have written it meanwhile
        with staged(out_dir) as stage:
            write_version(stage, Path(run_dir), (model, config, split), report, name, version, data)
    return out_dir


def write_version(out_dir: Path, run_dir: Path, loaded: tuple, report: dict, name: str, version: int,
                  data: dict) -> None:
    """Write the loaded run's (model, config, split) as version `version` of model `name` into the empty
    directory out_dir: functions, bundle, shared weights, and the manifest last."""
    model, config, split = loaded
    family = family_module(config["family"])
    fold_masks(model)
    functions, capabilities = family.exported_functions(model, split)
    bundle: dict[str, torch.jit.ScriptModule] = {}
    with quiet_export():
        entries = {fn: export_function(out_dir, fn, *spec, bundle=bundle) for fn, spec in functions.items()}
        save_bundle(out_dir, bundle)
    share_onnx_weights(out_dir, [entry["files"]["onnx"] for entry in entries.values()])
    files = sorted({f for e in entries.values() for f in e["files"].values()} | {SHARED_WEIGHTS})
    manifest = {
        "schema_version": 1, "name": name, "version": version, "family": config["family"],
        "description": first_paragraph(family.__doc__), "data": data,
        "functions": entries,
        "capabilities": capabilities,
        "batching": DEFAULT_BATCHING,
        "files": {f: sha256(out_dir / f) for f in files},
        "metrics": {k: v for k, v in report.items() if not k.endswith("_per_example")},
        "calibration": held_out_calibration(report, split),
        "provenance": {
            "dataset": split.name, "split": split.describe(), "seed": config["train"]["seed"],
            "config": config, "command": config.get("command"), "git_commit": git_commit(),
            "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "torch_version": torch.__version__, **training_sessions(run_dir),
        },
    }
    if manifest["calibration"] is None:  # nothing to calibrate: the model does not score
        del manifest["calibration"]
    jsonschema.validate(manifest, json.loads(SCHEMA.read_text()))
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def first_paragraph(doc: str | None) -> str:
    """A family docstring's first paragraph, its lines joined: the manifest's description."""
    return " ".join(line.strip() for line in (doc or "").strip().split("\n\n")[0].splitlines())


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM exits by SystemExit (143, as the signal would) so that cleanup runs; in the
    main thread only, where Python runs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        print("export: stopped by SIGTERM; the store is as it was", file=sys.stderr)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def staged(out_dir: Path):
    """A directory to write a version into, renamed to out_dir when the block ends without error; an existing
    out_dir (a forced re-export) is moved aside first and removed after, so that no file of an old layout stays.

    It lies in a scratch directory beside the version, <store>/<name>/.export-<version>-<random>/new/: on the
    store's filesystem, so the renames are atomic, and one level deeper than the store scans
    (<store>/<name>/<version>/manifest.json), so that a half-written version is never read. On an error, Ctrl-C
    or SIGTERM, the scratch directory is removed and an old version stays as it was.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".export-{out_dir.name}-", dir=out_dir.parent))
    new, old = scratch / "new", scratch / "old"
    try:
        with sigterm_raises():
            new.mkdir()
            yield new
            if out_dir.exists():
                os.rename(out_dir, old)
            os.rename(new, out_dir)
    finally:
        if old.exists() and not out_dir.exists():  # stopped between the two renames: put the old version back
            os.rename(old, out_dir)
        shutil.rmtree(scratch, ignore_errors=True)
