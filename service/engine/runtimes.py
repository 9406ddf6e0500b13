"""Runtimes run one exported function: dict of named numpy arrays in, dict out.

onnxruntime is the default; TorchScript is the alternative and the only place
the service imports torch, which a serving install lacks unless it has the
`torchscript` extra. An ONNX file may keep its weights in a shared file
beside it (weights.onnx.data), which onnxruntime reads by itself.

A function's manifest entry may also name a fused kernel of the service
(`"kernel": "<kind>"`, service/engine/kernels, with its weights in `files.kernel`,
safetensors): the same function, tested equal to its ONNX graph, compiled as one
loop. Under the default runtime, "onnx", such a function runs on its kernel on the
CPU; "onnx-graph" runs every function on its ONNX file (and so does a CUDA device).
"""

import functools
import logging
import threading
from pathlib import Path

import numpy as np

DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "int32": np.int32,
          "uint8": np.uint8, "bool": np.bool_}


class TensorFunction:
    """One named function of a model, with its manifest signature."""

    def __init__(self, name: str, entry: dict):
        self.name = name
        self.inputs = {spec["name"]: spec for spec in entry["inputs"]}
        self.output_names = [spec["name"] for spec in entry["outputs"]]

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        missing = set(self.inputs) - set(feeds)
        if missing:
            raise KeyError(f"function {self.name} needs inputs {sorted(missing)}")
        typed = {n: np.ascontiguousarray(feeds[n], dtype=DTYPES[spec["dtype"]]) for n, spec in self.inputs.items()}
        return dict(zip(self.output_names, self.run(typed), strict=True))

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


class OnnxFunction(TensorFunction):
    def __init__(self, name: str, entry: dict, path: Path, threads: int = 0, device: int | None = None):
        super().__init__(name, entry)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: graph-optimizer warnings (a Loop's shared constants) are noise
        providers: list = ["CPUExecutionProvider"]
        if device is not None:  # onnxruntime-gpu on a CUDA device
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)

    def run(self, feeds):
        return self.session.run(self.output_names, feeds)


class MissingRuntime(RuntimeError):
    """The runtime the settings name cannot run in this install (its package is missing)."""


def import_torch():
    """torch, for the TorchScript runtime; a clear error where this install has none."""
    try:
        import torch
    except ModuleNotFoundError as e:
        raise MissingRuntime("GENSERVE_RUNTIME=torchscript needs torch, which this install lacks: pip install "
                           "'genserve[torchscript]', or serve the ONNX files (GENSERVE_RUNTIME=onnx)") from e
    return torch


@functools.cache
def load_torchscript(path: str, modified_ns: int, device: str):
    """One loaded copy of a TorchScript file (as of its modification time) per device, shared by the functions
    of a bundle."""
    torch = import_torch()
    return torch.jit.load(path, map_location=device).eval()


class TorchScriptFunction(TensorFunction):
    def __init__(self, name: str, entry: dict, path: Path, threads: int = 0, device: int | None = None):
        super().__init__(name, entry)
        torch = import_torch()
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = "cpu" if device is None else f"cuda:{device}"
        loaded = load_torchscript(str(path), path.stat().st_mtime_ns, self.device)
        bundled = getattr(loaded, name, None)  # a bundle (model.pt) holds each function as a submodule of its name
        self.module = bundled if isinstance(bundled, torch.jit.ScriptModule) else loaded

    def run(self, feeds):
        with self.torch.inference_mode():
            args = [self.torch.as_tensor(v, device=self.device) for v in feeds.values()]
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return [t.cpu().numpy() for t in out]


class KernelFunction(TensorFunction):
    """A function on the fused kernel its manifest names, over the kernel's weights (safetensors).

    The kernel compiles (or loads its machine code from numba's cache) on a thread started at load, so that
    loading returns at once; a call that comes before it is done waits for it."""

    def __init__(self, name: str, entry: dict, path: Path, threads: int = 0, device: int | None = None):
        super().__init__(name, entry)
        from safetensors.numpy import load_file

        from service.engine.kernels import kernel_class

        self.kernel = kernel_class(entry["kernel"])(load_file(str(path)), threads)
        unknown = set(self.inputs) - set(self.kernel.inputs)
        if unknown or self.output_names != list(self.kernel.outputs):
            raise ValueError(f"function {name}: kernel {entry['kernel']} takes {list(self.kernel.inputs)} and gives "
                             f"{list(self.kernel.outputs)}, not {list(self.inputs)} -> {self.output_names}")
        self.compiled = threading.Thread(target=self.kernel.warm_up, name=f"compile-{name}", daemon=True)
        self.compiled.start()

    def run(self, feeds):
        self.compiled.join()
        outputs = self.kernel.run(**feeds)
        return [outputs[n] for n in self.output_names]


RUNTIMES = {"onnx": OnnxFunction, "torchscript": TorchScriptFunction, "kernel": KernelFunction}
GRAPH_ONLY = "onnx-graph"  # the runtime setting that runs ONNX files even where a function names a kernel
log = logging.getLogger("genserve.runtimes")


def runtime_of(entry: dict, runtime: str, device: int | None) -> str:
    """The runtime a function runs on: its kernel on the CPU under "onnx" where it names one, else `runtime`."""
    if runtime == GRAPH_ONLY:
        return "onnx"
    if runtime == "onnx" and device is None and "kernel" in entry and "kernel" in entry["files"]:
        return "kernel"
    return runtime


def load_function(name: str, entry: dict, directory: Path, runtime: str, threads: int = 0,
                  device: int | None = None) -> TensorFunction:
    """One function of a model on `runtime` ("onnx", "torchscript", "onnx-graph"; see the module docstring), on
    CUDA device `device` or (None) the CPU."""
    if runtime not in RUNTIMES and runtime != GRAPH_ONLY:
        raise ValueError(f"unknown runtime {runtime!r}; known: {sorted([*RUNTIMES, GRAPH_ONLY])}")
    chosen = runtime_of(entry, runtime, device)
    if chosen not in entry["files"]:
        raise ValueError(f"function {name} has no {chosen} file")
    return RUNTIMES[chosen](name, entry, directory / entry["files"][chosen], threads, device)
