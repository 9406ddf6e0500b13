"""The GAN family: the objectives and the gradient penalty against hand computations, the generator's
hand-written vector-Jacobian product against autograd, latent-optimisation completion, one training step of
every objective and kind, InfoGAN's codes, the train.py hook, and export parity (eager, ONNX Runtime,
TorchScript) for every kind."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.export import export_function
from training.families import gan
from training.families.gan import GAN, GANConfig
from training.nn import adversarial as adv

TINY = {"latent": 5, "channels": 3, "label_dim": 4, "joint_hidden": 6, "complete_steps": 3}
KINDS = {
    "dcgan": {},
    "dcgan-conditional": {"conditional": True},
    "bigan": {"kind": "bigan"},
    "infogan": {"kind": "infogan", "styles": 2},
}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def perturb_batch_norm(model: GAN, seed: int = 0) -> GAN:
    """Running statistics and affine weights away from (0, 1), so that eval BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (model.generator.bn0, model.generator.bn1):
            bn.running_mean.copy_(0.3 * torch.randn(bn.running_mean.shape, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=g))
            bn.weight.copy_(1 + 0.3 * torch.randn(bn.weight.shape, generator=g))
            bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=g))
    return model


def model_of(variant: str = "dcgan", seed: int = 0, **overrides) -> GAN:
    torch.manual_seed(seed)
    return perturb_batch_norm(GAN(GANConfig(**{**TINY, **KINDS[variant], **overrides})), seed).eval()


def images(b: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


def test_objectives_at_an_undecided_critic_are_the_closed_forms():
    zero = torch.zeros(3)
    assert adv.critic_loss("ns", zero, zero).item() == pytest.approx(2 * math.log(2))  # D = 1/2 everywhere
    assert adv.generator_loss("ns", zero).item() == pytest.approx(math.log(2))  # -log D
    assert adv.generator_loss("minimax", zero).item() == pytest.approx(-math.log(2))  # log(1 - D)
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    assert adv.critic_loss("wgan", real, fake).item() == pytest.approx(-1.0 - 2.0)  # E f(fake) - E f(real)
    assert adv.generator_loss("wgan-gp", fake).item() == pytest.approx(1.0)
    logits = torch.tensor([-1.5, 0.4, 2.0])  # minimax and ns against log(1 - D), -log D by hand
    by_hand = torch.log(1 - torch.sigmoid(logits)).mean().item()
    assert adv.generator_loss("minimax", logits).item() == pytest.approx(by_hand)
    assert adv.generator_loss("ns", logits).item() == pytest.approx(-torch.log(torch.sigmoid(logits)).mean().item())


def test_gradient_penalty_of_a_linear_critic_is_lambda_times_norm_minus_one_squared():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 1, 28, 28, generator=g, dtype=torch.float64)
    real = torch.randn(5, 1, 28, 28, generator=g, dtype=torch.float64)
    fake = torch.randn(5, 1, 28, 28, generator=g, dtype=torch.float64)
    eps = torch.rand(5, 1, 1, 1, generator=g, dtype=torch.float64)
    penalty = adv.gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake, eps, weight=10.0)
    assert penalty.item() == pytest.approx(10.0 * (w.norm().item() - 1) ** 2, rel=1e-10)


def test_gradient_penalty_flattens_each_example_before_its_norm():
    """f(x) = ||x||^2 / 2 has gradient x_hat: examples on directions of norm 1, scaled by c_i, have gradient
    norms c_i, and the penalty is lambda * mean (c_i - 1)^2, not a norm over the batch or over pixels."""
    c = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    direction = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = c.view(4, 1, 1, 1) * direction / direction.flatten(1).norm(dim=1).view(4, 1, 1, 1)
    eps = torch.rand(4, 1, 1, 1, dtype=torch.float64)  # real = fake = x: x_hat = x whatever eps
    penalty = adv.gradient_penalty(lambda v: 0.5 * v.flatten(1).square().sum(1), x, x, eps, weight=10.0)
    assert penalty.item() == pytest.approx(10.0 * (c - 1).square().mean().item(), rel=1e-10)


def test_gradient_penalty_of_the_critic_matches_per_example_autograd():
    torch.manual_seed(0)
    critic = adv.Critic(channels=3).double()
    g = torch.Generator().manual_seed(2)
    real = 2 * torch.rand(3, 1, 28, 28, generator=g, dtype=torch.float64) - 1
    fake = torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64)
    eps = torch.rand(3, 1, 1, 1, generator=g, dtype=torch.float64)
    expected = 0.0
    for i in range(3):  # one example at a time
        x_hat = (eps[i] * real[i] + (1 - eps[i]) * fake[i]).unsqueeze(0).requires_grad_()
        (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat)
        expected += (grad.norm().item() - 1) ** 2 / 3
    penalty = adv.gradient_penalty(critic, real, fake, eps, weight=10.0)
    assert penalty.item() == pytest.approx(10.0 * expected, rel=1e-10)
    penalty.backward()  # differentiable in the critic's weights (a second-order gradient); a piecewise-linear
    # critic's input gradient is piecewise constant in its biases
    assert all(conv.weight.grad.abs().sum() > 0 for conv in critic.trunk if isinstance(conv, torch.nn.Conv2d))


@pytest.mark.parametrize("variant", ["dcgan", "dcgan-conditional", "infogan"])
def test_generator_vjp_equals_autograd(variant):
    model = model_of(variant).double()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, model.inputs, generator=g, dtype=torch.float64, requires_grad=True)
    label = torch.tensor([0, 3, 7, 9]) if model.config.conditional else None
    grad_y = torch.randn(4, 1, 28, 28, generator=g, dtype=torch.float64)
    (expected,) = torch.autograd.grad((model.generator(z, label) * grad_y).sum(), z)
    assert torch.allclose(model.generator.vjp(z.detach(), grad_y, label), expected, atol=1e-10)


def test_latent_gradient_is_the_gradient_of_the_completion_objective():
    model = model_of("dcgan").double()
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, model.inputs, generator=g, dtype=torch.float64, requires_grad=True)
    target = 2 * torch.rand(3, 1, 28, 28, generator=g, dtype=torch.float64) - 1
    weight = (torch.rand(3, 1, 28, 28, generator=g) < 0.5).double()
    objective = (weight * (model.generator(z) - target).square()).sum() + 0.7 / 2 * z.square().sum()
    (expected,) = torch.autograd.grad(objective, z)
    got = adv.LatentGradient(model.generator, prior_weight=0.7)(z.detach(), target, weight)
    assert torch.allclose(got, expected, atol=1e-10)


def test_complete_keeps_observed_pixels_and_lowers_their_error():
    model = model_of("dcgan", complete_steps=60)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        observed = gan.levels(model.generator(torch.randn(3, model.inputs, generator=g)))  # reachable targets
    mask = (torch.rand(3, 1, 28, 28, generator=g) < 0.5).long()
    mask[:, :, :14] = 1  # the top half observed
    z0 = torch.randn(3, model.inputs, generator=g)
    loop = adv.LatentAdam(adv.LatentGradient(model.generator, 1.0), gan.Render(model), 60, 0.05)

    def observed_error(z):
        return (mask * (model.generator(z) - gan.scaled(observed)).square()).sum().item()

    with torch.no_grad():
        z1 = loop.optimise(observed, mask, z0)
        assert observed_error(z1) < 0.5 * observed_error(z0)
        completed = gan.complete_module(model)(observed, mask, z0)
    assert completed.dtype == torch.long and completed.shape == observed.shape
    assert torch.equal(completed[mask == 1], observed[mask == 1])
    expected = torch.where(mask == 1, observed, gan.levels(model.generator(z1)))
    assert (completed != expected).float().mean() < 1e-3  # scripted vs eager: rounding boundaries only


TRAINED = {
    "minimax": ("dcgan", {"objective": "minimax"}, {"betas": [0.5, 0.999]}),
    "ns": ("dcgan", {"objective": "ns"}, {}),
    "wgan": ("dcgan", {"objective": "wgan", "critic_steps": 2}, {"optimizer": "rmsprop"}),
    "wgan-gp": ("dcgan", {"objective": "wgan-gp", "critic_steps": 2}, {"betas": [0.5, 0.9]}),
    "conditional-ns": ("dcgan-conditional", {}, {}),
    "bigan": ("bigan", {}, {}),
    "infogan": ("infogan", {}, {}),
}


@pytest.mark.parametrize("name", TRAINED)
def test_train_step_updates_every_network(name):
    variant, overrides, settings = TRAINED[name]
    model = model_of(variant, **overrides).train()
    optimizers = gan.optimizers(model, {"lr": 1e-3, **settings})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y = torch.tensor([1, 2, 3, 4])
    reported = {}
    for step in range(model.config.critic_steps):  # the last step also updates the generator
        reported.update(gan.train_step(model, optimizers, images(), y, step))
    assert "critic" in reported and "generator" in reported and all(math.isfinite(v) for v in reported.values())
    if name == "wgan-gp":
        assert reported["penalty"] > 0
    if name == "infogan":
        assert "info" in reported and "info_g" in reported
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    expected = {"generator", "critic"} | {"bigan": {"encoder"}, "infogan": {"q_head"}}.get(variant, set())
    assert changed == expected


def test_wgan_clipping_keeps_the_critic_within_the_bound():
    model = model_of("dcgan", objective="wgan", critic_steps=5, clip=0.01).train()
    assert max(p.abs().max().item() for p in model.critic.parameters()) > 0.01  # the default init exceeds it
    optimizers = gan.optimizers(model, {"lr": 0.5, "optimizer": "rmsprop"})  # a big step to push past it
    for step in range(3):
        gan.train_step(model, optimizers, images(), torch.zeros(4, dtype=torch.long), step)
        assert max(p.abs().max().item() for p in model.critic.parameters()) <= 0.01


def test_objective_restrictions_are_enforced():
    with pytest.raises(ValueError, match="minimax or ns"):
        GAN(GANConfig(kind="bigan", objective="wgan-gp"))
    with pytest.raises(ValueError, match="kind must be"):
        GAN(GANConfig(kind="vae"))


def test_infogan_codes_change_the_sample_and_the_q_loss_rewards_recovering_them():
    model = model_of("infogan")
    sample = gan.Sample(model)
    eps, ones = torch.randn(1, model.config.latent).repeat(4, 1), torch.ones(4)
    style = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, -1.0]])
    with torch.no_grad():
        x = sample(eps, ones, torch.tensor([0, 0, 7, 0]), style)  # rows 0, 1 equal; 2: another code; 3: styles
    y = model.generator(model.generator_input(eps, torch.tensor([0, 0, 7, 0]), style))
    assert torch.equal(x[0], x[1])
    assert (y[2] - y[0]).abs().max() > 1e-4 and (y[3] - y[0]).abs().max() > 1e-4
    code, style = torch.tensor([3, 5]), torch.tensor([[0.2, -0.7], [0.9, 0.1]])
    h = torch.randn(2, 2 * 3 * 49)
    q = model.q_head(h)
    expected = F.cross_entropy(q[:, :10], code) + 0.5 * (q[:, 10:] - style).square().sum(1).mean()
    assert gan.info_loss(model, h, code, style).item() == pytest.approx(expected.item())
    model.q_head = torch.nn.Identity()  # a Q that reads the codes off perfectly: the loss goes to 0
    perfect = torch.cat([100 * F.one_hot(code, 10).float(), style], dim=1)
    assert gan.info_loss(model, perfect, code, style).item() < 1e-6


@pytest.mark.parametrize("variant", KINDS)
def test_every_exported_function_agrees_across_eager_onnx_and_torchscript(variant, tmp_path, three_ways):
    model = model_of(variant)
    functions, capabilities = gan.exported_functions(model, split=None)
    expected = {"sample", "decode", "score", "complete"} | ({"encode"} if variant == "bigan" else set())
    assert set(capabilities) == expected and set(functions) == expected - {"score"} | {"critic"}
    assert capabilities["score"] == {"procedure": "direct", "function": "critic", "method": "critic"}
    assert capabilities["complete"]["noise"]["z"]["shape"] == [model.inputs]
    assert ("controls" in capabilities["sample"]) == (variant == "infogan")
    g = torch.Generator().manual_seed(1)
    b = 3  # another batch size than the trace's
    for name, (module, example, outputs) in functions.items():
        export_function(tmp_path, name, module, example, outputs)
        inputs = {}
        for input_name, t in example.items():
            shape = (b, *t.shape[1:])
            if input_name in ("label", "code"):
                inputs[input_name] = torch.randint(0, 10, shape, generator=g)
            elif t.dtype == torch.long:
                inputs[input_name] = torch.randint(0, 2 if input_name == "mask" else 256, shape, generator=g)
            elif input_name == "temperature":
                inputs[input_name] = torch.rand(shape, generator=g) + 0.5
            elif input_name == "style":
                inputs[input_name] = 2 * torch.rand(shape, generator=g) - 1
            else:
                inputs[input_name] = torch.randn(shape, generator=g)
        eager, onnx_out, scripted = three_ways(tmp_path, name, module, inputs)
        for got in (onnx_out, scripted):
            for a, e in zip(got, eager, strict=True):
                assert a.shape == e.shape, name
                if e.dtype == np.int64:  # rounded levels: may flip only at a rounding boundary
                    assert (a != e).mean() < 1e-3 and np.abs(a - e).max() <= 1, name
                else:
                    assert np.allclose(a, e, rtol=1e-4, atol=1e-4), name
        if name == "complete":
            observed = inputs["mask"].numpy() == 1
            assert all(np.array_equal(out[0][observed], inputs["observed"].numpy()[observed])
                       for out in (eager, onnx_out, scripted))


def test_sample_grid_rows_and_evaluation(tmp_path):
    from training.data import mnist5k

    model = model_of("dcgan-conditional")
    grid = gan.sample_grid(model, torch.Generator().manual_seed(0))
    assert grid.shape == (80, 1, 28, 28) and grid.dtype == torch.long and 0 <= grid.min() and grid.max() <= 255
    assert gan.sample_grid(model_of("infogan"), torch.Generator().manual_seed(0)).shape == (80, 1, 28, 28)
    split = mnist5k()
    report = gan.evaluate_test(model, split)
    assert len(report["test_critic_per_example"]) == len(split.x_test)
    assert 1 <= report["inception_score"] <= 10 and report["fid"] > 0 and 0 <= report["classes_covered"] <= 1
    assert report["class_kl"] >= 0
    with pytest.raises(FileNotFoundError, match="evaluation classifier"):
        gan.evaluate_test(model, split, classifier_dir=tmp_path)


def test_train_runs_and_resumes_with_the_family_optimizers(tmp_path):
    from training.train import train

    config = json.loads(open("training/configs/wgan-gp-tiny.json").read())
    config["train"]["epochs"] = 1
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    run = train(path, tmp_path / "run")
    assert {"optimizer-critic.safetensors", "optimizer-generator.safetensors", "samples.png"} <= {
        p.name for p in run.iterdir()}
    train(path, run, epochs=2)
    history = json.loads((run / "state.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"critic", "penalty", "generator"} <= set(history[-1]["train_losses"])
    assert math.isfinite(history[-1]["test_loss"])
