"""The fused kernel `dilated_gated_stack` is the WaveNet step it replaces: the same codes under the same noise as
the eager step and the exported ONNX step (tiny, small and shipped models), the logits within float tolerance of
the model's own, the queue carried across calls of any length; rows independent of the threads that run them;
the runtime a manifest names; numba's cache where the package folder is read-only."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from service.engine.kernels import dilated_stack, kernel_class
from service.engine.runtimes import KernelFunction, OnnxFunction, load_function, runtime_of
from training.families.wavenet import START, Step, WaveNet, WaveNetConfig, initial_state, kernel_weights, sample_fast

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "wavenet" / "1"


def small_model(chunk=5, seed=0) -> WaveNet:
    """float32, dilations 1, 2, 4, 8 twice (receptive field 31), 3 voices, sharp distributions."""
    torch.manual_seed(seed)
    config = WaveNetConfig(num_classes=3, residual=8, skip=16, layers=4, stacks=2, chunk=chunk)
    model = WaveNet(config).eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(4.0)
    return model


def kernel_of(model: WaveNet, threads: int = 1) -> dilated_stack.Kernel:
    return dilated_stack.Kernel({n: w.numpy() for n, w in kernel_weights(model).items()}, threads)


def run_calls(step, b, k_len, calls, noise, temperature, label, observed=None, mask=None, queue_shape=None):
    """`calls` calls of a step function (kernel.step or an ONNX/eager wrapper) from the zero state, state fed back."""
    observed = np.zeros(noise.shape, np.int64) if observed is None else observed
    mask = np.zeros(noise.shape, np.int64) if mask is None else mask
    x, queue, chunks = np.full((b, k_len), START, np.int64), np.zeros([b, *queue_shape], np.float32), []
    for i in range(calls):
        part = slice(i * k_len, (i + 1) * k_len)
        x, queue = step(x, queue, noise[:, part], temperature, label, observed[:, part], mask[:, part])
        chunks.append(x)
    return np.concatenate(chunks, axis=1), queue


@pytest.mark.parametrize("k_len", [5, 20])  # calls shorter and longer than the widest dilation (8)
def test_kernel_codes_equal_the_eager_steps_under_the_same_noise(k_len):
    model, b, calls = small_model(chunk=k_len), 4, 60 // k_len
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(b, k_len * calls, generator=g)
    temperature, label = torch.tensor([1.0, 0.6, 1.4, 1.0]), torch.tensor([0, 1, 2, 1])
    observed = torch.randint(0, 256, (b, k_len * calls), generator=g)
    mask = torch.zeros(b, k_len * calls, dtype=torch.long)
    mask[3, :7] = 1  # a prompt
    mask[1, 11::3] = 1  # scattered observed values (completion)
    expected = sample_fast(model, label, noise, temperature, observed, mask).numpy()
    kernel = kernel_of(model)
    got, queue = run_calls(kernel.step, b, k_len, calls, noise.numpy(), temperature.numpy(), label.numpy(),
                           observed.numpy(), mask.numpy(), kernel.queue_shape)
    assert np.array_equal(got, expected)
    assert (got[3, :7] == observed[3, :7].numpy()).all() and (got[1, 11::3] == observed[1, 11::3].numpy()).all()
    with torch.no_grad():  # the last call's queue: the eager step's, from the queue before it
        step = Step(model)
        queue_in = run_calls(kernel.step, b, k_len, calls - 1, noise.numpy(), temperature.numpy(), label.numpy(),
                             observed.numpy(), mask.numpy(), kernel.queue_shape)[1]
        last = slice((calls - 1) * k_len, calls * k_len)
        eager_queue = step(torch.from_numpy(got[:, last.start - k_len: last.start]), torch.from_numpy(queue_in),
                           noise[:, last], temperature, label, observed[:, last], mask[:, last])[1]
    np.testing.assert_allclose(queue, eager_queue.numpy(), rtol=1e-4, atol=1e-5)


def test_kernel_logits_are_the_models_within_float_tolerance():
    """The logits behind each drawn code are the full model's params on the generated prefix, at any temperature."""
    model, b, k_len = small_model(chunk=10), 3, 10
    kernel = kernel_of(model)
    noise = np.random.default_rng(2).random((b, 30), dtype=np.float32)
    label, temperature = np.array([2, 0, 1]), np.array([1.0, 0.5, 2.0], np.float32)
    x, queue, logits = np.full((b, k_len), START, np.int64), np.zeros([b, *kernel.queue_shape], np.float32), []
    codes = []
    for i in range(3):
        x, queue, lg = kernel.step(x, queue, noise[:, i * k_len: (i + 1) * k_len], temperature, label, logits=True)
        codes.append(x)
        logits.append(lg)
    with torch.no_grad():
        params = model.params(torch.from_numpy(np.concatenate(codes, axis=1)), torch.from_numpy(label)).numpy()
    np.testing.assert_allclose(np.concatenate(logits, axis=1), params, rtol=1e-4, atol=1e-4)


def test_rows_do_not_depend_on_the_threads_or_the_batch():
    model = small_model(chunk=16)
    rng = np.random.default_rng(3)
    b, noise = 5, rng.random((5, 48), dtype=np.float32)
    label, temperature = rng.integers(0, 3, b), np.ones(b, np.float32)
    one = kernel_of(model, threads=1)
    args = (noise, temperature, label)
    alone = run_calls(one.step, b, 16, 3, *args, queue_shape=one.queue_shape)
    threaded = run_calls(kernel_of(model, threads=3).step, b, 16, 3, *args, queue_shape=one.queue_shape)
    row = run_calls(one.step, 1, 16, 3, noise[2:3], temperature[2:3], label[2:3], queue_shape=one.queue_shape)
    assert np.array_equal(alone[0], threaded[0]) and np.array_equal(alone[1], threaded[1])
    assert np.array_equal(alone[0][2:3], row[0])


def onnx_step(session):
    names = ["x_prev", "queue", "noise", "temperature", "label", "observed", "mask"]
    return lambda *args: tuple(session.run(None, dict(zip(names, args, strict=True))))


def test_kernel_equals_an_exported_onnx_step(tmp_path):
    """Export a small WaveNet as the exporter does: its entry names the kernel and its weights; the kernel's codes
    equal the ONNX step's over 240 samples (6 calls of 40)."""
    import onnxruntime as ort

    from training.export import export_function

    model, b = small_model(chunk=40), 3
    step, state = Step(model), initial_state(Step(model), b)
    chunk = torch.full((b, 40), START, dtype=torch.long)
    inputs = {"x_prev": chunk, **state, "noise": torch.rand(b, 40), "temperature": torch.ones(b),
              "label": torch.zeros(b, dtype=torch.long), "observed": chunk, "mask": torch.zeros_like(chunk)}
    entry = export_function(tmp_path, "sample_step", step, inputs, ["x", "next_queue"])
    assert entry["kernel"] == "dilated_gated_stack" and entry["files"]["kernel"] == "sample_step.kernel.safetensors"
    kernel = KernelFunction("sample_step", entry, tmp_path / entry["files"]["kernel"], threads=1)
    session = ort.InferenceSession(str(tmp_path / "sample_step.onnx"), providers=["CPUExecutionProvider"])
    noise = np.random.default_rng(4).random((b, 240), dtype=np.float32)
    label, temperature = np.array([0, 1, 2]), np.array([1.0, 0.8, 1.2], np.float32)

    def through_runtime(*args):
        out = kernel(**dict(zip(["x_prev", "queue", "noise", "temperature", "label", "observed", "mask"], args,
                                strict=True)))
        return out["x"], out["next_queue"]

    shape = entry["inputs"][1]["shape"][1:]
    expected = run_calls(onnx_step(session), b, 40, 6, noise, temperature, label, queue_shape=shape)
    got = run_calls(through_runtime, b, 40, 6, noise, temperature, label, queue_shape=shape)
    assert np.array_equal(got[0], expected[0])
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-4, atol=1e-5)


def test_a_logistic_mixture_step_names_no_kernel():
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(num_classes=2, residual=4, skip=4, layers=2, chunk=2, output="logistic_mixture"))
    assert Step(model).fused_kernel() is None


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped wavenet")
def test_shipped_kernel_equals_the_shipped_onnx_step():
    """models/wavenet: 400 samples of 3 rows (voices, temperatures) through its kernel and its ONNX step."""
    entry = json.loads((SHIPPED / "manifest.json").read_text())["functions"]["sample_step"]
    kernel = load_function("sample_step", entry, SHIPPED, "onnx", threads=1)
    onnx = load_function("sample_step", entry, SHIPPED, "onnx-graph", threads=1)
    assert isinstance(kernel, KernelFunction) and isinstance(onnx, OnnxFunction)
    b, k_len = 3, entry["inputs"][0]["shape"][1]
    feeds = {"x_prev": np.full((b, k_len), START, np.int64), "queue": np.zeros([b, *entry["inputs"][1]["shape"][1:]],
                                                                               np.float32),
             "noise": np.random.default_rng(5).random((b, k_len), dtype=np.float32),
             "temperature": np.array([1.0, 0.7, 1.3], np.float32), "label": np.array([0, 2, 3]),
             "observed": np.zeros((b, k_len), np.int64), "mask": np.zeros((b, k_len), np.int64)}
    got, expected = kernel(**feeds), onnx(**feeds)
    assert np.array_equal(got["x"], expected["x"])
    np.testing.assert_allclose(got["next_queue"], expected["next_queue"], rtol=1e-4, atol=1e-4)


def test_tiny_store_wavenet_samples_the_same_on_its_kernel_and_its_graph(tiny_audio_store):
    """The same seed through the engine on the default runtime (the kernel) and on "onnx-graph"."""
    import asyncio

    from service.engine.engine import Engine
    from service.settings import Settings
    from service.store import ModelStore

    store = ModelStore(tiny_audio_store)
    outputs = {}
    for runtime in ("onnx", "onnx-graph"):
        engine = Engine(store, Settings(runtime=runtime, intra_op_threads=1, models=tiny_audio_store))
        kind = type(engine.runner.functions["wavenet", "sample_step"]).__name__
        outputs[kind] = asyncio.run(engine.sample("wavenet", 3, 11, 1.0, None, length=400))
    assert set(outputs) == {"KernelFunction", "OnnxFunction"}
    assert np.array_equal(outputs["KernelFunction"], outputs["OnnxFunction"])


def test_the_manifest_chooses_the_kernel_on_the_cpu_under_the_default_runtime():
    entry = {"kernel": "dilated_gated_stack", "files": {"onnx": "s.onnx", "kernel": "s.kernel.safetensors"}}
    assert runtime_of(entry, "onnx", None) == "kernel"
    assert runtime_of(entry, "onnx", 0) == "onnx"  # a CUDA device runs the graph
    assert runtime_of(entry, "onnx-graph", None) == "onnx"
    assert runtime_of(entry, "torchscript", None) == "torchscript"
    assert runtime_of({"files": {"onnx": "s.onnx"}}, "onnx", None) == "onnx"
    with pytest.raises(ValueError, match="unknown kernel"):
        kernel_class("pixel_stack")
    with pytest.raises(ValueError, match="unknown runtime"):
        load_function("f", entry, Path("."), "tensorrt")


def test_a_kernel_refuses_a_function_it_does_not_compute(tmp_path):
    from safetensors.numpy import save_file

    save_file({n: w.numpy() for n, w in kernel_weights(small_model()).items()}, str(tmp_path / "k.safetensors"))
    tensor = {"name": "x_prev", "dtype": "int64", "shape": [-1, 5]}
    entry = {"kernel": "dilated_gated_stack", "inputs": [tensor, {**tensor, "name": "top_k"}],
             "outputs": [{**tensor, "name": "x"}], "files": {"kernel": "k.safetensors"}}
    with pytest.raises(ValueError, match="kernel dilated_gated_stack takes"):
        KernelFunction("sample_step", entry, tmp_path / "k.safetensors")


def test_numba_caches_beside_the_module_unless_its_folder_is_read_only(tmp_path):
    package, cache = tmp_path / "package", tmp_path / "cache"
    package.mkdir()
    own = f"genserve-numba-{os.getuid()}"
    assert dilated_stack.numba_cache_dir(package, {}) is None  # writable: __pycache__ beside the module
    read_only = lambda path: path != package  # noqa: E731
    assert dilated_stack.numba_cache_dir(package, {"XDG_CACHE_HOME": str(cache)}, read_only) == str(cache / own)
    assert dilated_stack.numba_cache_dir(package, {"NUMBA_CACHE_DIR": "/elsewhere"}, read_only) is None
    nothing = lambda path: False  # noqa: E731 - no writable home either: the temporary folder
    import tempfile

    assert dilated_stack.numba_cache_dir(package, {}, nothing) == str(Path(tempfile.gettempdir()) / own)
