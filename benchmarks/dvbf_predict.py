"""DVBF against the VAE + RNN baseline on the pendulum's 200 held-out sequences (training/data/pendulum.py).

For each run: the R^2 of a linear regression (scikit-learn, fitted on 500 training sequences) from its latent per
frame to the true (cos theta, sin theta, omega) on the test sequences (the DVBF's filtered states; the baseline's
per-frame posterior means), and, after 8 observed frames, the 20 predicted frames' error at each horizon: mean
squared error per pixel on 0..1 intensities and Bernoulli cross-entropy per frame (nats). The DVBF's served
prediction (models/dvbf through the engine, onnxruntime) is checked against its eager one. Writes a Markdown table
and JSON to benchmarks/results/dvbf_predict.{md,json} and --figure: true frames over both models' predictions for
three test sequences, and the error against the horizon.

    .venv/bin/python benchmarks/dvbf_predict.py --dvbf runs/dvbf --baseline runs/dvbf-baseline \\
        --figure docs/dvbf-predict.png
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
from training.data.pendulum import pendulum_frames
from training.families import dvbf
from training.train import load_model

OBSERVED, HORIZON, SHOWN = 8, 20, 3
RESULTS = Path(__file__).parent / "results"


def measure(run: Path, split) -> dict:
    model = load_model(run)[0]
    return {"kind": model.config.kind, "parameters": sum(p.numel() for p in model.parameters()),
            **dvbf.state_r2(model, split), **dvbf.prediction_errors(model, split, OBSERVED, HORIZON)}


@torch.no_grad()
def predictions(run: Path, split) -> np.ndarray:
    """The first SHOWN test sequences' predicted frames, levels [SHOWN, HORIZON, 16, 16]."""
    model = load_model(run)[0]
    x = torch.from_numpy(split.x_test[:SHOWN]).long()
    p = model.predict(x[:, :OBSERVED], torch.from_numpy(split.y_test[:SHOWN]), HORIZON)
    return np.round(p.numpy() * 255).reshape(SHOWN, HORIZON, 16, 16)


def served_matches_eager(models: Path, run: Path, split) -> float:
    """The largest difference in levels between the served and the eager DVBF's predicted frames."""
    engine = Engine(ModelStore(models), Settings(runtime="onnx", intra_op_threads=1))
    x, u = split.x_test[:SHOWN], split.y_test[:SHOWN]
    served = asyncio.run(engine.predict("dvbf", x[:, :OBSERVED], u[:, :OBSERVED - 1 + HORIZON]))["frames"]
    return float(np.abs(served[:, :, 0] - predictions(run, split)).max())


def figure(split, dvbf_frames: np.ndarray, baseline_frames: np.ndarray, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for k in range(SHOWN):  # true, DVBF, VAE + RNN, then a gap
        true = split.x_test[k, OBSERVED: OBSERVED + HORIZON, 0]
        rows += [true, dvbf_frames[k], baseline_frames[k], np.full_like(true, 128)]
    grid = np.concatenate([np.concatenate(list(row), 1) for row in rows[:-1]], 0)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7.5), gridspec_kw={"height_ratios": [2.2, 1]})
    top.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    top.set_yticks([16 * i + 8 for i in range(len(rows) - 1) if i % 4 != 3])
    top.set_yticklabels(["true", "DVBF", "VAE + RNN"] * SHOWN)
    top.set_xticks([16 * h + 8 for h in range(0, HORIZON, 2)])
    top.set_xticklabels([str(h + 1) for h in range(0, HORIZON, 2)])
    top.set_title(f"held-out sequences: frames 1..{HORIZON} after {OBSERVED} observed (random torques known)")
    for name, label in (("dvbf", "DVBF"), ("baseline", "VAE + RNN")):
        bottom.plot(range(1, HORIZON + 1), results[name]["mse_per_pixel"], marker="o", label=label)
    bottom.set_xlabel("steps ahead")
    bottom.set_ylabel("MSE per pixel")
    bottom.legend()
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def table(results: dict) -> str:
    lines = ["| model | parameters | R² cos θ | R² sin θ | R² ω | MSE/pixel at 1, 5, 10, 20 steps | "
             "cross-entropy/frame at 1, 5, 10, 20 (nats) |", "|---|---|---|---|---|---|---|"]
    for name, label in (("dvbf", "DVBF (filtered state)"), ("baseline", "VAE + RNN (per-frame mean)")):
        r = results[name]
        mse = ", ".join(f"{r['mse_per_pixel'][h - 1]:.4f}" for h in (1, 5, 10, 20))
        bce = ", ".join(f"{r['bce_per_frame_nats'][h - 1]:.1f}" for h in (1, 5, 10, 20))
        lines.append(f"| {label} | {r['parameters']:,} | {r['r2_cos_theta']:.3f} | {r['r2_sin_theta']:.3f} | "
                     f"{r['r2_omega']:.3f} | {mse} | {bce} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dvbf", type=Path, default=Path("runs/dvbf"))
    parser.add_argument("--baseline", type=Path, default=Path("runs/dvbf-baseline"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = pendulum_frames()
    results = {"dvbf": measure(args.dvbf, split), "baseline": measure(args.baseline, split),
               "observed": OBSERVED, "test_sequences": len(split.x_test),
               "served_minus_eager_max_levels": served_matches_eager(args.models, args.dvbf, split)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dvbf_predict.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "dvbf_predict.md").write_text(table(results) + "\n")
    print(table(results))
    print(f"served (models/dvbf, onnxruntime) vs eager predicted frames: max |difference| "
          f"{results['served_minus_eager_max_levels']:.0f} levels")
    if args.figure:
        figure(split, predictions(args.dvbf, split), predictions(args.baseline, split), results, args.figure)


if __name__ == "__main__":
    main()
