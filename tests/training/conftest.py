"""Fixtures of the training tests."""

import onnxruntime as ort
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Many tiny sequential ops: one intra-op thread is much faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_three_ways(directory, name: str, module: torch.nn.Module, inputs: dict) -> tuple[list, list, list]:
    """An exported function's outputs (numpy lists) from eager `module`, <directory>/<name>.onnx and .pt."""
    def listed(out):
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

    with torch.no_grad():
        eager = listed(module(*inputs.values()))
        scripted = listed(torch.jit.load(str(directory / f"{name}.pt"))(*inputs.values()))
    session = ort.InferenceSession(str(directory / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    return eager, session.run(None, {k: v.numpy() for k, v in inputs.items()}), scripted


@pytest.fixture
def three_ways():
    """run_three_ways: export parity checks call it after training.export.export_function."""
    return run_three_ways
