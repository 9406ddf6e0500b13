"""The maths of the RBM: free energy and partition function against brute-force enumeration, AIS against the
exact log Z (and its standard error against the spread of repeated runs), the Gibbs step's invariants and
stationary distribution, the PCD gradient, and a tiny run's export with eager / ONNX / TorchScript parity."""

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.families import rbm
from training.families.rbm import RBM, RBMConfig

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "training" / "configs" / "rbm-tiny.json"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def mnist():
    from training.data import load

    return load("mnist5k-binarized")


def random_rbm(shape=(1, 2, 3), hidden=4, scale=1.0, seed=0, **config) -> RBM:
    """An RBM with random weights and biases of standard deviation `scale`, in float64."""
    torch.manual_seed(seed)
    model = RBM(RBMConfig(hidden=hidden, pcd_chains=8, **config), shape).double().eval()
    with torch.no_grad():
        for p in (model.W, model.b, model.c, model.base_bias):
            p.normal_(0.0, scale)
    return model


def all_binary(n: int) -> torch.Tensor:
    """Every vector of {0, 1}^n: [2^n, n] float64."""
    return torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=torch.float64)


def energy(model: RBM, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """E(v, h) = -b.v - c.h - h.W v for every pair: v [N, V], h [M, H] -> [N, M]."""
    return -(v @ model.b).unsqueeze(1) - (h @ model.c).unsqueeze(0) - v @ model.W.t() @ h.t()


def test_free_energy_marginalises_the_hidden_units():
    model = random_rbm()
    v, h = all_binary(6), all_binary(4)
    with torch.no_grad():
        expected = -torch.logsumexp(-energy(model, v, h), dim=1)  # -log sum_h exp(-E(v, h))
        assert torch.allclose(rbm.free_energy(model, v.view(-1, 1, 2, 3)), expected, atol=1e-10)


def test_exact_log_partition_equals_enumeration_of_both_layers():
    model = random_rbm()
    with torch.no_grad():
        brute = torch.logsumexp(-energy(model, all_binary(6), all_binary(4)).flatten(), 0).item()
    assert abs(rbm.exact_log_partition(model) - brute) < 1e-10
    assert abs(rbm.exact_log_partition(model, chunk=3) - brute) < 1e-10  # chunking is exact


def test_ais_is_exact_when_the_target_is_the_base_rate_model():
    model = random_rbm(shape=(20,), hidden=5)
    with torch.no_grad():
        model.W.zero_(), model.c.zero_(), model.b.copy_(model.base_bias)
    log_z, stderr = rbm.ais(model, 20, 10, torch.Generator().manual_seed(0), progress=False)
    assert abs(log_z - rbm.exact_log_partition(model)) < 1e-10 and stderr < 1e-10


def test_ais_matches_the_exact_log_partition_of_a_small_rbm():
    """20 visible and 14 hidden units with strong weights: log Z (about 53) to within a few stderr."""
    model = random_rbm(shape=(1, 4, 5), hidden=14, seed=1)
    exact = rbm.exact_log_partition(model)
    log_z, stderr = rbm.ais(model, 1000, 100, torch.Generator().manual_seed(0), progress=False)
    assert 0 < stderr < 0.2, stderr
    assert abs(log_z - exact) < max(4 * stderr, 0.02) and abs(log_z - exact) < 0.3, (log_z, exact, stderr)
    assert rbm.ais(model, 1000, 100, torch.Generator().manual_seed(0), progress=False) == (log_z, stderr)


def test_ais_stderr_matches_the_spread_of_independent_runs():
    model = random_rbm(shape=(1, 4, 5), hidden=14, seed=1)
    estimates, errors = zip(*(rbm.ais(model, 200, 25, torch.Generator().manual_seed(s), progress=False)
                              for s in range(24)), strict=True)
    spread = np.std(estimates, ddof=1)
    assert 0.6 < spread / np.mean(errors) < 1.6, (spread, np.mean(errors))
    exact = rbm.exact_log_partition(model)
    assert abs(np.mean(estimates) - exact) < 0.2 * spread + 0.1  # the mean of 24 runs has sd spread / 5


def test_beta_schedule_runs_from_zero_to_one():
    for k in (3, 100, 10000):
        betas = rbm.beta_schedule(k)
        assert len(betas) == k + 1 and betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()


def test_gibbs_step_keeps_observed_pixels_and_is_a_function_of_its_noise():
    model = random_rbm(shape=(1, 28, 28), hidden=7).float()
    step = rbm.GibbsStep(model)
    g = torch.Generator().manual_seed(2)
    x, observed = (torch.randint(0, 2, (3, 1, 28, 28), generator=g) for _ in range(2))
    mask = torch.zeros_like(x)
    mask[..., :14, :] = 1
    noise_h, noise_v = torch.rand(3, 7, generator=g), torch.rand(3, 1, 28, 28, generator=g)
    with torch.no_grad():
        out, again = step(x, noise_h, noise_v, observed, mask), step(x, noise_h, noise_v, observed, mask)
    assert out.dtype == torch.long and torch.equal(out, again) and set(out.unique().tolist()) <= {0, 1}
    assert torch.equal(out[mask == 1], observed[mask == 1])
    assert not torch.equal(out[mask == 0], observed[mask == 0])  # the rest is drawn, not copied
    with torch.no_grad():  # all-zero uniforms switch every unit on, all-one uniforms every unit off
        ones = step(x, torch.zeros(3, 7), torch.zeros(3, 1, 28, 28), observed, torch.zeros_like(x))
        zeros = step(x, torch.ones(3, 7), torch.ones(3, 1, 28, 28), observed, torch.zeros_like(x))
    assert (ones == 1).all() and (zeros == 0).all()


@torch.no_grad()
def test_gibbs_chain_samples_the_exact_distribution():
    model = random_rbm(seed=3)
    step, g, n = rbm.GibbsStep(model), torch.Generator().manual_seed(4), 20000
    x = torch.randint(0, 2, (n, 1, 2, 3), generator=g)
    none = torch.zeros_like(x)
    for _ in range(50):
        noise_h, noise_v = torch.rand(n, 4, generator=g, dtype=torch.float64), torch.rand(n, 1, 2, 3, generator=g,
                                                                                             dtype=torch.float64)
        x = step(x, noise_h, noise_v, none, none)
    codes = (x.flatten(1) * (2 ** torch.arange(5, -1, -1))).sum(1)  # all_binary's order
    empirical = torch.bincount(codes, minlength=64).double() / n
    exact = torch.exp(-rbm.free_energy(model, all_binary(6)) - rbm.exact_log_partition(model))
    assert abs(exact.sum().item() - 1) < 1e-10
    assert 0.5 * (empirical - exact).abs().sum() < 0.04, 0.5 * (empirical - exact).abs().sum()


def test_pcd_loss_has_the_pcd_gradient_and_the_free_energy_as_value():
    model = random_rbm(shape=(1, 3, 4), hidden=5, scale=0.5, weight_decay=0.3).train()
    model.log_z.fill_(1.0)
    x = torch.randint(0, 2, (6, 1, 3, 4), generator=torch.Generator().manual_seed(5))
    before = model.chains.clone()
    value = rbm.loss(model, x, None)
    assert not torch.equal(model.chains, before) and math.isnan(model.log_z.item())  # chains moved, cache cleared
    value.backward()
    with torch.no_grad():
        data, chains = x.flatten(1).double(), model.chains
        assert torch.allclose(value, rbm.free_energy(model, x).mean())
        p_data, p_chain = model.hidden_probs(data), model.hidden_probs(chains)
        grad_w = -(p_data.t() @ data) / len(data) + (p_chain.t() @ chains) / len(chains) + 0.3 * model.W
        grad_b = -data.mean(0) + chains.mean(0)
        grad_c = -p_data.mean(0) + p_chain.mean(0)
        for p, expected in ((model.W, grad_w), (model.b, grad_b), (model.c, grad_c)):
            assert torch.allclose(p.grad, expected, atol=1e-12)
        chains = model.chains.clone()
        assert torch.allclose(rbm.loss(model.eval(), x, None), rbm.free_energy(model, x).mean())
        assert torch.equal(model.chains, chains)  # eval mode leaves the chains alone
    assert {"chains", "log_z", "log_z_stderr", "base_bias"} <= set(model.state_dict())


def test_pcd_training_raises_the_exact_likelihood_of_the_training_data(mnist):
    from training.train import _epoch, load_config

    config = load_config(TINY_CONFIG)
    load_config(REPO / "training" / "configs" / "rbm.json")
    split = mnist
    torch.manual_seed(0)
    model = rbm.build(config["model"], split)
    x = torch.from_numpy(split.x_train[:64]).long()

    def mean_log_p() -> float:
        with torch.no_grad():
            return -(rbm.free_energy(model, x, torch.float64).mean().item() + rbm.exact_log_partition(model))

    before = mean_log_p()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(15):  # 2 steps each
        assert np.isfinite(_epoch(rbm, model, optimizer, split, config["train"], epoch))
    assert mean_log_p() > before + 2, (before, mean_log_p())


def test_log_partition_is_computed_once_and_shared_by_log_prob_and_evaluate_test(monkeypatch):
    model = random_rbm(shape=(1, 2, 5), hidden=6, scale=0.5, ais_betas=50, ais_runs=4).float()
    calls = []
    ais = rbm.ais
    monkeypatch.setattr(rbm, "ais", lambda *a, **k: calls.append(1) or ais(*a, **k))
    x = torch.randint(0, 2, (7, 1, 2, 5), generator=torch.Generator().manual_seed(6))
    report = rbm.evaluate_test(model, SimpleNamespace(x_test=x.numpy().astype(np.uint8)))
    functions, capabilities = rbm.exported_functions(model, None)
    assert len(calls) == 1 and rbm.log_partition(model) == (report["test_log_partition"],
                                                           report["test_log_partition_stderr"])
    assert capabilities["score"]["log_partition"] == report["test_log_partition"]
    with torch.no_grad():
        log_prob = functions["log_prob"][0](x).double().numpy()
    assert np.allclose(-log_prob, report["test_nll_per_example"], rtol=1e-5)
    assert report["method"] == "ais" and report["ais_runs"] == 4 and report["ais_betas"] == 50
    with pytest.raises(ValueError):
        rbm.build({}, SimpleNamespace(levels=256, shape=(1, 28, 28)))


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, mnist):
    """rbm-tiny trained and exported (no baseline): (run directory, model directory)."""
    import training.train
    from training.export import export
    from training.train import train

    tmp = tmp_path_factory.mktemp("rbm")
    with pytest.MonkeyPatch.context() as patch:  # one data load for train, evaluate and export
        patch.setattr(training.train, "load", lambda name: mnist if name == mnist.name else None)
        run = train(TINY_CONFIG, tmp / "run")
        return run, export(run, tmp / "models", name="rbm", baseline=False)


def trained(run: Path, split) -> RBM:
    """The run's model, as load_model gives it, without loading the data again."""
    from safetensors.torch import load_file

    model = rbm.build(json.loads((run / "config.json").read_text())["model"], split)
    model.load_state_dict(load_file(run / "model.safetensors"))
    return model.eval()


def test_tiny_run_exports_a_manifest_whose_log_z_is_the_evaluated_one(tiny_export, mnist):
    run, out = tiny_export
    assert (run / "samples.png").is_file() and (run / "loss.png").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    caps, metrics = manifest["capabilities"], manifest["metrics"]
    assert manifest["family"] == "rbm" and set(caps) == {"sample", "complete", "score"}
    assert caps["sample"]["procedure"] == caps["complete"]["procedure"] == "markov_chain"
    assert caps["sample"]["noise"]["noise_h"]["shape"] == [12]
    assert caps["score"]["log_partition"] == metrics["test_log_partition"]  # the AIS estimate the export measured
    exact = rbm.exact_log_partition(trained(run, mnist))
    assert abs(caps["score"]["log_partition"] - exact) < max(4 * caps["score"]["log_partition_stderr"], 0.05)


def test_tiny_export_parity_eager_onnx_torchscript(tiny_export, mnist):
    run, out = tiny_export
    model = trained(run, mnist)
    functions, _ = rbm.exported_functions(model, None)
    g, b = torch.Generator().manual_seed(7), 3  # another batch size than the trace's
    x, observed = (torch.randint(0, 2, (b, 1, 28, 28), generator=g) for _ in range(2))
    inputs = {"gibbs_step": {"x": x, "noise_h": torch.rand(b, 12, generator=g),
                             "noise_v": torch.rand(b, 1, 28, 28, generator=g), "observed": observed,
                             "mask": torch.randint(0, 2, (b, 1, 28, 28), generator=g)},
              "log_prob": {"x": x}}
    for name, feeds in inputs.items():
        with torch.no_grad():
            eager = functions[name][0](*feeds.values()).numpy()
            scripted = getattr(torch.jit.load(str(out / "model.pt")), name)(*feeds.values()).numpy()
        session = ort.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        onnx_out = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
        for got in (onnx_out, scripted):
            assert got.shape == eager.shape and got.dtype == eager.dtype, name
            if name == "gibbs_step":  # an inverse-CDF draw may flip only at a boundary
                assert (got != eager).mean() < 1e-3
            else:
                assert np.allclose(got, eager, rtol=1e-5)
