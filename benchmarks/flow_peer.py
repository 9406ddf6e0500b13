"""genserve's flows beside a peer library's, normflows (Stimper et al. 2023), trained and scored on the same data.

Three pairs (--pair realnvp|maf|glow|both|all; both: realnvp and maf), each trained here, in one run, from seed 0,
for the same --steps (default: the config's epochs x 71 batches, 2130 for realnvp.json, 2840 for maf.json) on the
same batches of 64 mnist5k training
images in the same order as training/train.py (a permutation per epoch from numpy's seed 0 + epoch), each with
Adam at its own learning rate decayed by the config's lr_decay (0.98) per epoch of 71 steps, under one torch thread:

- realnvp: genserve's training/configs/realnvp.json model (3 x 3 convolutional affine couplings, checkerboard and
  channel masks, a squeeze, ActNorm), Adam at 2e-4, beside normflows' example RealNVP on the flattened 784-vector:
  --peer-layers x (MaskedAffineFlow with alternating checkerboard masks, then ActNorm), each coupling's scale and
  shift a one-hidden-layer nets.MLP of width --peer-hidden (zero-initialised last layer, log scale 2 tanh(.)).
- maf: genserve's training/configs/maf.json model (3 MaskedAffine layers, each a MADE with one ELU hidden layer of
  256, log scale bounded by 3, random permutations between), Adam at 1e-3, beside normflows' MAF: 3 x
  (MaskedAffineAutoregressive: a MADE of --peer-maf-blocks residual blocks of width --peer-maf-hidden, ReLU),
  Permute("shuffle") between, each layer followed by an ActNorm (--no-peer-maf-actnorm drops them). normflows
  scores through each layer's `inverse`, for MaskedAffineAutoregressive its D-pass direction (an IAF, for
  density): each layer is wrapped in nf.flows.Reverse so that scoring is the one pass, as in a MAF. Its scale,
  sigmoid(.) + 1e-3 (nflows'), can only contract in the scoring direction: the ActNorms let it expand the
  near-constant background. In a 400-step trial the ActNorms were worth 1.9 bits/dim to the peer, and 1 block x
  216 (the default) beat the library's default 2 blocks (x 192 at this parameter count) by 0.08 bits/dim.
- glow: genserve's realnvp.json model beside a convolutional multiscale peer, normflows' own Glow example (its
  README's MultiscaleFlow) adapted to 1 x 28 x 28: --peer-glow-levels 2 levels of --peer-glow-blocks 4 GlowBlocks
  (affine coupling over channel halves with a 3-1-3 ConvNet of --peer-glow-hidden 68 channels, an LU-parametrised
  invertible 1x1 convolution, ActNorm), a Squeeze per level, and half the dimensions factored out after the first
  level (8 x 7 x 7 and 2 x 14 x 14 latents, a DiagGaussian base each): 84,544 parameters, ours 84,784. One peer per
  --peer-glow-scale-maps entry, all trained on the same batches beside the one genserve model: `sigmoid`
  (GlowBlock's default, Glow's) and `exp` (RealNVP's, as ours).
The peers use a DiagGaussian base and Adam at --peer-lr (1e-3, Adam's usual default: normflows fixes none); the
defaults give parameter counts close to ours, both printed. normflows' ActNorm initialises on the first batch.

Same preprocessing for both, from training/families/flow.py: y = (x + u) / 256, v = logit(0.05 + 0.9 y), the same
dequantization draw u for both at every step (a torch generator from seed 0 per model), and the same bound:
log p(x) >= log p_v(v) + log|dv/dy| - 784 log 256, log|dv/dy| from flow.py's `preprocess`. Reported on the 500
test images: the bound as in flow.py's `evaluate_test` (one uniform draw per image, generator seeded 0, batches of
100), in nats and bits/dim (nats / (784 ln 2)). Scoring throughput, images/s of log p(x) (preprocessing included)
on one batch of 100 test images, one thread, median of --repeats after warm-up, all runtimes of a pair timed
interleaved (call by call) so that the machine's load falls on both sides alike:
- eager: PyTorch under torch.no_grad (what normflows offers);
- onnx: the module exported by training.export.export_function, as `genserve export` does (masks folded, then
  flow.exported_functions' LogProb with inputs x and noise), run by onnxruntime's CPU provider with one intra-op
  and one inter-op thread: what a genserve user gets. The peer's scorer goes through the same exporter, for
  reference;
- torchscript: the same export's frozen TorchScript trace (genserve's other runtime; torch.jit.trace for the peer).
The peer's traces hold its batch size (normflows' log_prob allocates torch.zeros(len(x))), so it is exported at
the timed batch of 100; genserve's, with a dynamic batch axis, as served.
A runtime that fails to export is left out and its error recorded. The headline ratio is genserve served (onnx)
over normflows eager.

normflows is not a genserve dependency: install it by hand, `.venv/bin/pip install normflows` (1.7.3 needs only
torch and numpy). Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flow_peer.py --json benchmarks/results/flow_peer.json \\
        --md benchmarks/results/flow_peer.md
    .venv/bin/python benchmarks/flow_peer.py --steps 20         # a quick look (a minute or two)
"""

import argparse
import copy
import datetime
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.data import load
from training.export import export_function
from training.families import flow
from training.nn.flows import fold_masks

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def peer_realnvp(args, model_config: dict):
    """normflows' example RealNVP on 784-vectors: MaskedAffineFlow with alternating checkerboard masks + ActNorm."""
    import normflows as nf

    rows, cols = torch.meshgrid(torch.arange(flow.SIDE), torch.arange(flow.SIDE), indexing="ij")
    mask = ((rows + cols) % 2).flatten().float()
    bound, steps = model_config.get("scale_bound", 2.0), []
    for k in range(args.peer_layers):
        s = nf.nets.MLP([flow.D, args.peer_hidden, flow.D], init_zeros=True, output_fn="tanh", output_scale=bound)
        t = nf.nets.MLP([flow.D, args.peer_hidden, flow.D], init_zeros=True)
        steps += [nf.flows.MaskedAffineFlow(mask if k % 2 == 0 else 1 - mask, t, s), nf.flows.ActNorm(flow.D)]
    label = f"RealNVP (MLP, {args.peer_layers} couplings, width {args.peer_hidden})"
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(flow.D, trainable=False), steps), label


def peer_maf(args, model_config: dict):
    """normflows' MAF on 784-vectors, listed data to noise: (Reverse(MaskedAffineAutoregressive), ActNorm) per
    layer, Permute between; normflows lists flows noise to data, hence the reversal."""
    import normflows as nf

    steps = []
    for k in range(model_config["layers"]):
        if k > 0:
            steps.append(nf.flows.Permute(flow.D, mode="shuffle"))
        steps.append(nf.flows.Reverse(nf.flows.MaskedAffineAutoregressive(
            flow.D, args.peer_maf_hidden, num_blocks=args.peer_maf_blocks)))
        if args.peer_maf_actnorm:
            steps.append(nf.flows.ActNorm(flow.D))
    label = (f"MAF ({model_config['layers']} MaskedAffineAutoregressive, {args.peer_maf_blocks} residual block"
             f"{'s' * (args.peer_maf_blocks != 1)} x "
             f"{args.peer_maf_hidden}, ReLU, Permute{', ActNorm' if args.peer_maf_actnorm else ''})")
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(flow.D, trainable=False), steps[::-1]), label


class Unflattened(nn.Module):
    """A peer on [B, 1, 28, 28] behind the flat log_prob(v [B, 784]) that PeerLogProb calls."""

    def __init__(self, peer):
        super().__init__()
        self.peer = peer

    def log_prob(self, v):
        return self.peer.log_prob(v.view(-1, 1, flow.SIDE, flow.SIDE), None)


def peer_glow(args, scale_map: str):
    """normflows' Glow example on 1 x 28 x 28: per level (coarsest first, as MultiscaleFlow lists them) GlowBlocks
    over 2 ** (levels + 1 - i) channels, then a Squeeze; a Merge joins each finer level's factored-out half."""
    import normflows as nf

    levels, q0, merges, flows = args.peer_glow_levels, [], [], []
    for i in range(levels):
        flows.append([nf.flows.GlowBlock(2 ** (levels + 1 - i), args.peer_glow_hidden, scale=True,
                                         scale_map=scale_map, split_mode="channel")
                      for _ in range(args.peer_glow_blocks)] + [nf.flows.Squeeze()])
        side = flow.SIDE // 2 ** (levels - i) if i > 0 else flow.SIDE // 2 ** levels
        q0.append(nf.distributions.DiagGaussian((2 ** (levels - i) if i > 0 else 2 ** (levels + 1), side, side)))
        if i > 0:
            merges.append(nf.flows.Merge())
    label = (f"Glow (multiscale: {levels} levels x {args.peer_glow_blocks} GlowBlocks, {args.peer_glow_hidden} "
             f"hidden channels, scale_map {scale_map})")
    return Unflattened(nf.MultiscaleFlow(q0, flows, merges, class_cond=False)), label


def ours_label(m: dict) -> str:
    if m["kind"] == "realnvp":
        return f"RealNVP (conv, 3 x {m['layers']} couplings, {m['hidden']} channels)"
    return f"MAF ({m['layers']} MADE layers, {m.get('depth', 2)} x {m['hidden']} hidden, ELU, random permutations)"


def realnvp_peers(args, model_config: dict) -> dict:
    return {"normflows": peer_realnvp(args, model_config)}


def maf_peers(args, model_config: dict) -> dict:
    return {"normflows": peer_maf(args, model_config)}


def glow_peers(args, model_config: dict) -> dict:
    """One Glow per scale map: `normflows` for the first, `normflows <map>` for the others."""
    return {"normflows" + (f" {m}" if i else ""): peer_glow(args, m) for i, m in enumerate(args.peer_glow_scale_maps)}


PAIRS = {"realnvp": ("realnvp.json", realnvp_peers), "maf": ("maf.json", maf_peers),
         "glow": ("realnvp.json", glow_peers)}
SETS = {"both": ["realnvp", "maf"], "all": list(PAIRS)}


class PeerLogProb(nn.Module):
    """log p(x) in nats [B] from x [B, 1, 28, 28] levels and noise u: flow.py's preprocessing and its log|dv/dy|,
    as the same code, around the peer's log p_v(v) on the flattened v."""

    def __init__(self, peer, preprocess):
        super().__init__()
        self.peer, self.preprocess = peer, preprocess  # preprocess: a bound method using no parameters

    def forward(self, x, noise):
        v, log_jac = self.preprocess(x, noise)
        return self.peer.log_prob(v.flatten(1)) + log_jac - flow.D * math.log(flow.LEVELS)


def train(name: str, module: nn.Module, split, lr: float, settings: dict, steps: int) -> dict:
    torch.manual_seed(settings["seed"])
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    noise = torch.Generator().manual_seed(settings["seed"])
    batch_size, n = settings["batch_size"], len(split.x_train)
    per_epoch = math.ceil(n / batch_size)
    module.train()
    losses, start = [], time.perf_counter()
    bar = tqdm(range(steps), desc=f"train {name}", file=sys.stderr, mininterval=10)
    for step in bar:
        epoch, i = divmod(step, per_epoch)
        if i == 0:
            order = np.random.default_rng(settings["seed"] + epoch).permutation(n)
            for group in optimizer.param_groups:
                group["lr"] = lr * settings.get("lr_decay", 1.0) ** epoch
        x = torch.from_numpy(split.x_train[order[i * batch_size: (i + 1) * batch_size]]).long()
        loss = -module(x, torch.rand(x.shape, generator=noise)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(nll=f"{loss.item():.1f}", refresh=False)
    module.eval()
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


def exported(module: nn.Module, inputs: dict, out_dir: Path, name: str, x, u) -> tuple[dict, dict, dict]:
    """Export module to out_dir by training.export.export_function; (runtime -> scorer(x, u) -> log p tensor,
    runtime -> max |log p - eager| on (x, u), runtime -> error) for TorchScript and ONNX."""
    import onnxruntime as ort

    def onnx(path: str):
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda x, u: torch.from_numpy(session.run(None, {"x": x.numpy(), "noise": u.numpy()})[0])

    def torchscript(path: str):
        script = torch.jit.load(path).eval()
        return lambda x, u: script(x, u)

    scorers, diffs, errors = {}, {}, {}
    try:
        export_function(out_dir, name, module, inputs, ["log_prob"])
    except Exception as error:  # noqa: BLE001 - a peer may not trace or export: record it, time what works
        return scorers, diffs, {"torchscript": repr(error), "onnx": repr(error)}
    with torch.no_grad():
        reference = module(x, u)
        for runtime, load_scorer, suffix in [("torchscript", torchscript, "pt"), ("onnx", onnx, "onnx")]:
            try:
                scorer = load_scorer(str(out_dir / f"{name}.{suffix}"))
                diffs[runtime] = (scorer(x, u) - reference).abs().max().item()
                scorers[runtime] = scorer
            except Exception as error:  # noqa: BLE001
                errors[runtime] = repr(error).splitlines()[0][:300]
    return scorers, diffs, errors


@torch.no_grad()
def interleaved_times(scorers: dict, x: torch.Tensor, u: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every scorer on (x, u), call by call in turn, after two warm-up calls each."""
    for _ in range(2):
        for scorer in scorers.values():
            scorer(x, u)
    times = {key: [] for key in scorers}
    for _ in range(repeats):
        for key, scorer in scorers.items():
            start = time.perf_counter()
            scorer(x, u)
            times[key].append(time.perf_counter() - start)
    return times


def run_pair(pair: str, args, split_cache: dict) -> dict:
    import normflows

    config_file, build_peers = PAIRS[pair]
    config = json.loads((CONFIGS / config_file).read_text())
    settings = config["train"]
    split = split_cache.setdefault(config["dataset"], load(config["dataset"]))
    per_epoch = math.ceil(len(split.x_train) / settings["batch_size"])
    steps = args.steps if args.steps is not None else settings["epochs"] * per_epoch
    torch.manual_seed(settings["seed"])
    ours = flow.build(config["model"], split)
    torch.manual_seed(settings["seed"])
    peers = build_peers(args, config["model"])
    modules = {"genserve": flow.LogProb(ours),
               **{name: PeerLogProb(peer, ours.preprocess) for name, (peer, _) in peers.items()}}
    labels = {"genserve": f"genserve {ours_label(config['model'])}",
              **{name: f"normflows {normflows.__version__} {label}" for name, (_, label) in peers.items()}}
    lrs = {"genserve": settings["lr"], **{name: args.peer_lr for name in peers}}
    rows = {}
    for name, module in modules.items():
        params = sum(p.numel() for p in module.parameters())
        print(f"{pair} {name}: {params:,} parameters", file=sys.stderr)
        row = {"model": labels[name], "parameters": params, "lr": lrs[name], "steps": steps}
        row.update(train(f"{pair} {name}", module, split, lrs[name], settings, steps))
        nll = test_nll(module, split)
        row.update(test_nll_nats=nll.mean().item(), test_nll_stderr=(nll.std() / math.sqrt(len(nll))).item(),
                   bits_per_dim=nll.mean().item() / (flow.D * math.log(2)))
        rows[name] = row
    if steps > 0:  # our scorer is flow.evaluate_test's computation: check it gives the same number
        rows["genserve"]["evaluate_test_nll_nats"] = float(np.mean(flow.evaluate_test(ours, split)[
            "test_nll_per_example"]))

    served = copy.deepcopy(ours)  # as training/export.py's export(): masks folded, then exported_functions
    fold_masks(served)
    log_prob, inputs, _ = flow.exported_functions(served, split)[0]["log_prob"]
    x = torch.from_numpy(split.x_test[:args.batch]).long()
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    scorers = {}
    with tempfile.TemporaryDirectory() as tmp:
        # the peer's trace holds its batch size: export it at the timed batch (see the module docstring)
        for name, module, example in [("genserve", log_prob, inputs),
                                      *((name, modules[name], {"x": x, "noise": u}) for name in peers)]:
            found, diffs, errors = exported(module, example, Path(tmp), f"{pair}_{name}", x, u)
            rows[name].update(max_abs_diff_vs_eager_nats=diffs, export_errors=errors)
            scorers.update({(name, key): scorer for key, scorer in {"eager": modules[name], **found}.items()})
        times = interleaved_times(scorers, x, u, args.repeats)
    for (name, key), t in times.items():
        rows[name].setdefault("score_times_s", {})[key] = t
        rows[name].setdefault("images_per_s", {})[key] = args.batch / statistics.median(t)
    return {"config": config, "steps": steps, "results": rows,
            "peers": {name: versus(rows["genserve"], rows[name]) for name in peers}}


def versus(ours: dict, peer: dict) -> dict:
    """Speed ratios, bits/dim gap and the goal (no worse bits/dim, served genserve faster than the peer eager)."""
    ratios = {f"genserve {a} / peer {b}": ours["images_per_s"][a] / peer["images_per_s"][b]
              for a, b in [("onnx", "eager"), ("eager", "eager"), ("onnx", "torchscript"), ("onnx", "onnx")]
              if a in ours["images_per_s"] and b in peer["images_per_s"]}
    gap = ours["bits_per_dim"] - peer["bits_per_dim"]
    headline = ratios.get("genserve onnx / peer eager", math.nan)
    return {"speed_ratios": ratios, "goal_met": gap <= 0 < headline - 1, "bits_per_dim_genserve_minus_peer": gap,
            "parameter_ratio": ours["parameters"] / peer["parameters"]}


def report(pairs: dict, args, command: str) -> str:
    fmt = lambda row, key: f"{row['images_per_s'][key]:,.0f}" if key in row["images_per_s"] else "failed"  # noqa
    v = versions()
    lines = [f"Command: `{command}`", "",
             f"torch {v['torch']}, torch threads {torch.get_num_threads()}, OMP_NUM_THREADS="
             f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, onnxruntime {v['onnxruntime']} (CPU, 1 intra-op + 1 "
             f"inter-op thread), normflows {v['normflows']}; {datetime.date.today().isoformat()}. Scoring: batch "
             f"{args.batch} test images, images/s from the median of {args.repeats} calls, runtimes interleaved.", "",
             "| pair | model | parameters | Adam lr | steps | train (s) | test NLL (nats) ± stderr | bits/dim | "
             "eager img/s | TorchScript img/s | ONNX Runtime img/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair, result in pairs.items():
        for row in result["results"].values():
            lines.append(f"| {pair} | {row['model']} | {row['parameters']:,} | {row['lr']:g} | {row['steps']} | "
                         f"{row['train_s']:.0f} | {row['test_nll_nats']:.2f} ± {row['test_nll_stderr']:.2f} | "
                         f"{row['bits_per_dim']:.4f} | {fmt(row, 'eager')} | {fmt(row, 'torchscript')} | "
                         f"{fmt(row, 'onnx')} |")
    lines.append("")
    for pair, result in pairs.items():
        for name, v in result["peers"].items():
            ratios = ", ".join(f"{k} {r:.2f}x" for k, r in v["speed_ratios"].items())
            lines.append(f"- {pair}, peer {name}: parameters genserve / peer {v['parameter_ratio']:.3f}; bits/dim "
                         f"genserve - peer {v['bits_per_dim_genserve_minus_peer']:+.4f}; speed {ratios}. Goal (no "
                         f"worse bits/dim and served genserve faster than the peer eager): "
                         f"{'met' if v['goal_met'] else 'not met'}.")
        for name, row in result["results"].items():
            if row["export_errors"]:
                lines.append(f"  - {name} export failed: {row['export_errors']}")
            diffs = ", ".join(f"{k} {v:.2g}" for k, v in row["max_abs_diff_vs_eager_nats"].items())
            lines.append(f"  - {name}: max |log p - eager| (nats) {diffs or 'n/a'}; final-epoch train NLL "
                         f"{row['final_train_nll_nats']:.2f}; non-finite losses {row['nonfinite_losses']}"
                         + (f"; via flow.evaluate_test {row['evaluate_test_nll_nats']:.2f} nats"
                            if "evaluate_test_nll_nats" in row else ""))
    lines += ["", "Same batches (64), same dequantization draws, same logit preprocessing and Jacobian; lr decayed "
                  "x0.98 per epoch of 71 steps. Test bound: one uniform draw per image, seed 0, 500 images."]
    return "\n".join(lines) + "\n"


def versions() -> dict:
    import normflows
    import onnxruntime

    return {"torch": torch.__version__, "normflows": normflows.__version__, "onnxruntime": onnxruntime.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=[*PAIRS, *SETS], default="both")
    parser.add_argument("--steps", type=int, help="training steps for each model (default: config epochs x 71)")
    parser.add_argument("--peer-lr", type=float, default=1e-3)
    parser.add_argument("--peer-layers", type=int, default=4, help="RealNVP peer: couplings")
    parser.add_argument("--peer-hidden", type=int, default=6, help="RealNVP peer: MLP width")
    parser.add_argument("--peer-maf-hidden", type=int, default=216, help="MAF peer: MADE width")
    parser.add_argument("--peer-maf-blocks", type=int, default=1, help="MAF peer: MADE residual blocks")
    parser.add_argument("--peer-maf-actnorm", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--peer-glow-levels", type=int, default=2, help="Glow peer: levels")
    parser.add_argument("--peer-glow-blocks", type=int, default=4, help="Glow peer: GlowBlocks per level")
    parser.add_argument("--peer-glow-hidden", type=int, default=68, help="Glow peer: coupling ConvNet channels")
    parser.add_argument("--peer-glow-scale-maps", nargs="+", default=["sigmoid", "exp"],
                        help="Glow peer: one peer per GlowBlock scale_map")
    parser.add_argument("--batch", type=int, default=100, help="images per scoring call")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path, help="write the markdown report here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        import normflows  # noqa: F401
    except ImportError:
        sys.exit("normflows is not installed: .venv/bin/pip install normflows")
    command = " ".join([f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] * ("OMP_NUM_THREADS" in os.environ)
                       + [".venv/bin/python", "benchmarks/flow_peer.py", *map(shlex.quote, sys.argv[1:])])
    split_cache: dict = {}
    pairs = {pair: run_pair(pair, args, split_cache)
             for pair in SETS.get(args.pair, [args.pair])}
    text = report(pairs, args, command)
    print(text)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, **versions(), "threads": torch.get_num_threads(),
                                         "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                         "args": {k: str(v) for k, v in vars(args).items()}, "pairs": pairs},
                                        indent=2))


if __name__ == "__main__":
    main()
