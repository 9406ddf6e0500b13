"""The Row LSTM (PixelRNN): its reach, export parity, served end to end (the shared maths: test_raster.py)."""

import asyncio
import functools
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_raster import params_and_input

from training.families.pixelrnn import (
    PixelRNN,
    PixelRNNConfig,
    RowStep,
    initial_state,
    sample_fast,
)
from training.families.raster import LogProbGivenLabel

REPO = Path(__file__).resolve().parent.parent.parent
TINY_CONFIG = REPO / "training" / "configs" / "pixelrnn-tiny.json"

pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(height=6, width=7, levels=3, layers=3, dtype=torch.float64, output="categorical") -> PixelRNN:
    torch.manual_seed(0)
    config = PixelRNNConfig(height=height, width=width, levels=levels, num_classes=4, channels=6,
                            n_layers=layers, first_kernel=5, kernel=3, head_channels=8, output=output, mixtures=2)
    return PixelRNN(config).to(dtype).eval()


def test_a_pixel_sees_the_row_above_and_its_left_and_rows_see_the_last_pixel_above():
    """Within reach, a pixel sees the row above (up-right included) and the pixels to its left; the last pixel
    of a row is seen by the next row (the first layer's row-above convolution). Causality: test_raster.py."""
    model = small_model()
    params, x = params_and_input(model)
    h, w = model.config.height, model.config.width
    (grad,) = torch.autograd.grad(params[0, h - 1, 3].sum(), x, retain_graph=True)
    assert (grad[0, 0, h - 2, :6] != 0).all() and (grad[0, 0, h - 1, :3] != 0).all()
    (grad,) = torch.autograd.grad(params[0, 2, w - 1].sum(), x)
    assert grad[0, 0, 1, w - 1] != 0


def _onnx(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_exports_with_parity(tmp_path):
    """Exported log_prob_given_label and one row step (ONNX and TorchScript) equal the eager ones."""
    from training.export import export_function

    torch.manual_seed(3)
    config = PixelRNNConfig(height=5, width=6, levels=2, num_classes=3, channels=6, n_layers=2, first_kernel=3,
                            kernel=3, head_channels=8)
    model = PixelRNN(config).eval()
    g = torch.Generator().manual_seed(5)
    b, w = 4, config.width
    x, label = torch.randint(0, 2, (b, 1, 5, w), generator=g), torch.arange(b) % 3
    step = RowStep(model)
    inputs = {"x_prev": torch.randint(0, 2, (b, w), generator=g)}
    inputs |= {name: torch.randn(t.shape, generator=g) for name, t in initial_state(step, b).items()}
    inputs |= {"noise": torch.rand(b, w, generator=g), "temperature": torch.tensor([1.0, 1.0, 0.5, 2.0]),
               "label": label, "observed": torch.randint(0, 2, (b, w), generator=g),
               "mask": (torch.rand(b, w, generator=g) < 0.3).long()}
    export_function(tmp_path, "lp", LogProbGivenLabel(model), {"x": x, "label": label}, ["log_prob"])
    export_function(tmp_path, "step", step, inputs, ["x", "next_h", "next_c"])
    with torch.no_grad():
        eager_lp = model.log_prob(x, label).numpy()
        eager_step = [t.numpy() for t in step(*inputs.values())]
        ts_lp = torch.jit.load(str(tmp_path / "lp.pt"))(x, label).numpy()
        ts_step = [t.numpy() for t in torch.jit.load(str(tmp_path / "step.pt"))(*inputs.values())]
    onnx_lp = _onnx(tmp_path / "lp.onnx").run(None, {"x": x.numpy(), "label": label.numpy()})[0]
    onnx_step = _onnx(tmp_path / "step.onnx").run(None, {k: v.numpy() for k, v in inputs.items()})
    assert [i.name for i in _onnx(tmp_path / "step.onnx").get_inputs()] == list(inputs)
    assert np.allclose(onnx_lp, eager_lp, rtol=1e-4) and np.allclose(ts_lp, eager_lp, rtol=1e-4)
    with torch.no_grad():  # the batch axis is dynamic
        ts_lp3 = torch.jit.load(str(tmp_path / "lp.pt"))(x[:3], label[:3]).numpy()
    onnx_lp3 = _onnx(tmp_path / "lp.onnx").run(None, {"x": x[:3].numpy(), "label": label[:3].numpy()})[0]
    assert np.allclose(onnx_lp3, eager_lp[:3], rtol=1e-4) and np.allclose(ts_lp3, eager_lp[:3], rtol=1e-4)
    assert len(np.unique(eager_step[0])) > 1
    for got in (onnx_step, ts_step):
        assert np.array_equal(got[0], eager_step[0])
        for a, e in zip(got[1:], eager_step[1:], strict=True):
            assert a.shape == e.shape == (b, 2, 6, w) and np.allclose(a, e, rtol=1e-4, atol=1e-5)


def test_tiny_run_exports_and_is_served(tmp_path, monkeypatch):
    """pixelrnn-tiny: train, export, and serve through the engine (ONNX): seeded samples, scores, completion."""
    import training.train
    from service.engine.engine import Engine
    from service.engine.procedures import row_generators
    from service.settings import Settings
    from service.store import ModelStore
    from training.export import export
    from training.train import load_model, train

    monkeypatch.setattr(training.train, "load", functools.cache(training.train.load))  # one data load, not five
    run = train(TINY_CONFIG, tmp_path / "run")
    assert (run / "samples.png").is_file() and (run / "loss.png").is_file()
    out = export(run, tmp_path / "models", name="pixelrnn", baseline=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["family"] == "pixelrnn" and set(manifest["capabilities"]) == {"sample", "complete", "score"}
    assert set(manifest["capabilities"]["sample"]["state"]) == {"h", "c"}
    eager = load_model(run)[0]
    engine = Engine(ModelStore(tmp_path / "models"), Settings(runtime="onnx", intra_op_threads=1))

    x = asyncio.run(engine.sample("pixelrnn", 2, 5, 1.0, 3))  # [2, 1, 28, 28]
    assert x.shape == (2, 1, 28, 28) and set(np.unique(x)) <= {0, 1}
    assert np.array_equal(asyncio.run(engine.sample("pixelrnn", 2, 5, 1.0, 3)), x)
    rngs = row_generators(5, 2)  # what the engine drew: row r, step t -> rngs[r].random([28])
    noise = np.stack([np.stack([rng.random(28, dtype=np.float32) for _ in range(28)]) for rng in rngs])
    expected = sample_fast(eager, torch.full((2,), 3), torch.from_numpy(noise), torch.ones(2)).numpy()
    assert np.mean(x == expected) > 0.99  # float32 ONNX vs eager may flip a pixel at a CDF edge, rarely

    images = training.train.load("mnist5k-binarized").x_test[:3].astype(np.int64)
    given = asyncio.run(engine.score("pixelrnn", images, labels=[0, 1, 2]))
    marginal = asyncio.run(engine.score("pixelrnn", images))
    with torch.no_grad():
        xs = torch.from_numpy(images)
        want_given = eager.log_prob(xs, torch.tensor([0, 1, 2])).numpy()
        prior = torch.tensor(manifest["data"]["class_prior"], dtype=torch.float32)
        want_marginal = eager.log_prob_marginal(xs, prior.log()).numpy()
    assert np.allclose([r["log_likelihood_nats"] for r in given], want_given, rtol=1e-4)
    assert np.allclose([r["log_likelihood_nats"] for r in marginal], want_marginal, rtol=1e-4)
    assert all(r["method"] == "exact" and r["bits_per_dim"] > 0 for r in given + marginal)

    mask = np.zeros((1, 28, 28), np.int64)
    mask[:, :14] = 1
    mask[:, 20, 5:9] = 1  # an observed patch below the sampled part is clamped too
    done = asyncio.run(engine.complete("pixelrnn", images[:2], mask, n=2, seed=1, temperature=1.0))
    assert done.shape == (2, 2, 1, 28, 28)
    kept = np.broadcast_to(mask.astype(bool), done.shape)
    assert np.array_equal(done[kept], np.broadcast_to(images[:2, None], done.shape)[kept])
