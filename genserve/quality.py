"""Sample quality of every 28x28 digit model in the store: Inception Score, FID and mode coverage from the
evaluation classifier (training/quality.py, shipped in models/evaluation/), beside the real test split's ceiling.

Samples come through the serving engine (`sample` in requests of 100 with seeds 0, 100, ..., temperature 1,
each model's default steps, controls and labels drawn), as a user would get them. FID compares the samples'
classifier features with the real test split's, at the model's levels (binarized or 256); IS and FID are biased
by the sample size, so every row uses the same n. This module joins the service's engine and training's
evaluation kit, which never import each other.

    genserve eval --quality [--n 500] [--json out.json]
"""

import asyncio
import json
from pathlib import Path

import numpy as np

from service.engine.engine import Engine
from service.settings import Settings
from service.store import ModelStore
from training.data import load
from training.quality import IS_SPLITS, MIN_SAMPLES, classify, load_classifier, scores

DATASETS = {2: "mnist5k-binarized", 256: "mnist5k"}
CHUNK = 100  # samples per request, under the batcher's queue limit


def chunk_size(capability: dict) -> int:
    """Samples per request: CHUNK, or fewer where the capability's per-request limit of rows x steps is lower (a
    Markov chain's: rbm's 1000 Gibbs steps allow 52 chains)."""
    if "max_row_steps" not in capability:
        return CHUNK
    return max(1, min(CHUNK, capability["max_row_steps"] // capability.get("steps", 1)))


async def rows(models: Path, classifier_dir: Path, n: int) -> list[dict]:
    classifier, _ = load_classifier(classifier_dir)
    engine = Engine(ModelStore(models), Settings(intra_op_threads=1))
    reference, out = {}, []
    for levels, dataset in DATASETS.items():
        x_test = load(dataset).x_test[:n]
        reference[levels] = classify(classifier, x_test, levels)[1]
        out.append({"model": f"real test split ({dataset})", **scores(classifier, x_test, levels, reference[levels])})
    for name, m in sorted(engine.models.items()):
        if m.shape != [1, 28, 28] or "sample" not in m.capabilities or m.data["levels"] not in DATASETS \
                or "prompt" in m.capabilities["sample"]:  # a caption's model (stackgan): stackgan_eval.py
            continue
        chunk = chunk_size(m.capabilities["sample"])
        x = np.concatenate([await engine.sample(name, min(chunk, n - i), i, 1.0, None)  # seed i: chunk i
                            for i in range(0, n, chunk)])
        out.append({"model": name, **scores(classifier, x, m.data["levels"], reference[m.data["levels"]])})
    return out


def check(classifier: Path, n: int) -> None:
    """Refuse, in one line before anything is sampled, a store without the evaluation classifier, or an n too
    small for the scores (each of the inception score's chunks needs two samples)."""
    missing = [f for f in ("classifier.json", "classifier.safetensors") if not (Path(classifier) / f).is_file()]
    if missing:
        raise SystemExit(f"genserve eval --quality: {classifier} has no {' and no '.join(missing)} (the evaluation "
                         f"classifier): train it with `python -m training.quality train --run-dir {classifier}`")
    if n < MIN_SAMPLES:
        raise SystemExit(f"genserve eval --quality: --n {n} is too few samples: the inception score's {IS_SPLITS} "
                         f"chunks need {MIN_SAMPLES} or more")


def table(models: Path, classifier: Path, n: int, json_path: Path | None = None) -> str:
    """The Markdown table of every sampling 28x28 model's scores (and the real rows), optionally saved as JSON;
    refused first (`check`) without the classifier or with too small an n."""
    check(classifier, n)
    measured = asyncio.run(rows(models, classifier, n))
    lines = ["| model | IS (of 10) | FID to the real test split | classes covered | KL(class histogram, uniform) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['inception_score']:.2f} ± {r['inception_score_std']:.2f} | {r['fid']:.1f} | "
              f"{r['classes_covered']:.1f} | {r['kl_to_uniform']:.3f} |" for r in measured]
    lines.append(f"\n{n} samples per model (requests of {CHUNK}, seeds 0, {CHUNK}, ...; fewer per request where a "
                 "model's limit of rows x steps is lower: rbm 52, seeds 0, 52, ...); the real rows compare the test "
                 "split with itself (FID 0 up to rounding).")
    if json_path:
        json_path.write_text(json.dumps([{k: v for k, v in r.items() if k != "histogram"} for r in measured],
                                        indent=2, default=float))
    return "\n".join(lines)
