"""PixelCNN test NLL beside the Bernoulli-mixture baseline, and the served model's own score.

Rows (test split of the run's dataset, nats per image, mean ± standard error):
- the run in --run-dir, scored with its exported `log_prob` (exact log p(x),
  marginal over the class prior) in eager PyTorch: the same computation as
  `genserve eval` / training.evaluate.evaluate, which this script does not call
  because that writes eval.json into the run directory;
- the same run given the true label, log p(x | y), for reference;
- the Bernoulli mixture fitted by EM on the train split (training.baselines);
- the served model in --models, scored through Engine.score; its mean must
  match the manifest's test_nll_nats within --tolerance nats, else exit status 1.

    .venv/bin/python benchmarks/pixelcnn_nll.py [--runtime onnx] [--json out.json]
"""

import argparse
import inspect
import math
import sys
import time

import numpy as np
import torch
from common import (
    add_common_args,
    describe_environment,
    describe_served,
    environment,
    load_eager,
    load_served,
    markdown_table,
    served_info,
    set_threads,
    write_json,
)

from training.baselines import BernoulliMixture, fit_baseline
from training.evaluate import per_example_nll
from training.families import family_module

BASELINE_DEFAULTS = {k: p.default for k, p in inspect.signature(fit_baseline).parameters.items() if k != "split"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, repeats=None)
    parser.add_argument("--runtime", choices=["onnx", "torchscript"], default="onnx",
                        help="runtime of the served model (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=20,
                        help="images per scoring call; log_prob runs one pass per class (default: %(default)s)")
    parser.add_argument("--max-test", type=int, default=None,
                        help="score only the first N test images (development; skips the manifest check)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the Bernoulli mixture")
    parser.add_argument("--no-given-label", action="store_true", help="skip the log p(x | y) row")
    parser.add_argument("--baseline-components", type=int, default=BASELINE_DEFAULTS["n_components"])
    parser.add_argument("--baseline-iters", type=int, default=BASELINE_DEFAULTS["n_iter"])
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="served mean vs manifest test_nll_nats, in nats (default: %(default)s)")
    return parser.parse_args(argv)


def summary(model: str, nll: np.ndarray, dims: int, seconds: float) -> dict:
    """nll [N] nats per image -> mean, standard error, bits/dim."""
    mean = float(nll.mean())
    return {"model": model, "n": len(nll), "nll_nats": mean,
            "stderr": float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else float("nan"),
            "bits_per_dim": mean / (dims * math.log(2)), "seconds": seconds}


def eager_rows(eager, x: np.ndarray, y: np.ndarray, args) -> list[dict]:
    model, config, split = eager
    functions, _ = family_module(config["family"]).exported_functions(model, split)
    dims, rows = int(np.prod(split.shape)), []
    start = time.perf_counter()
    nll = per_example_nll(functions["log_prob"][0], x, args.batch_size)
    rows.append(summary(f"PixelCNN {args.run_dir}: log p(x), eager", nll, dims, time.perf_counter() - start))
    if not args.no_given_label:
        given = functions["log_prob_given_label"][0]
        start = time.perf_counter()
        with torch.no_grad():
            nll = np.concatenate([
                -given(torch.from_numpy(x[i: i + args.batch_size]).long(),
                       torch.from_numpy(y[i: i + args.batch_size]).long()).double().numpy()
                for i in range(0, len(x), args.batch_size)])
        rows.append(summary(f"PixelCNN {args.run_dir}: log p(x given its true label), eager", nll, dims,
                            time.perf_counter() - start))
    return rows


def baseline_row(split, x: np.ndarray, args) -> dict:
    """The baseline of training.baselines.fit_baseline, with per-image NLL for the standard error."""
    start = time.perf_counter()
    mixture = BernoulliMixture().fit(split.x_train.reshape(len(split.x_train), -1),
                                     n_components=args.baseline_components, n_iter=args.baseline_iters,
                                     seed=BASELINE_DEFAULTS["seed"])
    nll = -mixture.log_prob(x.reshape(len(x), -1))
    return summary(f"Bernoulli mixture, K={args.baseline_components} (EM, {len(mixture.history)} iterations)",
                   nll, int(np.prod(split.shape)), time.perf_counter() - start)


def served_row(s, x: np.ndarray, args) -> dict:
    start = time.perf_counter()
    scores = [r for i in range(0, len(x), args.batch_size)
              for r in s.run(s.engine.score(s.name, x[i: i + args.batch_size]))]
    nll = -np.array([r["log_likelihood_nats"] for r in scores], dtype=np.float64)
    return summary(f"served {args.models}/{args.name}: log p(x), {args.runtime} (Engine.score)", nll,
                   int(np.prod(x.shape[1:])), time.perf_counter() - start)


def manifest_check(s, row: dict, args) -> dict | None:
    metrics = s.manifest.get("metrics", {})
    if "test_nll_nats" not in metrics:
        return None
    expected = metrics["test_nll_nats"]
    comparable = row["n"] == metrics.get("test_examples", row["n"])
    diff = row["nll_nats"] - expected
    return {"manifest_test_nll_nats": expected, "served_test_nll_nats": row["nll_nats"], "difference": diff,
            "tolerance": args.tolerance, "comparable": comparable,
            "ok": (abs(diff) <= args.tolerance) if comparable else None, "manifest_baseline": metrics.get("baseline")}


def report_check(check: dict | None, served: bool, args) -> bool:
    """Print the served-vs-manifest comparison; False only on a real mismatch."""
    if check is None:
        if served:
            print(f"\nthe manifest of {args.models}/{args.name} has no test_nll_nats; nothing to check")
        return True
    print(f"\nmanifest test NLL {check['manifest_test_nll_nats']:.4f} nats, "
          f"served {check['served_test_nll_nats']:.4f} nats, "
          f"difference {check['difference']:+.4f} (tolerance {args.tolerance}): ", end="")
    if check["manifest_baseline"]:
        b = check["manifest_baseline"]
        baseline = f"\nmanifest baseline {b['name']} (K={b['components']}): {b['test_nll_nats']:.2f} nats"
    else:
        baseline = ""
    if not check["comparable"]:
        print("not comparable (--max-test scored a subset)" + baseline)
        return True
    print(("OK" if check["ok"] else "MISMATCH") + baseline)
    return check["ok"]


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    env = environment(threads)
    eager = load_eager(args.run_dir)
    served = load_served(args, [args.runtime], threads).get(args.runtime)
    if eager is None and served is None:
        print("nothing to score: give a --run-dir with a checkpoint or a --models store with the model")
        return 2
    if eager is not None:
        split = eager[2]
    else:
        from training.data import load

        split = load(served.manifest["provenance"]["dataset"])
    n = len(split.x_test) if args.max_test is None else min(args.max_test, len(split.x_test))
    x, y = split.x_test[:n].astype(np.int64), split.y_test[:n].astype(np.int64)
    rows = eager_rows(eager, x, y, args) if eager is not None else []
    if not args.no_baseline:
        rows.append(baseline_row(split, x, args))
    check, info = None, served_info({args.runtime: served} if served is not None else {})
    if served is not None:
        rows.append(served_row(served, x, args))
        check = manifest_check(served, rows[-1], args)
        served.close()

    print(f"# PixelCNN test NLL on {split.name}, test split ({n} of {len(split.x_test)} images)\n")
    print(describe_environment(env))
    if served is not None:
        print(describe_served({args.runtime: served}))
    print("mean ± standard error over test images; bits/dim = nats / (pixels * ln 2); "
          "time: scoring (the baseline: EM fit + scoring)\n")
    print(markdown_table(
        ["model", "test NLL (nats)", "± stderr", "bits/dim", "time (s)"],
        [[r["model"], f"{r['nll_nats']:.2f}", f"{r['stderr']:.2f}", f"{r['bits_per_dim']:.4f}", f"{r['seconds']:.1f}"]
         for r in rows]))
    ok = report_check(check, served is not None, args)
    write_json(args.json, {"benchmark": "pixelcnn_nll", "environment": env, "args": vars(args), "served": info,
                           "dataset": split.name, "test_examples": n, "rows": rows, "manifest_check": check})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
