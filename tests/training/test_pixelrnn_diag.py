"""The Diagonal BiLSTM (PixelRNN, cell "diagonal_bilstm"): the skew, its reach, normalisation, fast = naive
sampling, export parity, and a tiny run served end to end on both runtimes."""

import asyncio
import dataclasses
import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training.export import export_function
from training.families import pixelrnn
from training.families.raster import LogProbGivenLabel, initial_state, sample_fast, sample_naive
from training.nn.diagonal_lstm import skew, unskew

REPO = Path(__file__).resolve().parent.parent.parent
TINY_CONFIG = REPO / "training" / "configs" / "pixelrnn-diag-tiny.json"

pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(height=6, width=7, levels=3, layers=2, output="categorical", dtype=torch.float64):
    torch.manual_seed(0)
    config = pixelrnn.PixelRNNConfig(height=height, width=width, levels=levels, num_classes=4, channels=6,
                                     n_layers=layers, cell="diagonal_bilstm", first_kernel=5, head_channels=8,
                                     output=output, mixtures=2)
    return pixelrnn.DiagonalPixelRNN(config).to(dtype).eval()


def test_skew_shifts_row_i_right_by_i_and_unskew_inverts_it():
    x = torch.randn(2, 3, 4, 5)
    skewed = skew(x)
    assert skewed.shape == (2, 3, 4, 8)
    for i, j in itertools.product(range(4), range(5)):
        assert torch.equal(skewed[..., i, i + j], x[..., i, j])
    assert skewed.abs().sum() == x.abs().sum()  # zeros everywhere else
    assert torch.equal(unskew(skewed, 5), x)


def test_a_pixel_sees_exactly_the_earlier_pixels_but_the_last_one_of_the_row_above():
    """Causality by input gradients: params at (i, j) have zero gradient w.r.t. x at every (i', j') >= (i, j)
    in raster order, and nonzero w.r.t. every earlier pixel except one. The right-to-left LSTM, shifted down a
    row, never sees the last pixel of a row (no input position holds its own pixel), so (i-1, W-1) reaches
    row i only through the mask 'A' convolution's k // 2 columns: the paper's construction, unchanged."""
    model = small_model()
    h, w, pad = model.config.height, model.config.width, model.first.pad
    x = torch.randint(0, 3, (1, 1, h, w)).double().requires_grad_()
    params = model.params(x, torch.tensor([1]))
    for i, j in itertools.product(range(h), range(w)):
        (grad,) = torch.autograd.grad(params[0, i, j].sum(), x, retain_graph=True)
        earlier = torch.zeros(h, w, dtype=torch.bool)
        earlier[:i] = True
        earlier[i, :j] = True
        if i > 0 and j < w - 1 - pad:
            earlier[i - 1, w - 1] = False
        assert torch.equal(grad[0, 0] != 0, earlier), f"pixel ({i},{j})"


@pytest.mark.parametrize(("shape", "levels", "output"), [((3, 3), 2, "categorical"),
                                                         ((2, 2), 3, "logistic_mixture")])
def test_model_distribution_sums_to_one(shape, levels, output):
    """Over every image (512 binary 3x3 ones, 81 3-level 2x2 ones), p(x | y) and the marginal p(x) sum to 1."""
    model = small_model(*shape, levels=levels, output=output)
    images = torch.tensor(list(itertools.product(range(levels), repeat=shape[0] * shape[1]))).view(-1, 1, *shape)
    for label in range(4):
        total = model.log_prob(images, torch.full((len(images),), label)).exp().sum()
        assert total.item() == pytest.approx(1.0, abs=1e-9)
    log_prior = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).log()
    assert model.log_prob_marginal(images, log_prior).exp().sum().item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("output", ["categorical", "logistic_mixture"])
def test_fast_sampling_and_completion_equal_naive_under_the_same_noise(output):
    model = small_model(output=output)
    c, g = model.config, torch.Generator().manual_seed(1)
    noise = torch.rand(4, c.height, c.width, *model.output.noise_shape, generator=g, dtype=torch.float64)
    label, temperature = torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 1.0, 0.7, 1.5], dtype=torch.float64)
    fast = sample_fast(model, label, noise, temperature)
    assert torch.equal(fast, sample_naive(model, label, noise, temperature)) and fast.unique().numel() > 1
    observed = torch.randint(0, 3, (4, c.height, c.width), generator=g)
    mask = (torch.rand(4, c.height, c.width, generator=g) < 0.5).long()
    done = sample_fast(model, label, noise, temperature, observed, mask)
    assert torch.equal(done, sample_naive(model, label, noise, temperature, observed, mask))
    assert torch.equal(done[:, 0][mask > 0], observed[mask > 0])


def test_unknown_cell_and_too_small_first_kernel_are_refused():
    split = SimpleNamespace(shape=(1, 5, 5), levels=2, num_classes=3)
    with pytest.raises(ValueError, match="model.cell"):
        pixelrnn.build({"cell": "grid_lstm"}, split)
    with pytest.raises(ValueError, match="model.first_kernel"):
        pixelrnn.build({"cell": "diagonal_bilstm", "first_kernel": 3}, split)


def test_exports_with_parity(tmp_path, three_ways):
    """Exported log_prob_given_label and one row step (ONNX and TorchScript) equal the eager ones."""
    model = small_model(5, 6, levels=2, dtype=torch.float32)
    g, b, w = torch.Generator().manual_seed(5), 4, 6
    x, label = torch.randint(0, 2, (b, 1, 5, w), generator=g), torch.arange(b) % 4
    step = model.row_step()
    inputs = {"x_prev": torch.randint(0, 2, (b, w), generator=g)}
    inputs |= {name: torch.randn(t.shape, generator=g) for name, t in initial_state(step, b).items()}
    inputs["rows"] = torch.randint(0, 2, inputs["rows"].shape, generator=g).float()
    inputs |= {"noise": torch.rand(b, w, generator=g), "temperature": torch.tensor([1.0, 1.0, 0.5, 2.0]),
               "label": label, "observed": torch.randint(0, 2, (b, w), generator=g),
               "mask": (torch.rand(b, w, generator=g) < 0.3).long()}
    export_function(tmp_path, "lp", LogProbGivenLabel(model), {"x": x, "label": label}, ["log_prob"])
    export_function(tmp_path, "step", step, inputs, ["x", "next_rows", "next_h_left", "next_h_right"])
    eager, onnx, scripted = three_ways(tmp_path, "lp", LogProbGivenLabel(model), {"x": x, "label": label})
    assert np.allclose(onnx[0], eager[0], rtol=1e-4) and np.allclose(scripted[0], eager[0], rtol=1e-4)
    eager, onnx, scripted = three_ways(tmp_path, "step", step, inputs)
    assert len(np.unique(eager[0])) > 1 and eager[1].shape == (b, 1, w) and eager[2].shape == (b, 2, 6, w)
    for got in (onnx, scripted):
        assert np.array_equal(got[0], eager[0])
        assert all(np.allclose(a, e, rtol=1e-4, atol=1e-5) for a, e in zip(got[1:], eager[1:], strict=True))


def test_tiny_run_exports_and_is_served_on_both_runtimes(tmp_path, monkeypatch):
    """pixelrnn-diag-tiny: train, export, serve (ONNX and TorchScript): seeded samples equal the eager fast
    sampler under the engine's noise, scores equal eager ones, completion keeps the observed pixels."""
    import training.train
    from service.engine.engine import Engine
    from service.engine.procedures import row_generators
    from service.settings import Settings
    from service.store import ModelStore
    from training.export import export
    from training.train import load_model, train

    full = training.train.load("mnist5k-binarized")  # one load; 50 test images are enough to serve and score
    split = dataclasses.replace(full, x_test=full.x_test[:50], y_test=full.y_test[:50])
    monkeypatch.setattr(training.train, "load", lambda name: split)
    run = train(TINY_CONFIG, tmp_path / "run")
    out = export(run, tmp_path / "models", name="pixelrnn-diag", baseline=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["family"] == "pixelrnn" and set(manifest["capabilities"]["sample"]["state"]) == {
        "rows", "h_left", "h_right"}
    eager = load_model(run)[0]
    rngs = row_generators(5, 2)  # what the engine draws: row r, step t -> rngs[r].random([28])
    noise = np.stack([np.stack([rng.random(28, dtype=np.float32) for _ in range(28)]) for rng in rngs])
    expected = sample_fast(eager, torch.full((2,), 3), torch.from_numpy(noise), torch.ones(2)).numpy()
    images = split.x_test[:3].astype(np.int64)
    with torch.no_grad():
        want = eager.log_prob(torch.from_numpy(images), torch.tensor([0, 1, 2])).numpy()
    mask = np.zeros((1, 28, 28), np.int64)
    mask[:, :14] = 1
    for runtime in ("onnx", "torchscript"):
        engine = Engine(ModelStore(tmp_path / "models"), Settings(runtime=runtime, intra_op_threads=1))
        x = asyncio.run(engine.sample("pixelrnn-diag", 2, 5, 1.0, 3))  # [2, 1, 28, 28]
        assert np.array_equal(asyncio.run(engine.sample("pixelrnn-diag", 2, 5, 1.0, 3)), x)
        assert not np.array_equal(asyncio.run(engine.sample("pixelrnn-diag", 2, 6, 1.0, 3)), x)
        assert np.mean(x == expected) > 0.99  # float32 vs eager may flip a pixel at a CDF edge, rarely
        given = asyncio.run(engine.score("pixelrnn-diag", images, labels=[0, 1, 2]))
        assert np.allclose([r["log_likelihood_nats"] for r in given], want, rtol=1e-4)
        done = asyncio.run(engine.complete("pixelrnn-diag", images[:1], mask, n=2, seed=1, temperature=1.0))
        assert np.array_equal(done[:, :, :, :14], np.broadcast_to(images[:1, None, :, :14], done[:, :, :, :14].shape))
