"""The inverse-autoregressive duality, measured: an autoregressive flow is one network pass in one direction
and D = 784 sequential passes in the other. MAF scores with the one pass and samples with the D passes; IAF is
the same transform used the other way round (Kingma et al. 2016; Papamakarios et al. 2017), so it samples with
the one pass and scores with the D passes.

Both rows use the trained MAF's weights (runs/maf, `genserve train flow --config training/configs/maf.json
--run-dir runs/maf`): the IAF row times the same computations assigned to the other task. Eager PyTorch, one
thread, median of --repeats.

    .venv/bin/python benchmarks/flow_speed.py [--run runs/maf] [--batch 16] [--repeats 5]
"""

import argparse
import time
from pathlib import Path

import torch

from training.train import load_model


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/maf"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _, _ = load_model(args.run)
    model.eval()
    v = torch.randn(args.batch, 784)
    with torch.no_grad():
        one_pass = median_seconds(lambda: model.flow(v), args.repeats)  # data -> noise: every d at once
        sequential = median_seconds(lambda: model.flow.inverse(v), args.repeats)  # noise -> data: d after d
    print(f"| flow | score {args.batch} images (ms) | sample {args.batch} images (ms) | sample / score |")
    print("|---|---|---|---|")
    print(f"| MAF | {one_pass * 1e3:.1f} | {sequential * 1e3:.1f} | {sequential / one_pass:.0f}x |")
    print(f"| IAF (the same transform, reversed) | {sequential * 1e3:.1f} | {one_pass * 1e3:.1f} | "
          f"{one_pass / sequential:.4f}x |")
    print(f"\nbatch {args.batch}, one thread, median of {args.repeats}; the flow alone (no preprocessing).")


if __name__ == "__main__":
    main()
