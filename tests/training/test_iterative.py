"""Learned iterative inference (training/iterative.py, issue 19): the ELBO gradient the refinement steps use is
autograd's, the VAE rebuilt from its ONNX weights is the served one, and the learned step, added to an exported
VAE, runs through the service (ONNX and TorchScript alike) as `refine: "learned"`."""

import asyncio
import json
import shutil

import numpy as np
import pytest
import torch

from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.settings import Settings
from service.store import ModelStore
from training.families.vae import elbo_gradients
from training.iterative import (
    FUNCTION,
    LearnedRefineStep,
    RefinerConfig,
    UpdateNet,
    add_to_model,
    elbo,
    gradient_step,
    load_vae,
    train,
)

TINY = RefinerConfig(hidden=16, steps=2, epochs=1, batch_size=32, train_images=64)


@pytest.fixture(scope="module")
def learned_store(tiny_vae_store, tmp_path_factory):
    """A copy of the tiny VAE store with a learned refinement step added (the original is shared)."""
    store = tmp_path_factory.mktemp("learned") / "models"
    shutil.copytree(tiny_vae_store, store)
    model = load_vae(store / "vae" / "1")
    update = train(model, TINY)
    add_to_model(store / "vae" / "1", model, update, TINY, "test")
    return store, model, update


def test_the_refinement_gradient_is_autograds_gradient_of_the_monte_carlo_elbo(tiny_vae_store):
    model = load_vae(tiny_vae_store / "vae" / "1")
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 2, (3, 1, 28, 28)))
    mean, log_std = torch.randn(3, 4, requires_grad=True), (0.3 * torch.randn(3, 4)).requires_grad_()
    eps = torch.randn(3, 5, 4)
    elbo(model, x, mean, log_std, eps).sum().backward()
    grad_mean, grad_log_std = elbo_gradients(model, x, mean.detach(), log_std.detach().exp(), eps)
    assert torch.allclose(grad_mean, mean.grad, atol=1e-4) and torch.allclose(grad_log_std, log_std.grad, atol=1e-4)


def test_the_untrained_update_is_gradient_ascent_at_its_initial_step_size(tiny_vae_store):
    model = load_vae(tiny_vae_store / "vae" / "1")
    x = torch.from_numpy(np.random.default_rng(3).integers(0, 2, (3, 1, 28, 28)))
    mean, std, eps = torch.randn(3, 4), torch.rand(3, 4) + 0.5, torch.randn(3, 8, 4)
    with torch.no_grad():
        learned = LearnedRefineStep(model, UpdateNet(4, 16, init_step=0.02))(x, mean, std, eps)
        gradient = gradient_step(model, 0.02)(x, mean, std, eps)
    assert not torch.allclose(learned[0], mean)  # it moves
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(learned, gradient, strict=True))


def test_the_rebuilt_vae_encodes_as_the_served_one(tiny_vae_store):
    engine = Engine(ModelStore(tiny_vae_store), Settings(intra_op_threads=1))
    x = np.random.default_rng(1).integers(0, 2, (4, 1, 28, 28))
    served = asyncio.run(engine.encode("vae", x))
    mean, std = load_vae(tiny_vae_store / "vae" / "1").encode(torch.from_numpy(x))
    assert np.allclose(served["mean"], mean.numpy(), atol=1e-5) and np.allclose(served["std"], std.numpy(), atol=1e-5)


@pytest.mark.parametrize("runtime", ["onnx", "torchscript"])
def test_the_learned_step_is_served_as_refine_learned(learned_store, runtime):
    store, model, update = learned_store
    manifest = json.loads((store / "vae" / "1" / "manifest.json").read_text())
    assert manifest["capabilities"]["encode"]["refine"]["updates"]["learned"]["function"] == FUNCTION
    engine = Engine(ModelStore(store), Settings(intra_op_threads=1, runtime=runtime))  # the store checks the files
    x = np.random.default_rng(2).integers(0, 2, (3, 1, 28, 28))
    served = asyncio.run(engine.encode("vae", x, refine_steps=1, seed=5, refine="learned"))
    # the same step in torch, under the engine's noise: row r's eps from its own generator of seed 5
    eps = np.stack([np.random.default_rng(s).standard_normal((8, 4), dtype=np.float32)
                    for s in np.random.SeedSequence(5).spawn(3)])
    mean, std = model.encode(torch.from_numpy(x))
    with torch.no_grad():
        want_mean, want_std = LearnedRefineStep(model, update)(torch.from_numpy(x), mean, std, torch.from_numpy(eps))
    assert np.allclose(served["mean"], want_mean.numpy(), atol=1e-4)
    assert np.allclose(served["std"], want_std.numpy(), atol=1e-4)
    again = asyncio.run(engine.encode("vae", x, refine_steps=1, seed=5, refine="learned"))
    assert np.array_equal(served["mean"], again["mean"])  # seeded: the same answer
    gradient = asyncio.run(engine.encode("vae", x, refine_steps=1, seed=5))
    assert not np.allclose(gradient["mean"], served["mean"])  # another rule, another answer


def test_an_unknown_refinement_rule_is_refused_naming_the_field(learned_store):
    engine = Engine(ModelStore(learned_store[0]), Settings(intra_op_threads=1))
    x = np.zeros((1, 1, 28, 28), np.int64)
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(engine.encode("vae", x, refine_steps=1, refine="newton"))
    assert refused.value.field == "refine" and "learned" in refused.value.message
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(engine.score("vae", x, method="elbo", k=2, refine="newton"))
    assert refused.value.field == "refine"
