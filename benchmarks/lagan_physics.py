"""Jet physics of generated jet images against the simulator: the served LAGAN and its DCGAN baseline.

Samples --n jets of each class from the served model (models/lagan, through the engine in-process, the class as
the sample control "class", seed = the class index) and from the baseline's training run (eager, the same
generator code; the served path equals it up to rounding ties, tests/training/test_lagan.py), and --n fresh
simulated jets of each class (seed 2, pT in GeV before the store's level rounding). Prints, per class, the 1-D
Wasserstein distance (scipy) of jet mass, pT (GeV) and tau21 between each and the simulated jets, beside the floor:
another --n simulated jets (seed 3), rounded to the store's levels as the training data are. Writes a histogram
figure (--figure) and optionally JSON.

    .venv/bin/python benchmarks/lagan_physics.py --baseline runs/lagan-dcgan --figure docs/lagan-physics.png
"""

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np
import torch

from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore
from training.data import jets
from training.families import lagan
from training.train import load_model

QUANTITIES = {"mass": ("jet mass (GeV)", (0, 160)), "pt": ("jet pT (GeV)", (150, 350)), "tau21": ("tau21", (0, 1))}


def served_samples(models: Path, name: str, n: int, runtime: str) -> dict[str, np.ndarray]:
    """n levels [n, 1, 25, 25] per class from the served model, seed = the class index."""
    store = ModelStore(models)
    store.entries = {name: store.entries[name]}
    engine = Engine(store, Settings(runtime=runtime, intra_op_threads=1, models=models))

    async def run():
        return {c: await engine.sample(name, n, label, 1.0, None, controls={"class": label})
                for label, c in enumerate(jets.CLASSES)}

    return asyncio.run(run())


def eager_samples(run_dir: Path, n: int) -> dict[str, np.ndarray]:
    """n levels per class from a training run's generator, seed = the class index."""
    model = load_model(run_dir)[0]
    return {c: lagan.generate(model, torch.full((n,), label), torch.Generator().manual_seed(label)).numpy()
            for label, c in enumerate(jets.CLASSES)}


def figure(observed: dict[str, dict[str, dict[str, np.ndarray]]], images: dict[str, dict[str, np.ndarray]],
           path: Path) -> None:
    """One row per class: a column per quantity (the simulated histogram filled, the models' as lines), then each
    source's average image, log10 of the mean pixel pT in GeV on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(jets.CLASSES), len(QUANTITIES) + len(images), figsize=(19, 6.5), dpi=100,
                             layout="constrained")
    for row, c in enumerate(jets.CLASSES):
        for col, (q, (label, span)) in enumerate(QUANTITIES.items()):
            ax, bins = axes[row, col], np.linspace(*span, 41)
            for source, values in observed.items():
                style = {"histtype": "stepfilled", "alpha": 0.3, "color": "gray"} if source == "simulated" \
                    else {"histtype": "step", "linewidth": 1.5}
                ax.hist(np.clip(values[c][q], *span), bins=bins, density=True, label=source, **style)
            ax.set_xlabel(label)
            ax.set_title(f"{c.upper()} jets", fontsize=10)
        for col, (source, per_class) in enumerate(images.items(), start=len(QUANTITIES)):
            shown = axes[row, col].imshow(np.log10(per_class[c].reshape(-1, 25, 25).mean(0) + 1e-3), vmin=-3,
                                          vmax=2, cmap="viridis")
            axes[row, col].set_title(f"{c.upper()} mean image: {source.split()[0]}", fontsize=10)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    fig.colorbar(shown, ax=axes[:, len(QUANTITIES):], label="log10 mean pixel pT (GeV)", shrink=0.8)
    axes[0, 0].legend(fontsize=8)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--name", default="lagan")
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "torchscript"])
    parser.add_argument("--baseline", type=Path, default=Path("runs/lagan-dcgan"), help="the DCGAN's training run")
    parser.add_argument("--n", type=int, default=2000, help="jets per class from each source")
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    levels = {"LAGAN (served)": served_samples(args.models, args.name, args.n, args.runtime),
              "DCGAN baseline": eager_samples(args.baseline, args.n),
              "floor: simulator, levels": {c: jets.to_levels(jets.simulate(args.n, label, seed=3))
                                           for label, c in enumerate(jets.CLASSES)}}
    images = {source: {c: jets.to_pt(x) for c, x in per_class.items()} for source, per_class in levels.items()}
    simulated = {c: jets.simulate(args.n, label, seed=2) for label, c in enumerate(jets.CLASSES)}
    rows, results = [], {}
    for source, per_class in images.items():
        results[source] = {c: jets.wasserstein(per_class[c], simulated[c]) for c in jets.CLASSES}
        rows.append(f"| {source} | " + " | ".join(f"{results[source][c][q]:.3g}" for c in jets.CLASSES
                                                   for q in QUANTITIES) + " |")
    header = " | ".join(f"{c} {q}" for c in jets.CLASSES for q in QUANTITIES)
    print(f"1-D Wasserstein distance to {args.n} simulated jets per class (mass and pT in GeV):\n")
    print(f"| source | {header} |\n|---|" + "---|" * (len(jets.CLASSES) * len(QUANTITIES)))
    print("\n".join(rows))
    if args.figure:
        observed = {"simulated": {c: jets.observables(x) for c, x in simulated.items()}}
        observed |= {source: {c: jets.observables(x) for c, x in images[source].items()}
                     for source in ("LAGAN (served)", "DCGAN baseline")}
        shown = {"simulated": simulated} | {s: images[s] for s in ("LAGAN (served)", "DCGAN baseline")}
        figure(observed, shown, args.figure)
        print(f"\nfigure: {args.figure}")
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "wasserstein": results}, indent=2))


if __name__ == "__main__":
    main()
