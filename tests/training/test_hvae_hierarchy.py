"""The hvae's hierarchical bounds (hvae.log_weights_above, Havtorn et al. 2021's L^{>k}): column 0 is the full
log-weight bit for bit, column 1 matches the densities with z1 drawn from p(z1 | z2), both columns are importance
samplers of the same log p(x), and the shipped function agrees with the shipped log_weight across ONNX and
TorchScript. (Eager/ONNX/TorchScript parity of a fresh export: tests/training/test_hvae.py.)"""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.distributions import Bernoulli, Normal

from training.families import hvae
from training.families.hvae import HVAE, HVAEConfig
from training.families.vae import log_mean_exp

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "hvae" / "1"
D1, D2 = 3, 2


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny_model(seed=0) -> HVAE:
    torch.manual_seed(seed)
    return HVAE(HVAEConfig(z1=D1, z2=D2, channels=2, hidden=8)).double().eval()


def images(b, seed=0) -> torch.Tensor:
    return torch.randint(0, 2, (b, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


def normal(shape, seed) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@torch.no_grad()
def test_column_0_is_the_full_log_weight_and_column_1_draws_z1_from_its_conditional_prior():
    model, x = tiny_model(), images(3)
    eps = normal((4, 3, D1 + D2), 1)
    got = hvae.log_weights_above(model, x, eps)
    assert got.shape == (4, 3, hvae.LAYERS)
    assert torch.equal(got[..., 0], hvae.log_weights(model, x, eps))
    h = model.encoder(x.double())
    m2, lv2 = model.q2(h).chunk(2, dim=-1)
    q2 = Normal(m2, (0.5 * lv2).exp())
    z2 = m2 + q2.scale * eps[..., D1:]
    pm, plv = model.p1(z2).chunk(2, dim=-1)
    z1 = pm + (0.5 * plv).exp() * eps[..., :D1]  # from p(z1 | z2), not q(z1 | x, z2)
    log_px = Bernoulli(logits=model.decoder(z1.reshape(-1, D1))).log_prob(x.double().repeat(4, 1, 1, 1))
    want = log_px.sum((1, 2, 3)).view(4, 3) + Normal(0.0, 1.0).log_prob(z2).sum(-1) - q2.log_prob(z2).sum(-1)
    assert torch.allclose(got[..., 1], want)


@torch.no_grad()
def test_both_columns_importance_sample_the_same_likelihood():
    """p(z1 | z2) q(z2 | x) is a proposal too: as k grows both IWAE bounds reach the same log p(x)."""
    model, x, k = tiny_model(1), images(2, 3), 4000
    log_w = hvae.log_weights_above(model, x, normal((k, 2, D1 + D2), 4))  # [k, 2, 2]
    full, full_err = log_mean_exp(log_w[..., 0])
    above, above_err = log_mean_exp(log_w[..., 1])
    assert (full_err < 0.1).all() and (above_err < 0.1).all()  # precise enough for the comparison to mean something
    assert ((full - above).abs() < 5 * (full_err.square() + above_err.square()).sqrt() + 1e-3).all(), (full, above)


def test_the_shipped_function_agrees_with_the_shipped_log_weight_in_both_runtimes():
    assert (SHIPPED / "log_weight_above.onnx").is_file(), "models/hvae/1 lacks log_weight_above.onnx"
    rng = np.random.default_rng(0)
    feeds = {"x": rng.integers(0, 2, (5, 1, 28, 28)).astype(np.int64),
             "eps": rng.standard_normal((5, 48)).astype(np.float32)}

    def onnx_run(name):
        session = ort.InferenceSession(str(SHIPPED / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        return session.run(None, feeds)[0]

    above, full = onnx_run("log_weight_above"), onnx_run("log_weight")
    assert above.shape == (5, 2) and np.allclose(above[:, 0], full, atol=1e-3)
    bundle = torch.jit.load(str(SHIPPED / "model.pt"))
    with torch.no_grad():
        scripted = bundle.log_weight_above(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    assert np.allclose(scripted, above, atol=1e-3)
    assert (above[:, 1] < above[:, 0]).mean() >= 0.8  # random images: the prior's z1 explains them worse
