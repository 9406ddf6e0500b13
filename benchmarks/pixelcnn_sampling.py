"""PixelCNN sampling speed: naive vs fast (eager PyTorch) vs the served path, at batch 1 and 16.

- naive: `sample_naive`, the whole network over the whole canvas once per pixel.
  Its cost per pixel is constant, so by default only the first --naive-pixels
  pixels (raster order) are timed and the time is scaled linearly to the whole
  image; the table says so. --naive-pixels 0 times complete images.
- fast: `sample_fast`, one cached `RowStep` per row (what is exported).
- onnxruntime / torchscript: `Engine.sample` on the exported model in --models,
  i.e. the autoregressive procedure calling the exported `sample_step`, noise
  generation included.

Under the same noise, the naive pixels must equal the fast ones; the script
checks this for every batch and exits with status 1 if they differ.

    .venv/bin/python benchmarks/pixelcnn_sampling.py [--batches 1 16] [--naive-pixels 56] [--json out.json]
"""

import argparse
import sys

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

from training.families.pixelcnn import PixelCNN, sample_fast, sample_naive

METHODS = ["naive", "fast", "onnx", "torchscript"]
LABELS = {
    "naive": "naive eager (sample_naive)",
    "fast": "fast eager (sample_fast)",
    "onnx": "served onnxruntime (Engine.sample)",
    "torchscript": "served torchscript (Engine.sample)",
}


@torch.no_grad()
def naive_prefix(model: PixelCNN, label, noise, temperature, pixels: int) -> torch.Tensor:
    """The first `pixels` pixels (raster order) exactly as `sample_naive` draws them -> [B, 1, H, W] int64.

    Pixels past the prefix stay 0. With pixels >= H * W this is `sample_naive` itself.
    """
    b, height, width = noise.shape[:3]
    if pixels >= height * width:
        return sample_naive(model, label, noise, temperature)
    canvas = torch.zeros(b, 1, height, width, dtype=torch.long)
    for p in range(pixels):
        i, j = divmod(p, width)
        params = model.params(canvas, label)[:, i, j]  # [B, channels], the whole network as in sample_naive
        canvas[:, 0, i, j] = model.output.sample(params, noise[:, i, j], temperature)
    return canvas


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, repeats=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes (default: 1 16)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS, help="what to time (default: all)")
    parser.add_argument("--naive-pixels", type=int, default=56,
                        help="naive: time this many pixels and extrapolate to the image; 0 = whole image "
                             "(default: %(default)s, two rows of a 28x28 image)")
    parser.add_argument("--naive-repeats", type=int, default=3, help="timed repeats of the naive prefix")
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="stop repeating a case after this many timed seconds (at least 3 repeats)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def time_eager(model: PixelCNN, batch: int, args, results: list, checks: list) -> None:
    """Time fast and naive sampling under one noise tensor, and check that their pixels agree."""
    c = model.config
    gen = torch.Generator().manual_seed(args.seed + batch)
    label = torch.arange(batch) % c.num_classes
    noise = torch.rand(batch, c.height, c.width, generator=gen)  # [B, H, W], shared by naive and fast
    temperature = torch.ones(batch)
    total = c.height * c.width
    fast = sample_fast(model, label, noise, temperature)  # also the reference for the equality check
    if "fast" in args.methods:
        timing = time_call(lambda: sample_fast(model, label, noise, temperature), args.repeats, args.warmup,
                           args.budget_s)
        results.append({"method": "fast", "batch": batch, "seconds": timing.median, "timing": timing,
                        "extrapolated_from_pixels": None})
    if "naive" in args.methods:
        pixels = total if args.naive_pixels <= 0 else min(args.naive_pixels, total)
        for _ in range(args.warmup):
            naive_prefix(model, label, noise, temperature, min(pixels, c.width))
        out = None

        def run():
            nonlocal out
            out = naive_prefix(model, label, noise, temperature, pixels)

        timing = time_call(run, args.naive_repeats, warmup=0, budget_s=args.budget_s)
        results.append({"method": "naive", "batch": batch, "seconds": timing.median * total / pixels,
                        "timing": timing, "extrapolated_from_pixels": pixels if pixels < total else None})
        same = torch.equal(out.flatten(1)[:, :pixels], fast.flatten(1)[:, :pixels])
        checks.append({"batch": batch, "pixels": pixels, "naive_equals_fast": same})


def time_served(served: dict, batch: int, args, results: list) -> None:
    """Time Engine.sample on every runtime."""
    for runtime, s in served.items():
        timing = time_call(lambda s=s: s.run(s.engine.sample(s.name, batch, args.seed, 1.0, None)),
                           args.repeats, args.warmup, args.budget_s)
        results.append({"method": runtime, "batch": batch, "seconds": timing.median, "timing": timing,
                        "extrapolated_from_pixels": None})


def annotate(results: list) -> None:
    """Add images/s and the speedup over naive sampling at the same batch size to every result."""
    naive = {r["batch"]: r["seconds"] for r in results if r["method"] == "naive"}
    for r in results:
        r["images_per_s"] = r["batch"] / r["seconds"]
        r["speedup_vs_naive"] = naive[r["batch"]] / r["seconds"] if r["batch"] in naive else None


def table(results: list, total_pixels: int) -> str:
    rows = []
    for r in sorted(results, key=lambda r: (r["batch"], METHODS.index(r["method"]))):
        note = ""
        if r["extrapolated_from_pixels"]:
            note = f"extrapolated from {r['extrapolated_from_pixels']} of {total_pixels} pixels"
        speedup = f"{fmt(r['speedup_vs_naive'])}x" if r["speedup_vs_naive"] else "n/a"
        rows.append([LABELS[r["method"]], r["batch"], fmt(r["seconds"]), fmt(r["images_per_s"]), speedup,
                     r["timing"].repeats, note])
    return markdown_table(["method", "batch", "s / batch", "images / s", "speedup vs naive", "repeats", "notes"],
                          rows)


def print_report(args, env: dict, eager, served: dict, total: int, shape: list, results: list, checks: list) -> bool:
    """The markdown report; True when every naive-vs-fast check found identical pixels."""
    print(f"# PixelCNN sampling, {shape[-2]}x{shape[-1]} images ({total} pixels)\n")
    print(describe_environment(env))
    if eager is not None:
        c = eager[0].config
        params = sum(p.numel() for p in eager[0].parameters())
        print(f"eager model: {args.run_dir} ({c.n_layers} layers, {c.channels} channels, {params:,} parameters)")
    if served:
        print(f"{describe_served(served)}; Engine.sample, seed {args.seed}, label from the class prior")
    print(f"median of repeats after {args.warmup} warm-up call(s); budget {args.budget_s:g} s per case\n")
    print(table(results, total))
    print()
    for c in checks:
        verdict = "identical" if c["naive_equals_fast"] else "DIFFERENT"
        print(f"naive vs fast under the same noise, batch {c['batch']}, first {c['pixels']} pixels: {verdict}")
    return all(c["naive_equals_fast"] for c in checks)


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    env = environment(threads)
    eager = load_eager(args.run_dir) if {"naive", "fast"} & set(args.methods) else None
    runtimes = [m for m in ("onnx", "torchscript") if m in args.methods]
    served = load_served(args, runtimes, threads)
    if eager is None and not served:
        print("nothing to time: give a --run-dir with a checkpoint or a --models store with the model")
        return 2
    if served:
        shape = next(iter(served.values())).manifest["data"]["shape"]
    else:
        shape = [1, eager[0].config.height, eager[0].config.width]
    total = shape[-2] * shape[-1]
    results, checks = [], []
    for batch in args.batches:
        if eager is not None:
            time_eager(eager[0], batch, args, results, checks)
        time_served(served, batch, args, results)
    for s in served.values():
        s.close()
    annotate(results)
    ok = print_report(args, env, eager, served, total, shape, results, checks)
    write_json(args.json, {"benchmark": "pixelcnn_sampling", "environment": env, "args": vars(args),
                           "served": served_info(served),
                           "image_pixels": total, "results": results, "checks": checks})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
