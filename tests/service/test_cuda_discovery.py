"""Device discovery and provider choice for the CUDA image (Dockerfile.cuda, onnxruntime-gpu), with onnxruntime's
provider list, nvidia-smi and InferenceSession faked: this machine has no GPU and no onnxruntime-gpu."""

import subprocess
from pathlib import Path

import onnxruntime as ort
import pytest

from service.engine import workers
from service.engine.runtimes import OnnxFunction

REPO = Path(__file__).resolve().parents[2]
GPU_BUILD = ["CUDAExecutionProvider", "CPUExecutionProvider"]  # what onnxruntime-gpu lists


class RecordingSession:
    """Stands in for ort.InferenceSession: records the providers it was asked for."""

    made: list[list] = []

    def __init__(self, path, options, providers):
        self.made.append(providers)


@pytest.fixture
def providers(monkeypatch):
    def use(listed: list[str]) -> None:
        monkeypatch.setattr(ort, "get_available_providers", lambda: listed)

    return use


def test_a_cpu_build_of_onnxruntime_has_no_cuda_device(providers, monkeypatch):
    providers(["CPUExecutionProvider"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert workers.visible_cuda_devices("onnx") == []


@pytest.mark.parametrize("visible, devices", [("0", [0]), ("2,3", [0, 1]), ("-1", []), ("", [])])
def test_cuda_visible_devices_decides_how_many(providers, monkeypatch, visible, devices):
    providers(GPU_BUILD)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert workers.visible_cuda_devices("onnx") == devices  # CUDA renumbers the visible ones from 0


def test_nvidia_smi_counts_the_gpus(providers, monkeypatch):
    providers(GPU_BUILD)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(workers.shutil, "which", lambda name: f"/usr/bin/{name}")
    listing = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-a)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-b)\n"
    monkeypatch.setattr(workers.subprocess, "run",
                        lambda command, **kw: subprocess.CompletedProcess(command, 0, stdout=listing))
    assert workers.visible_cuda_devices("onnx") == [0, 1]


def test_one_worker_per_gpu(providers, monkeypatch):
    providers(GPU_BUILD)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    pool = workers.WorkerPool({}, "onnx")
    try:
        assert [w.label for w in pool.workers] == ["cuda:0", "cuda:1"]
    finally:
        Path(pool.sockets_dir).rmdir()


@pytest.mark.parametrize("model", ["gan", "wavenet"])  # wavenet's sample_step names a fused CPU kernel
def test_every_function_runs_its_onnx_file_on_cuda_first(monkeypatch, model):
    monkeypatch.setattr(ort, "InferenceSession", RecordingSession)
    RecordingSession.made = []
    functions = workers.Functions({model: next((REPO / "models" / model).iterdir())}, "onnx", 0, device=1)
    named_kernels = [key for key, (spec, _) in functions.specs.items() if "kernel" in spec.get("files", {})]
    assert bool(named_kernels) == (model == "wavenet")  # on the CPU these would run on their kernel
    functions.preload()
    assert functions.specs and all(isinstance(f, OnnxFunction) for f in functions.loaded.values())
    assert RecordingSession.made == [[("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]] * len(
        functions.specs)
