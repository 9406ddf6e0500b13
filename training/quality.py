"""Sample quality for every image family: a small digit classifier and the scores built on it.

Inception score (Salimans et al. 2016, "Improved Techniques for Training GANs"):
    IS = exp(E_x KL(p(y | x) || p(y))),  p(y) = E_x p(y | x)
computed on each of `splits` equal chunks of the samples, reported as (mean, std over chunks); 1 <= IS <= C.
Frechet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium"), between Gaussians fitted to two sets of features (FID: the classifier's penultimate layer):
    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))
Mode coverage: the histogram of the classifier's predicted classes, the fraction of classes that get more
than a small share of it, and its KL to the uniform histogram (0 when every class is equally frequent).
Both IS (down) and FID (up) are biased at small sample sizes: compare models, and the real-data ceiling, at
the same number of samples.

The classifier, a CNN trained on the mnist5k train split only (never on test images), reads x / (levels - 1),
so 256-level and binarized images both work; half of each 256-level training batch is binarized afresh
(pixel ~ Bernoulli(intensity)) so that it also scores binary samples well.

Usage:
    python -m training.quality train --run-dir runs/classifier   # classifier.safetensors + classifier.json
    python -m training.quality real --run-dir runs/classifier    # the ceiling: real data's IS, FID, coverage
    model, info = load_classifier(run_dir)
    probs, features = classify(model, x, levels)                 # [N, C], [N, F]
    inception_score(probs); fid(features_a, features_b); mode_coverage(probs)
"""

import argparse
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from training.data import Split, load

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "evaluation"  # the classifier in the model store

SIDE = 28  # image height = width; two 2x2 max-pools take it to 7
IS_SPLITS = 10  # the inception score's chunks
MIN_SAMPLES = 2 * IS_SPLITS  # the fewest images scored: two per chunk, so that a chunk's p(y) is not one p(y | x)


@dataclass
class ClassifierConfig:
    channels: int = 16  # the first conv's channels; the second has twice as many
    features: int = 128  # F: the penultimate layer, FID's features
    classes: int = 10  # C
    lr: float = 1e-3
    batch_size: int = 64
    binarize_share: float = 0.5  # share of each 256-level training batch binarized afresh


class Classifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config, c = config, config.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [B, c, 14, 14]
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [B, 2c, 7, 7]
            nn.Flatten(), nn.Linear(2 * c * (SIDE // 4) ** 2, config.features), nn.ReLU())  # [B, F]
        self.head = nn.Linear(config.features, config.classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, 28, 28] in [0, 1] -> [B, F]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, 28, 28] in [0, 1] -> logits [B, C]."""
        return self.head(self.body(x))


def scaled(x: np.ndarray, levels: int) -> torch.Tensor:
    """Images in 0..levels-1 [N, 1, 28, 28] -> float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(x, dtype=np.float32) / (levels - 1))


def train_classifier(split: Split, epochs: int = 12, seed: int = 0, max_train: int | None = None,
                     config: ClassifierConfig | None = None) -> Classifier:
    """A classifier trained on split's train images (the first `max_train` of them), in eval mode."""
    config = config or ClassifierConfig(classes=split.num_classes)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Classifier(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    n = min(len(split.x_train), max_train or len(split.x_train))
    share = config.binarize_share if split.levels > 2 else 0.0
    bar = tqdm(total=epochs * -(-n // config.batch_size), desc="classifier", leave=False)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            idx = order[start: start + config.batch_size]
            x, y = scaled(split.x_train[idx], split.levels), torch.from_numpy(split.y_train[idx])
            binary = torch.from_numpy(rng.random(len(idx)) < share)[:, None, None, None]
            x = torch.where(binary, (torch.from_numpy(rng.random(x.shape, dtype=np.float32)) < x).float(), x)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


@torch.no_grad()
def classify(model: Classifier, x: np.ndarray, levels: int, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Images in 0..levels-1 [N, 1, 28, 28] -> (p(y | x) [N, C], features [N, F]), float64."""
    model.eval()
    probs, features = [], []
    for i in range(0, len(x), batch_size):
        h = model.features(scaled(x[i: i + batch_size], levels))
        probs.append(torch.softmax(model.head(h).double(), dim=1).numpy())
        features.append(h.double().numpy())
    return np.concatenate(probs), np.concatenate(features)


def accuracy(model: Classifier, x: np.ndarray, y: np.ndarray, levels: int) -> float:
    return float((classify(model, x, levels)[0].argmax(1) == y).mean())


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p_i || q) per row of p [N, C], with 0 log 0 = 0."""
    safe = np.where(p > 0, p, 1.0)
    return (p * (np.log(safe) - np.log(np.where(p > 0, q, 1.0)))).sum(-1)


def inception_score(probs: np.ndarray, splits: int = IS_SPLITS, seed: int | None = 0) -> tuple[float, float]:
    """p(y | x) [N, C] -> (mean, std) over `splits` chunks of exp(E_x KL(p(y | x) || p(y))).

    The rows are shuffled first (a fixed permutation; seed None keeps their order): each chunk's p(y) must see
    every class, and a class-sorted set (mnist5k's test split, a grid with one row per class) would score ~1.
    Fewer rows than chunks are refused (ValueError): an empty chunk has no score.
    """
    probs = np.asarray(probs)
    if len(probs) < splits:
        raise ValueError(f"{len(probs)} samples: the inception score needs at least {splits}, one per chunk")
    if seed is not None:
        probs = probs[np.random.default_rng(seed).permutation(len(probs))]
    scores = [float(np.exp(_kl_rows(p, p.mean(0)).mean())) for p in np.array_split(probs, splits)]
    return float(np.mean(scores)), float(np.std(scores))


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Squared Frechet distance between N(mu1, cov1) and N(mu2, cov2) (means [F], covariances [F, F]).

    (cov1 cov2)^(1/2) comes from scipy.linalg.sqrtm; where it is not finite (a singular product), eps * I is
    added to both covariances first. Rounding can give the root of a real PSD product tiny imaginary parts;
    they are dropped when at most 1e-3 of its largest real entry. Where they are larger (singular covariances:
    fewer samples than features), the trace of the root is taken from the eigenvalues instead (`trace_root`).
    """
    mu1, mu2, cov1, cov2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, cov1, cov2))
    with warnings.catch_warnings():  # a singular product (dead features, N < F) warns; its root is still used
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(cov1 @ cov2)
        if not np.isfinite(root).all():
            offset = eps * np.eye(len(cov1))
            root = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    trace = np.trace(root).real
    if np.iscomplexobj(root) and np.abs(root.imag).max() > 1e-3 * max(np.abs(root.real).max(), 1e-12):
        trace = trace_root(cov1, cov2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace)


def trace_root(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """tr (cov1 cov2)^(1/2) of two covariances: the sum of the square roots of the eigenvalues of cov1 cov2, which
    are those of the symmetric PSD cov1^(1/2) cov2 cov1^(1/2), so real and at least 0 (rounding's negative ones
    taken as 0). Exact for singular covariances too, to about 1e-8 relative (square roots of rounding noise)."""
    w, v = np.linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ cov2 @ root1
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, F] and [M, F]."""
    def stats(f):
        return f.mean(0), np.cov(f, rowvar=False)

    return frechet_distance(*stats(np.asarray(features_a, np.float64)), *stats(np.asarray(features_b, np.float64)))


def mode_coverage(probs: np.ndarray, min_share: float | None = None) -> dict:
    """p(y | x) [N, C] -> the histogram of argmax classes (shares summing to 1), the fraction of classes whose
    share exceeds min_share (default 1 / (10 C): a tenth of a uniform share, so a few stray predictions do
    not count), and KL(histogram || uniform) in nats (0 to log C)."""
    probs = np.asarray(probs)
    classes = probs.shape[1]
    share = np.bincount(probs.argmax(1), minlength=classes) / len(probs)
    min_share = 1 / (10 * classes) if min_share is None else min_share
    return {"classes_covered": float((share > min_share).mean()),
            "kl_to_uniform": float(_kl_rows(share, np.full(classes, 1 / classes))),
            "histogram": share.tolist()}


def save_classifier(model: Classifier, info: dict, run_dir: Path) -> None:
    """classifier.safetensors (the weights) and classifier.json (`info`: config, test accuracy) in run_dir."""
    (run_dir := Path(run_dir)).mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), run_dir / "classifier.safetensors")
    (run_dir / "classifier.json").write_text(json.dumps(info, indent=2))


def load_classifier(run_dir: Path) -> tuple[Classifier, dict]:
    """The classifier saved in run_dir, in eval mode, with its classifier.json."""
    info = json.loads((Path(run_dir) / "classifier.json").read_text())
    model = Classifier(ClassifierConfig(**info["config"]))
    model.load_state_dict(load_file(Path(run_dir) / "classifier.safetensors"))
    return model.eval(), info


def scores(model: Classifier, x: np.ndarray, levels: int, reference: np.ndarray | None = None) -> dict:
    """IS, mode coverage, and (given reference features [M, F]) FID of images x in 0..levels-1."""
    probs, features = classify(model, x, levels)
    is_mean, is_std = inception_score(probs)
    out = {"inception_score": is_mean, "inception_score_std": is_std, **mode_coverage(probs)}
    return out if reference is None else {**out, "fid": fid(features, reference)}


def sample_report(samples: np.ndarray, x_real: np.ndarray, levels: int, classifier_dir: Path = SHIPPED) -> dict:
    """A family's sample-quality metrics: IS, FID to x_real and mode coverage of samples [N, 1, 28, 28] in
    0..levels-1, from the evaluation classifier in classifier_dir (the shipped one by default)."""
    if not (Path(classifier_dir) / "classifier.safetensors").exists():
        raise FileNotFoundError(f"{classifier_dir}: no evaluation classifier; train it with "
                                f"`python -m training.quality train --run-dir {classifier_dir}`")
    classifier, _ = load_classifier(classifier_dir)
    s = scores(classifier, samples, levels, classify(classifier, x_real, levels)[1])
    return {"inception_score": s["inception_score"], "inception_score_std": s["inception_score_std"],
            "fid": s["fid"], "classes_covered": s["classes_covered"], "class_kl": s["kl_to_uniform"],
            "class_histogram": s["histogram"], "quality_samples": len(samples)}


def _train(args) -> None:
    split = load(args.dataset)
    model = train_classifier(split, epochs=args.epochs, seed=args.seed)
    info = {"config": asdict(model.config), "dataset": split.describe(), "epochs": args.epochs,
            "seed": args.seed, "test_accuracy": accuracy(model, split.x_test, split.y_test, split.levels)}
    if split.name == "mnist5k":  # the same test digits, binarized with the fixed seed
        binary = load("mnist5k-binarized")
        info["test_accuracy_binarized"] = accuracy(model, binary.x_test, binary.y_test, binary.levels)
    save_classifier(model, info, args.run_dir)
    print(json.dumps({k: v for k, v in info.items() if k.startswith("test_")}, indent=2))


def _real(args) -> None:
    model, _ = load_classifier(args.run_dir)
    report = {}
    for name in ("mnist5k", "mnist5k-binarized"):
        split = load(name)
        train_features = classify(model, split.x_train, split.levels)[1]
        report[name] = {**scores(model, split.x_test, split.levels, reference=train_features),
                        "accuracy": accuracy(model, split.x_test, split.y_test, split.levels)}
        r = report[name]
        print(f"{name} real test ({len(split.x_test)}): IS {r['inception_score']:.3f} ± {r['inception_score_std']:.3f}"
              f" (of {split.num_classes}), FID(train, test) {r['fid']:.3f}, classes covered "
              f"{r['classes_covered']:.2f}, KL to uniform {r['kl_to_uniform']:.4f}, accuracy {r['accuracy']:.4f}")
    (Path(args.run_dir) / "real.json").write_text(json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.quality", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the digit classifier on the mnist5k train split")
    train.add_argument("--run-dir", type=Path, default=Path("runs/classifier"))
    train.add_argument("--dataset", default="mnist5k")
    train.add_argument("--epochs", type=int, default=12)
    train.add_argument("--seed", type=int, default=0)
    real = commands.add_parser("real", help="the ceiling: IS, FID and coverage of real mnist5k images")
    real.add_argument("--run-dir", type=Path, default=Path("runs/classifier"))
    args = parser.parse_args(argv)
    {"train": _train, "real": _real}[args.command](args)


if __name__ == "__main__":
    main()
