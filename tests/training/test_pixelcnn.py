"""The gated PixelCNN: no blind spot, training and resuming, export parity (the shared maths: test_raster.py)."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_raster import params_and_input

from training.families.pixelcnn import (
    PixelCNN,
    PixelCNNConfig,
    RowStep,
    initial_state,
)

OUTPUTS = ["categorical", "logistic_mixture"]


def small_model(height=6, width=7, levels=3, layers=3, dtype=torch.float64, output="categorical") -> PixelCNN:
    torch.manual_seed(0)
    config = PixelCNNConfig(height=height, width=width, levels=levels, num_classes=4, channels=6,
                            n_layers=layers, first_kernel=5, kernel=3, head_channels=8, output=output, mixtures=2)
    return PixelCNN(config).to(dtype).eval()


@pytest.mark.parametrize("output", OUTPUTS)
def test_no_blind_spot(output):
    """Within its reach (+-4 columns here), a pixel sees the row above, up-right included, and every pixel to
    its left (causality itself is tested for every family in test_raster.py)."""
    model = small_model(output=output)
    params, x = params_and_input(model)
    h = model.config.height
    (grad,) = torch.autograd.grad(params[0, h - 1, 3].sum(), x)
    assert (grad[0, 0, h - 2] != 0).all() and (grad[0, 0, h - 1, :3] != 0).all()


def test_tiny_run_writes_checkpoint_and_pngs(tiny_run):
    for name in ("model.safetensors", "optimizer.safetensors", "state.json", "config.json",
                 "samples.png", "loss.png"):
        assert (tiny_run / name).is_file(), name
    state = json.loads((tiny_run / "state.json").read_text())
    assert state["epoch"] == 1 and np.isfinite(state["history"][0]["test_nll"])


def test_training_resumes_where_it_stopped(tiny_run, tmp_path):
    import shutil

    from training.train import train

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    train(tiny_run / "config.json", run, epochs=2)
    history = json.loads((run / "state.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == json.loads((tiny_run / "state.json").read_text())["history"][0]


def _onnx(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_parity_eager_onnx_torchscript(tiny_run, tiny_store):
    """log_prob agrees across eager, ONNX and TorchScript to 1e-4 (relative)."""
    from training.train import load_model

    model, _, split = load_model(tiny_run)
    directory = tiny_store / "pixelcnn" / "1"
    x = torch.from_numpy(split.x_test[:8]).long()
    label = torch.from_numpy(split.y_test[:8])
    eager = model.log_prob(x, label).detach().numpy()
    onnx_out = _onnx(directory / "log_prob_given_label.onnx").run(None, {"x": x.numpy(), "label": label.numpy()})[0]
    ts_out = torch.jit.load(str(directory / "model.pt")).log_prob_given_label(x, label).detach().numpy()
    assert np.allclose(onnx_out, eager, rtol=1e-4) and np.allclose(ts_out, eager, rtol=1e-4)
    prior = torch.full((10,), 0.1).log()
    marginal = model.log_prob_marginal(x, prior).detach().numpy()
    assert np.allclose(_onnx(directory / "log_prob.onnx").run(None, {"x": x.numpy()})[0], marginal, rtol=1e-4)


def test_exported_sampling_step_matches_eager(tiny_run, tiny_store):
    """One exported row step (ONNX and TorchScript) gives the eager step's row and state."""
    from training.train import load_model

    model, _, _ = load_model(tiny_run)
    step = RowStep(model)
    b, w = 5, model.config.width
    g = torch.Generator().manual_seed(4)
    inputs = {"x_prev": torch.randint(0, 2, (b, w), generator=g), **initial_state(step, b)}
    inputs["started"] = torch.ones(b)
    inputs |= {"noise": torch.rand(b, w, generator=g), "temperature": torch.ones(b),
               "label": torch.arange(b), "observed": torch.zeros(b, w, dtype=torch.long),
               "mask": torch.zeros(b, w, dtype=torch.long)}
    with torch.no_grad():
        eager = [t.numpy() for t in step(*inputs.values())]
    directory = tiny_store / "pixelcnn" / "1"
    onnx_out = _onnx(directory / "sample_step.onnx").run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        ts_out = [t.numpy() for t in torch.jit.load(str(directory / "model.pt")).sample_step(*inputs.values())]
    for got in (onnx_out, ts_out):
        assert np.array_equal(got[0], eager[0])
        for a, e in zip(got[1:], eager[1:], strict=True):
            assert np.allclose(a, e, rtol=1e-4, atol=1e-5)


def test_logistic_mixture_pixelcnn_exports_with_parity(tmp_path):
    """A 256-level logistic-mixture PixelCNN: exported log_prob and row step (ONNX) equal the eager ones."""
    from training.export import export_function
    from training.families.raster import LogProbGivenLabel

    torch.manual_seed(3)
    config = PixelCNNConfig(height=5, width=6, levels=256, num_classes=3, channels=6, n_layers=2, first_kernel=3,
                            kernel=3, head_channels=8, output="logistic_mixture", mixtures=3)
    model = PixelCNN(config).eval()
    g = torch.Generator().manual_seed(5)
    b, w = 4, config.width
    x, label = torch.randint(0, 256, (b, 1, 5, w), generator=g), torch.arange(b) % 3
    step = RowStep(model)
    inputs = {"x_prev": torch.randint(0, 256, (b, w), generator=g), **initial_state(step, b)}
    none = torch.zeros(b, w, dtype=torch.long)
    inputs |= {"started": torch.ones(b), "noise": torch.rand(b, w, 2, generator=g), "temperature": torch.ones(b),
               "label": label, "observed": none, "mask": none}
    export_function(tmp_path, "lp", LogProbGivenLabel(model), {"x": x, "label": label}, ["log_prob"])
    export_function(tmp_path, "step", step, inputs, ["x", "next_x_hist", "next_v_hist", "next_started"])
    with torch.no_grad():
        eager_lp = model.log_prob(x, label).numpy()
        eager_step = [t.numpy() for t in step(*inputs.values())]
    onnx_lp = _onnx(tmp_path / "lp.onnx").run(None, {"x": x.numpy(), "label": label.numpy()})[0]
    assert np.allclose(onnx_lp, eager_lp, rtol=1e-4)
    onnx_step = _onnx(tmp_path / "step.onnx").run(None, {k: v.numpy() for k, v in inputs.items()})
    assert np.array_equal(onnx_step[0], eager_step[0]) and len(np.unique(eager_step[0])) > 1
