"""genserve's RealNVP beside a peer library's, normflows (Stimper et al. 2023), trained and scored on the same data.

Both models are trained here, in one run, from seed 0, for the same --steps (default 2130: the shipped config's
30 epochs x 71 batches) on the same batches of 64 mnist5k training images in the same order as training/train.py
(a permutation per epoch from numpy's seed 0 + epoch), each with Adam at its own learning rate decayed by the
config's lr_decay (0.98) per epoch of 71 steps, under one torch thread:

- genserve: training.families.flow.build on training/configs/realnvp.json's model (3 x 3 convolutional affine
  couplings, checkerboard and channel masks, a squeeze, ActNorm), Adam at the config's lr, 2e-4;
- normflows: the RealNVP of its examples on the flattened 784-vector: --peer-layers x (MaskedAffineFlow with
  alternating checkerboard masks, then ActNorm), each coupling's scale and shift a one-hidden-layer nets.MLP of
  width --peer-hidden (zero-initialised last layer; the log scale 2 tanh(.), bounded like ours, scale_bound 2),
  DiagGaussian base; Adam at --peer-lr, 1e-3 by default (Adam's usual default: normflows fixes none). The
  defaults give a parameter count close to ours; both counts are printed. Its ActNorm initialises itself on the
  first batch (per dimension), so its loss jumps for a few dozen steps on batches with ink where that batch had
  none, then recovers (at 5e-4 the test bound came out the same in a trial).

Same preprocessing for both, from training/families/flow.py: y = (x + u) / 256, v = logit(0.05 + 0.9 y), and
the same dequantization draw u for both at every step (a torch generator from seed 0 per model). Each model gives
log p_v(v); log p(x) >= log p_v(v) + log|dv/dy| - 784 log 256, with log|dv/dy| from flow.py's `preprocess` for
both. Reported on the 500 test images: the bound as in flow.py's `evaluate_test` (one uniform draw per image from
a generator seeded 0, batches of 100), in nats and bits/dim (nats / (784 ln 2)), and scoring throughput: images/s
of log p(x) (preprocessing included) on a batch of 100 test images, eager, torch.no_grad, one thread, median of
--repeats after one warm-up call.

normflows is not a genserve dependency: install it by hand for this benchmark, `.venv/bin/pip install normflows`
(1.7.3 needs only torch and numpy, which the venv has). Run from the repository root:

    .venv/bin/python benchmarks/flow_peer.py [--steps 2130] [--json benchmarks/results/flow_peer.json]
    .venv/bin/python benchmarks/flow_peer.py --steps 20         # a quick look (under a minute)
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.data import load
from training.families import flow

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "realnvp.json"


def peer_realnvp(layers: int, hidden: int, scale_bound: float):
    """normflows' example RealNVP on 784-vectors: MaskedAffineFlow with alternating checkerboard masks + ActNorm."""
    import normflows as nf

    rows, cols = torch.meshgrid(torch.arange(flow.SIDE), torch.arange(flow.SIDE), indexing="ij")
    mask = ((rows + cols) % 2).flatten().float()
    steps = []
    for k in range(layers):
        s = nf.nets.MLP([flow.D, hidden, flow.D], init_zeros=True, output_fn="tanh", output_scale=scale_bound)
        t = nf.nets.MLP([flow.D, hidden, flow.D], init_zeros=True)
        steps += [nf.flows.MaskedAffineFlow(mask if k % 2 == 0 else 1 - mask, t, s), nf.flows.ActNorm(flow.D)]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(flow.D, trainable=False), steps)


def scorers(ours: flow.DensityFlow, peer) -> dict:
    """name -> (model, log p(x) in nats [B] from x [B, 1, 28, 28] levels and u [B, 1, 28, 28] uniform)."""

    def peer_log_prob(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        v, log_jac = ours.preprocess(x, u)  # the same logit transform and its log|dv/dy|, as the same code
        return peer.log_prob(v.flatten(1)) + log_jac - flow.D * math.log(flow.LEVELS)

    return {"genserve": (ours, ours.log_prob), "normflows": (peer, peer_log_prob)}


def train(name: str, model, log_prob, split, lr: float, settings: dict, steps: int) -> dict:
    torch.manual_seed(settings["seed"])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    noise = torch.Generator().manual_seed(settings["seed"])
    batch_size, n = settings["batch_size"], len(split.x_train)
    per_epoch = math.ceil(n / batch_size)
    model.train()
    losses, start = [], time.perf_counter()
    bar = tqdm(range(steps), desc=f"train {name}", file=sys.stderr)
    for step in bar:
        epoch, i = divmod(step, per_epoch)
        if i == 0:
            order = np.random.default_rng(settings["seed"] + epoch).permutation(n)
            for group in optimizer.param_groups:
                group["lr"] = lr * settings.get("lr_decay", 1.0) ** epoch
        x = torch.from_numpy(split.x_train[order[i * batch_size: (i + 1) * batch_size]]).long()
        loss = -log_prob(x, torch.rand(x.shape, generator=noise)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(nll=f"{loss.item():.1f}")
    model.eval()
    last = statistics.fmean(losses[-per_epoch:]) if losses else math.nan  # the last epoch's mean training loss
    return {"train_s": time.perf_counter() - start, "final_train_nll_nats": last,
            "nonfinite_losses": sum(not math.isfinite(v) for v in losses)}


@torch.no_grad()
def test_nll(log_prob, split, batch_size: int = 100) -> torch.Tensor:
    """-log p(x) per test image, one u per image from a generator seeded 0: flow.evaluate_test's draws."""
    generator, nll = torch.Generator().manual_seed(0), []
    for i in range(0, len(split.x_test), batch_size):
        x = torch.from_numpy(split.x_test[i: i + batch_size]).long()
        nll.append(-log_prob(x, torch.rand(x.shape, generator=generator)).double())
    return torch.cat(nll)


@torch.no_grad()
def throughput(log_prob, split, batch: int, repeats: int) -> list[float]:
    x = torch.from_numpy(split.x_test[:batch]).long()
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    log_prob(x, u)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        log_prob(x, u)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2130, help="training steps for each model (config: 30 x 71)")
    parser.add_argument("--peer-layers", type=int, default=4)
    parser.add_argument("--peer-hidden", type=int, default=6)
    parser.add_argument("--peer-lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=100, help="images per scoring call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        import normflows
    except ImportError:
        sys.exit("normflows is not installed: .venv/bin/pip install normflows")
    config = json.loads(CONFIG.read_text())
    settings, split = config["train"], load(config["dataset"])
    torch.manual_seed(settings["seed"])
    ours = flow.build(config["model"], split)
    torch.manual_seed(settings["seed"])
    peer = peer_realnvp(args.peer_layers, args.peer_hidden, config["model"].get("scale_bound", 2.0))
    lrs = {"genserve": settings["lr"], "normflows": args.peer_lr}
    m = config["model"]
    labels = {"genserve": f"genserve RealNVP (conv, 3 x {m['layers']} couplings, {m['hidden']} channels)",
              "normflows": f"normflows {normflows.__version__} RealNVP (MLP, {args.peer_layers} couplings, "
                           f"width {args.peer_hidden})"}
    results = {}
    for name, (model, log_prob) in scorers(ours, peer).items():
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params} parameters", file=sys.stderr)
        row = {"model": labels[name], "parameters": params, "lr": lrs[name], "steps": args.steps}
        row.update(train(name, model, log_prob, split, lrs[name], settings, args.steps))
        nll = test_nll(log_prob, split)
        row.update(test_nll_nats=nll.mean().item(), test_nll_stderr=(nll.std() / math.sqrt(len(nll))).item(),
                   bits_per_dim=nll.mean().item() / (flow.D * math.log(2)))
        times = throughput(log_prob, split, args.batch, args.repeats)
        row.update(score_times_s=times, images_per_s=args.batch / statistics.median(times))
        results[name] = row
    if args.steps > 0:  # our scorer is flow.evaluate_test's computation: check it gives the same number
        check = float(np.mean(flow.evaluate_test(ours, split)["test_nll_per_example"]))
        results["genserve"]["evaluate_test_nll_nats"] = check

    print("| model | parameters | Adam lr | steps | train (s) | test NLL (nats) | ± stderr | bits/dim | "
          f"score images/s (batch {args.batch}) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in results.values():
        print(f"| {row['model']} | {row['parameters']:,} | {row['lr']:g} | {row['steps']} | {row['train_s']:.0f} | "
              f"{row['test_nll_nats']:.2f} | {row['test_nll_stderr']:.2f} | {row['bits_per_dim']:.4f} | "
              f"{row['images_per_s']:.0f} |")
    ratio = results["genserve"]["parameters"] / results["normflows"]["parameters"]
    print(f"\nparameters genserve / normflows: {ratio:.2f}. Same batches (64), same dequantization draws, same logit "
          f"preprocessing and Jacobian; lr decayed x{settings.get('lr_decay', 1.0)} per epoch of "
          f"{math.ceil(len(split.x_train) / settings['batch_size'])} steps. Test bound: one uniform draw per image, "
          f"seed 0, {len(split.x_test)} images. Scoring: eager, one thread, median of {args.repeats}.")
    if "evaluate_test_nll_nats" in results["genserve"]:
        print(f"genserve via flow.evaluate_test: {results['genserve']['evaluate_test_nll_nats']:.2f} nats")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"torch": torch.__version__, "normflows": normflows.__version__,
                                         "threads": torch.get_num_threads(), "config": config,
                                         "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
