"""PixelCNN scoring throughput: exported log-probs through Engine.score, beside eager PyTorch.

Two functions, as exported:
- log_prob: log p(x) = log sum_y p(x | y) p(y), exact, so one call runs the
  network once per class (10 passes per image on MNIST);
- log_prob_given_label: log p(x | y), one pass per image.

Runtimes: onnxruntime and TorchScript through `Engine.score` on the model in
--models (input checks and anomaly percentiles included), and the same modules
in eager PyTorch from --run-dir for reference. Inputs are test-split images.

    .venv/bin/python benchmarks/pixelcnn_scoring.py [--batches 1 16 64] [--json out.json]
"""

import argparse
import sys

import numpy as np
import torch
from common import (
    add_common_args,
    describe_environment,
    describe_served,
    environment,
    fmt,
    load_eager,
    load_served,
    markdown_table,
    served_info,
    set_threads,
    time_call,
    write_json,
)

from training.families import family_module

FUNCTIONS = ["log_prob", "log_prob_given_label"]
RUNTIMES = ["eager", "onnx", "torchscript"]
RUNTIME_LABELS = {"eager": "eager PyTorch", "onnx": "onnxruntime (Engine.score)",
                  "torchscript": "torchscript (Engine.score)"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, repeats=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64], help="batch sizes (default: 1 16 64)")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=RUNTIMES, help="(default: all)")
    parser.add_argument("--functions", nargs="+", choices=FUNCTIONS, default=FUNCTIONS, help="(default: both)")
    parser.add_argument("--budget-s", type=float, default=15.0,
                        help="stop repeating a case after this many timed seconds (at least one repeat)")
    return parser.parse_args(argv)


def test_images(eager, served: dict, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `batch` test images and labels (cycled if the split is smaller): x [B, 1, H, W] int64, y [B]."""
    if eager is not None:
        split = eager[2]
    else:
        from training.data import load

        split = load(next(iter(served.values())).manifest["provenance"]["dataset"])
    idx = np.arange(batch) % len(split.x_test)
    return split.x_test[idx].astype(np.int64), split.y_test[idx].astype(np.int64)


def eager_functions(eager) -> dict[str, torch.nn.Module]:
    """The exported modules of the run, by function name, in eval mode."""
    model, config, split = eager
    functions, _ = family_module(config["family"]).exported_functions(model, split)
    return {name: spec[0].eval() for name, spec in functions.items()}


def eager_call(module: torch.nn.Module, function: str, x: np.ndarray, y: np.ndarray):
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    args = (xt,) if function == "log_prob" else (xt, yt)

    def call():
        with torch.inference_mode():
            return module(*args)

    return call


def served_call(s, function: str, x: np.ndarray, y: np.ndarray):
    labels = None if function == "log_prob" else [int(v) for v in y]
    return lambda: s.run(s.engine.score(s.name, x, labels))


def annotate(results: list) -> None:
    """Add images/s and the ratio to eager PyTorch (same function and batch) to every result."""
    eager = {(r["function"], r["batch"]): r["seconds"] for r in results if r["runtime"] == "eager"}
    for r in results:
        base = eager.get((r["function"], r["batch"]))
        r["images_per_s"] = r["batch"] / r["seconds"]
        r["speedup_vs_eager"] = base / r["seconds"] if base else None


def table(results: list) -> str:
    rows = [[r["function"], RUNTIME_LABELS[r["runtime"]], r["batch"], fmt(r["seconds"] * 1e3), fmt(r["images_per_s"]),
             f"{fmt(r['speedup_vs_eager'])}x" if r["speedup_vs_eager"] else "n/a", r["timing"].repeats]
            for r in results]
    return markdown_table(["function", "runtime", "batch", "ms / batch", "images / s", "vs eager", "repeats"], rows)


def run_cases(eager, served: dict, args) -> list[dict]:
    """Time every (function, batch, runtime); progress goes to stderr."""
    results, modules = [], eager_functions(eager) if eager is not None else {}
    for function in args.functions:
        for batch in args.batches:
            x, y = test_images(eager, served, batch)
            calls = {"eager": eager_call(modules[function], function, x, y)} if modules else {}
            calls.update({runtime: served_call(s, function, x, y) for runtime, s in served.items()})
            for runtime, call in calls.items():
                timing = time_call(call, args.repeats, args.warmup, args.budget_s, min_repeats=1)
                results.append({"function": function, "runtime": runtime, "batch": batch,
                                "seconds": timing.median, "timing": timing})
                print(f"  {function} {runtime} batch {batch}: {fmt(timing.median * 1e3)} ms", file=sys.stderr)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    env = environment(threads)
    eager = load_eager(args.run_dir) if "eager" in args.runtimes else None
    served = load_served(args, [r for r in args.runtimes if r != "eager"], threads)
    if eager is None and not served:
        print("nothing to time: give a --run-dir with a checkpoint or a --models store with the model")
        return 2
    results = run_cases(eager, served, args)
    for s in served.values():
        s.close()
    annotate(results)

    print("# PixelCNN scoring throughput\n")
    print(describe_environment(env))
    if eager is not None:
        print(f"eager model: {args.run_dir}")
    if served:
        print(describe_served(served))
    print(f"inputs: test-split images; median of up to {args.repeats} repeats after {args.warmup} warm-up call(s), "
          f"budget {args.budget_s:g} s per case; log_prob marginalises over the classes (one pass per class)\n")
    print(table(results))
    write_json(args.json, {"benchmark": "pixelcnn_scoring", "environment": env, "args": vars(args),
                           "served": served_info(served),
                           "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
