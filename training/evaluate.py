"""Test-set evaluation through the exported score function, beside a baseline.

The numbers come from the same `log_prob` function that is exported and
served, so what `genserve eval` reports is what the service computes.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from service.store import is_version_number
from training.families import family_module
from training.train import load_model, replacing


@torch.no_grad()
def per_example_nll(log_prob: torch.nn.Module, x: np.ndarray, batch_size: int = 50,
                    y: np.ndarray | None = None) -> np.ndarray:
    """x [N, ...] levels -> -log p(x) in nats [N]; -log p(x | y) with labels y [N] for a conditional log_prob."""
    chunks = []
    for i in tqdm(range(0, len(x), batch_size), desc="scoring test set", leave=False):
        labels = () if y is None else (torch.from_numpy(y[i: i + batch_size]),)
        chunks.append(-log_prob(torch.from_numpy(x[i: i + batch_size]).long(), *labels).double().numpy())
    return np.concatenate(chunks)


def evaluate(run_dir: Path, baseline: bool = True, loaded: tuple | None = None) -> dict:
    """Test NLL (nats, bits/dim) of a run's exported `log_prob` (given the label where it takes one, as a
    WaveNet's does the voice); writes eval.json beside the checkpoint.

    A family with `evaluate_test(model, split)` computes its own per-example test NLL (a latent-variable
    model's bound or estimate, the quantity its served default `score` computes) and any extra metrics.
    `loaded`: the run's (model, config, split) when the caller has loaded it already (export).
    """
    model, config, split = loaded or load_model(run_dir)
    family = family_module(config["family"])
    extra = {}
    if hasattr(family, "evaluate_test"):  # a bound or an estimate (latent-variable models), with its own metrics
        extra = family.evaluate_test(model, split)
        if "test_nll_per_example" not in extra:  # an implicit model: no likelihood, its own metrics only
            return likelihood_free_report(run_dir, config["family"], {**extra, "dataset": split.name})
        nll = np.asarray(extra.pop("test_nll_per_example"))
    else:
        functions, _ = family.exported_functions(model, split)
        log_prob, inputs = functions["log_prob"][:2]
        nll = per_example_nll(log_prob, split.x_test, y=split.y_test if "label" in inputs else None)
    dims = int(np.prod(split.shape))
    report = {
        **extra,
        "dataset": split.name,
        "test_examples": len(nll),
        "test_nll_nats": float(nll.mean()),
        "test_nll_stderr": float(nll.std(ddof=1) / math.sqrt(len(nll))),
        "test_bits_per_dim": float(nll.mean() / (dims * math.log(2))),
        "test_nll_per_example": nll.tolist(),
    }
    baseline = baseline and split.levels == 2  # the Bernoulli mixture models binary images only
    if baseline:
        from training.baselines import fit_baseline

        report["baseline"] = fit_baseline(split)
    write_report(run_dir, report)
    print(f"{config['family']} on {split.name} test ({len(nll)} examples): "
          f"{report['test_nll_nats']:.2f} ± {report['test_nll_stderr']:.2f} nats, "
          f"{report['test_bits_per_dim']:.4f} bits/dim")
    if baseline:
        b = report["baseline"]
        print(f"baseline {b['name']} (K={b['components']}): {b['test_nll_nats']:.2f} nats, "
              f"{b['test_bits_per_dim']:.4f} bits/dim")
    return report


def write_report(run_dir: Path, report: dict) -> None:
    """The run's eval.json, whole or as it was (`replacing`): `genserve export --reuse-eval` reads it."""
    with replacing(Path(run_dir) / "eval.json") as temporary:
        temporary.write_text(json.dumps(report, indent=2))


def likelihood_free_report(run_dir: Path, family: str, report: dict) -> dict:
    """An implicit model's report (sample quality, its critic's held-out scores), written to eval.json."""
    write_report(run_dir, report)
    shown = {k: v for k, v in report.items() if not k.endswith("_per_example")}
    print(f"{family} on {report['dataset']} (no likelihood): " +
          ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    return report


# Published full-MNIST (60,000 training images, dynamically binarized) negative log-likelihoods, as context, by the
# shipped model's name, which is its family's. A row gets the figure only where its name and family both are that
# one, since a name is whatever `genserve export --name` was given (an hvae exported as "vae" is no 1-layer VAE, and
# vae-iaf, of family vae, is not the model of the figure either).
PUBLISHED = {
    "vae": "86.76 (VAE, 1 layer; Burda et al. 2016, Table 1)",
    "hvae": "85.33 (VAE, 2 layers; IWAE 2 layers: 82.90; Burda et al. 2016, Table 1)",
    "rbm": "86.34 (RBM, 500 hidden, CD25; Salakhutdinov & Murray 2008)",
    "pixelcnn": "81.30 (PixelCNN; van den Oord et al. 2016)",
}


def store_table(models_dir: Path, dataset: str = "mnist5k-binarized") -> str:
    """A Markdown table of every stored model version's test metrics on `dataset`, measured by `genserve export`
    (each manifest's provenance holds the training command and config), with published numbers beside.
    The ± is the standard error over test images (left out where a manifest does not record it). A manifest
    that cannot be read is skipped, and said so in one line on stderr, as `genserve serve` names it."""
    rows = ["| model | family | version | method | -ELBO (nats) | test NLL (nats) | bits/dim | published, full MNIST |",
            "|---|---|---|---|---|---|---|---|"]
    for manifest_path in sorted(Path(models_dir).glob("*/*/manifest.json"), key=_version_order):
        try:
            manifest = read_manifest(manifest_path)
            metrics = manifest["metrics"]
            if metrics.get("dataset") == dataset and "test_nll_nats" in metrics:  # this dataset, a likelihood
                rows.append(table_row(manifest, manifest_path.parent.name))
        except (ValueError, TypeError, KeyError) as e:  # unreadable, or a metric of the wrong type
            print(f"skipped {manifest_path}: invalid manifest: {e}", file=sys.stderr)
    return "\n".join(rows)


def _version_order(manifest_path: Path) -> tuple:
    """Models by name, each one's versions by number (10 after 9) where the store reads them as numbers."""
    version = manifest_path.parent.name
    number = is_version_number(version)
    return manifest_path.parent.parent.name, not number, int(version) if number else version


def read_manifest(manifest_path: Path) -> dict:
    """A manifest with what the table reads (name, family, metrics, data shape), else ValueError."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(str(e)) from e  # json.JSONDecodeError is a ValueError already
    if not isinstance(manifest, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("name", "family", "metrics", "data") if k not in manifest]
    if missing:
        raise ValueError(f"no {', no '.join(missing)}")
    if not isinstance(manifest["metrics"], dict) or not isinstance(manifest["data"], dict) \
            or "shape" not in manifest["data"]:
        raise ValueError("metrics or data (with its shape) is not an object")
    return manifest


def table_row(manifest: dict, version: str) -> str:
    """One version's row (`version`: its directory's name, as the store reads it): its tightest measured NLL (a
    VAE's IWAE bound), ± where recorded, and bits/dim."""
    metrics = manifest["metrics"]
    bound = "test_iwae_eval_k_nats" in metrics  # a VAE's: the tightest bound measured
    method = f"IWAE-{metrics['eval_k']}" if bound else metrics.get("method", "exact")
    nll = metrics["test_iwae_eval_k_nats"] if bound else metrics["test_nll_nats"]
    elbo = f"{metrics['test_elbo_nats']:.2f}" if "test_elbo_nats" in metrics else ""
    stderr = f" ± {metrics['test_nll_stderr']:.2f}" if "test_nll_stderr" in metrics else ""
    bits = nll / (math.prod(manifest["data"]["shape"]) * math.log(2))
    published = PUBLISHED.get(manifest["name"], "") if manifest["name"] == manifest["family"] else ""
    return (f"| {manifest['name']} | {manifest['family']} | {version} | {method} | {elbo} | "
            f"{nll:.2f}{stderr} | {bits:.4f} | {published} |")
