"""Learned iterative inference for a shipped VAE (Marino et al. 2017, "Learning to Infer"; issue 19).

An update network reads q's current (mean, log std) and the ELBO's gradient over them, and writes the next
ones through a gate (Marino et al.'s gated update). It is trained with the VAE frozen, each step to raise the
ELBO of its own output, and is added to the model's version directory as the function `learned_refine_step`
(same inputs and outputs as the gradient `refine_step`), which the service runs for `refine: "learned"`.

    .venv/bin/python -m training.iterative train models/vae/1      # adds learned_refine_step to the model
    .venv/bin/python -m training.iterative compare models/vae/1    # the ELBO gained per step, against gradients

The VAE is rebuilt from the exported ONNX weights (its run directory is not kept), and checked against them.
"""

import argparse
import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from tqdm import tqdm

from training.data import load
from training.export import export_function, git_commit, sha256
from training.families.vae import REFINE_SAMPLES, VAE, VAEConfig, elbo_gradients

FUNCTION = "learned_refine_step"
EVAL_SAMPLES = 32  # Monte Carlo samples of each test ELBO in `compare` (the same draws for every rule)


@dataclass
class RefinerConfig:
    hidden: int = 256
    steps: int = 5  # refinement steps unrolled per training batch
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    samples: int = REFINE_SAMPLES  # Monte Carlo samples in each step's gradient (the served eps)
    loss_samples: int = 1  # Monte Carlo samples in each step's training ELBO
    init_step: float = 0.03  # the gradient step size the update starts from
    seed: int = 0
    train_images: int = 0  # the first this many training images (0: all; tiny configs for tests)


def load_vae(model_dir: Path) -> VAE:
    """The exported VAE as a torch module: its config from the manifest, its weights from the ONNX files."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    model = VAE(VAEConfig(**manifest["provenance"]["config"]["model"]))
    state = {}
    for function in ("encode", "decode"):
        for tensor in onnx.load(str(model_dir / f"{function}.onnx")).graph.initializer:
            if tensor.name.startswith("model."):
                state[tensor.name.removeprefix("model.")] = torch.from_numpy(numpy_helper.to_array(tensor).copy())
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {"steps"}:  # steps: the training counter (KL warm-up)
        raise ValueError(f"{model_dir}: the ONNX weights do not match the VAE config: {result}")
    return model.eval().requires_grad_(False)


def squash(g: torch.Tensor) -> torch.Tensor:
    """sign(g) log(1 + |g|): gradients span orders of magnitude; the network sees them on a log scale."""
    return torch.sign(g) * torch.log1p(g.abs())


class UpdateNet(nn.Module):
    """(mean, log std, their ELBO gradients) [B, D] each -> the next (mean, log std), each a gated mix of the
    current value and a proposal: g * now + (1 - g) * (now + delta), where delta is a learned per-dimension step
    along the gradient plus the network's correction. It starts as gradient ascent at step size `init_step`
    (gates half open, no correction), so training begins from the baseline it has to beat."""

    def __init__(self, latent: int, hidden: int, init_step: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4 * latent, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                                 nn.Linear(hidden, 4 * latent))
        self.log_step = nn.Parameter(torch.full((2 * latent,), math.log(2 * init_step)))  # [2D]: mean, log std
        with torch.no_grad():
            self.net[-1].weight.zero_()
            self.net[-1].bias.zero_()  # sigmoid(0) = 1/2: the gates start half open

    def forward(self, mean, log_std, grad_mean, grad_log_std):
        grad = torch.cat([grad_mean, grad_log_std], dim=1)  # [B, 2D]
        out = self.net(torch.cat([mean, log_std, squash(grad)], dim=1))
        delta, gate = out.chunk(2, dim=1)  # [B, 2D] each
        step = (1 - torch.sigmoid(gate)) * (self.log_step.exp() * grad + delta)
        step_mean, step_log_std = step.chunk(2, dim=1)
        return mean + step_mean, log_std + step_log_std


class LearnedRefineStep(nn.Module):
    """x, mean [B, D], std [B, D], eps [B, S, D] -> the next (mean, std): the update network applied to the
    Monte Carlo ELBO gradient of the frozen VAE (the same signature as the gradient refine_step)."""

    def __init__(self, model: VAE, update: UpdateNet):
        super().__init__()
        self.model, self.update = model, update

    def forward(self, x, mean, std, eps):
        grad_mean, grad_log_std = elbo_gradients(self.model, x, mean, std, eps)
        next_mean, next_log_std = self.update(mean, torch.log(std), grad_mean, grad_log_std)
        return next_mean, torch.exp(next_log_std)


def elbo(model: VAE, x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The Monte Carlo ELBO per input, [B], with the KL in closed form: eps [B, S, D] reparameterizes q."""
    b, s, d = eps.shape
    z = (mean.unsqueeze(1) + log_std.exp().unsqueeze(1) * eps).reshape(b * s, d)
    xs = x.repeat_interleave(s, dim=0)
    log_px = model.log_likelihood(xs, z).view(b, s).mean(1)
    kl = 0.5 * (mean.square() + (2 * log_std).exp() - 2 * log_std - 1).sum(1)
    return log_px - kl


def train(model: VAE, config: RefinerConfig) -> UpdateNet:
    """Each of `steps` unrolled steps is trained to raise the ELBO of its own output (its input detached)."""
    torch.manual_seed(config.seed)
    x_train = torch.from_numpy(load("mnist5k-binarized").x_train.astype(np.int64))
    x_train = x_train[: config.train_images or len(x_train)]
    update = UpdateNet(model.config.latent, config.hidden, config.init_step)
    step = LearnedRefineStep(model, update)
    optimizer = torch.optim.Adam(update.parameters(), lr=config.lr)
    d, batches = model.config.latent, math.ceil(len(x_train) / config.batch_size)
    for epoch in range(config.epochs):
        order, total = torch.randperm(len(x_train)), 0.0
        for i in tqdm(range(batches), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False):
            x = x_train[order[i * config.batch_size: (i + 1) * config.batch_size]]
            mean, std = model.encode(x)
            loss = 0.0
            for _ in range(config.steps):
                next_mean, next_std = step(x, mean.detach(), std.detach(), torch.randn(len(x), config.samples, d))
                loss_eps = torch.randn(len(x), config.loss_samples, d)
                loss = loss - elbo(model, x, next_mean, next_std.log(), loss_eps).mean()
                mean, std = next_mean, next_std
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() / config.steps
        print(f"epoch {epoch + 1}: -ELBO per step {total / batches:.2f} nats", file=sys.stderr)
    return update.eval()


def add_to_model(model_dir: Path, model: VAE, update: UpdateNet, config: RefinerConfig, command: str) -> None:
    """Export learned_refine_step (ONNX and TorchScript) into the version directory and name it in the manifest:
    a function, its files' sha256, encode.refine.updates.learned, and how it was trained."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    b, d = 2, model.config.latent
    inputs = {"x": torch.zeros(b, 1, 28, 28, dtype=torch.long), "mean": torch.zeros(b, d), "std": torch.ones(b, d),
              "eps": torch.randn(b, config.samples, d)}
    entry = export_function(model_dir, FUNCTION, LearnedRefineStep(model, update), inputs, ["next_mean", "next_std"])
    manifest["functions"][FUNCTION] = entry
    for filename in entry["files"].values():
        manifest["files"][filename] = sha256(model_dir / filename)
    refine = manifest["capabilities"]["encode"]["refine"]
    refine["updates"] = {"learned": {"function": FUNCTION, "noise": refine["noise"]}}
    manifest["provenance"]["learned_refine"] = {"command": command, "config": asdict(config),
                                                "git_commit": git_commit(),
                                                "trained_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def gradient_step(model: VAE, lr: float):
    """Gradient ascent on (mean, log std) with step size lr: the served refine_step at another step size."""

    def step(x, mean, std, eps):
        grad_mean, grad_log_std = elbo_gradients(model, x, mean, std, eps)
        return mean + lr * grad_mean, std * torch.exp(lr * grad_log_std)

    return step


def refine_curve(model: VAE, x: torch.Tensor, step, at: list[int], eval_eps: torch.Tensor) -> dict[int, float]:
    """Mean ELBO (eval_eps [B, S, D]) after each step count in `at` (0: the amortized encoder's) of `step`."""
    generator = torch.Generator().manual_seed(1)
    mean, std = model.encode(x)
    curve = {}
    for t in range(max(at) + 1):
        if t in at:
            curve[t] = elbo(model, x, mean, std.log(), eval_eps).mean().item()
        if t < max(at):
            eps = torch.randn(len(x), REFINE_SAMPLES, model.config.latent, generator=generator)
            mean, std = step(x, mean, std, eps)
    return curve


def compare(model: VAE, learned, images: int, lrs: list[float], steps: list[int],
            figure: Path | None = None) -> str:
    """A markdown table: the ELBO gained over the amortized encoder after each step count, the learned step
    against gradient ascent at the best fixed step size (chosen per step count from `lrs`: the baseline's
    favour). figure: also plot the gain after every step count up to the largest, for the learned step and
    each step size chosen in the table."""
    x = torch.from_numpy(load("mnist5k-binarized").x_test[:images].astype(np.int64))
    eval_eps = torch.randn(len(x), EVAL_SAMPLES, model.config.latent, generator=torch.Generator().manual_seed(2))
    at = list(range(max(steps) + 1)) if figure else [0, *steps]
    with torch.no_grad():
        ours = refine_curve(model, x, learned, at, eval_eps)
        gradient = {lr: refine_curve(model, x, gradient_step(model, lr), at, eval_eps) for lr in lrs}
        best_long = max(lrs, key=lambda lr: gradient[lr][max(steps)])
        optimum = refine_curve(model, x, gradient_step(model, best_long), [0, 200], eval_eps)[200]
    best = {t: max(lrs, key=lambda lr: gradient[lr][t]) for t in steps}
    rows = ["| steps | learned: ELBO gain (nats) | gradient, best fixed step size: gain (nats) | that step size |",
            "|---|---|---|---|"]
    for t in steps:
        lr = best[t]
        rows.append(f"| {t} | {ours[t] - ours[0]:+.2f} | {gradient[lr][t] - gradient[lr][0]:+.2f} | {lr:g} |")
    if figure:
        chosen = sorted(set(best.values()))
        save_refine_curves({"learned": ours, **{f"gradient, step {lr:g}": gradient[lr] for lr in chosen}}, figure)
    rows.append(f"\nAmortized encoder: test ELBO {ours[0]:.2f} nats ({images} test images, {EVAL_SAMPLES} samples "
                "each); "
                f"200 gradient steps of size {best_long:g} reach {optimum:.2f}: an amortization gap of at least "
                f"{optimum - ours[0]:.2f} nats.")
    return "\n".join(rows)


def save_refine_curves(curves: dict[str, dict[int, float]], path: Path) -> None:
    """curves: label -> {steps: mean ELBO} -> a PNG of the ELBO gained over step 0 against the steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for label, curve in curves.items():
        steps = sorted(curve)
        ax.plot(steps, [curve[t] - curve[0] for t in steps], marker="o", label=label)
    ax.set_xlabel("refinement steps")
    ax.set_ylabel("ELBO gained over the encoder (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["train", "compare"])
    parser.add_argument("model_dir", type=Path, help="a VAE version directory, e.g. models/vae/1")
    parser.add_argument("--epochs", type=int, default=RefinerConfig.epochs)
    parser.add_argument("--loss-samples", type=int, default=RefinerConfig.loss_samples,
                        help="train: Monte Carlo samples in each step's training ELBO")
    parser.add_argument("--images", type=int, default=200, help="compare: test images")
    parser.add_argument("--figure", type=Path, help="compare: also plot the ELBO gain at every step count (PNG)")
    args = parser.parse_args(argv)
    model = load_vae(args.model_dir)
    if args.action == "train":
        config = RefinerConfig(epochs=args.epochs, loss_samples=args.loss_samples)
        command = "python -m training.iterative " + shlex.join(sys.argv[1:] if argv is None else argv)
        add_to_model(args.model_dir, model, train(model, config), config, command)
        print(f"added {FUNCTION} to {args.model_dir}")
        return
    learned = torch.jit.load(str(args.model_dir / f"{FUNCTION}.pt"))  # the exported function, as served
    print(compare(model, learned, args.images, [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1], [1, 2, 5, 10], args.figure))


if __name__ == "__main__":
    main()
