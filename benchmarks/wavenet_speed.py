"""WaveNet speed: fast generation vs naive at a receptive field of 1,024 samples, and the shipped model's
real-time factor (audio seconds produced per wall second) for 1 stream and for 16 concurrent streams.

Part 1, fast vs naive, batch 1, a randomly initialised WaveNet with dilations 1..512 (receptive field
1,024; residual 32, skip 64, the shipped model's widths):
- naive: `sample_naive`'s work for one sample once the prefix is one receptive field long (the whole
  network over the receptive field; further back changes nothing, so this is the cheapest naive step
  past the first 1,024 samples; `sample_naive` itself re-runs the whole prefix and only gets slower);
- fast eager: `sample_fast` (per-layer queues, Paine et al. 2016) in eager PyTorch;
- fast onnxruntime: the exported `sample_step` (K samples per call, queues as state) in a loop.
Under the same noise, sample_naive and sample_fast must agree; the script checks it and exits 1 if not.

Part 2, real-time factor of --models/--name (default models/wavenet) through `Engine.sample` on
onnxruntime (continuous batching: 16 concurrent one-stream requests share each step call).

    .venv/bin/python benchmarks/wavenet_speed.py [--threads 1] [--seconds 2] [--json out.json]
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import Served, describe_environment, environment, markdown_table, set_threads, time_call, write_json

from training.export import export_function
from training.families.wavenet import START, Step, WaveNet, WaveNetConfig, initial_state, sample_fast, sample_naive

RECEPTIVE = WaveNetConfig(residual=32, skip=64, layers=10, stacks=1, chunk=400)


def check_fast_equals_naive(model: WaveNet) -> bool:
    """sample_fast == sample_naive under the same noise, over two chunks of a small-chunk copy."""
    small = WaveNet(WaveNetConfig(**{**RECEPTIVE.to_dict(), "chunk": 16}))
    small.load_state_dict(model.state_dict())
    noise = torch.rand(1, 32, generator=torch.Generator().manual_seed(0))
    label, temperature = torch.zeros(1, dtype=torch.long), torch.ones(1)
    return torch.equal(sample_fast(small.eval(), label, noise, temperature),
                       sample_naive(small.eval(), label, noise, temperature))


@torch.no_grad()
def naive_seconds_per_sample(model: WaveNet, repeats: int) -> float:
    """One naive step at a prefix of one receptive field: the network over RF samples, the last output read."""
    window = torch.randint(0, 256, (1, model.config.receptive_field))
    label = torch.zeros(1, dtype=torch.long)
    return time_call(lambda: model.params(window, label)[:, -1], repeats).median


@torch.no_grad()
def fast_eager_seconds_per_sample(model: WaveNet, samples: int) -> float:
    noise = torch.rand(1, samples)
    timing = time_call(lambda: sample_fast(model, torch.zeros(1, dtype=torch.long), noise, torch.ones(1)), 1)
    return timing.median / samples


def onnx_step_session(model: WaveNet, folder: Path, threads: int) -> ort.InferenceSession:
    step = Step(model)
    state = initial_state(step, 1)
    chunk = torch.full((1, model.config.chunk), START, dtype=torch.long)
    inputs = {"x_prev": chunk, **state, "noise": torch.rand(1, model.config.chunk), "temperature": torch.ones(1),
              "label": torch.zeros(1, dtype=torch.long), "observed": chunk, "mask": torch.zeros_like(chunk)}
    export_function(folder, "sample_step", step, inputs, ["x", "next_queue"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(folder / "sample_step.onnx"), options, providers=["CPUExecutionProvider"])


def fast_onnx_seconds_per_sample(session: ort.InferenceSession, config: WaveNetConfig, samples: int,
                                 batch: int = 1) -> float:
    """The exported step in a loop: `samples` samples per row, `batch` rows, K per call."""
    k = config.chunk
    feeds = {"x_prev": np.full((batch, k), START, np.int64), "temperature": np.ones(batch, np.float32),
             "label": np.zeros(batch, np.int64), "observed": np.zeros((batch, k), np.int64),
             "mask": np.zeros((batch, k), np.int64),
             "queue": np.zeros((batch, sum(config.dilations), config.residual), np.float32)}
    rng = np.random.default_rng(0)

    def generate() -> None:
        state = dict(feeds)
        for _ in range(samples // k):
            x, queue = session.run(None, {**state, "noise": rng.random((batch, k), dtype=np.float32)})
            state |= {"x_prev": x, "queue": queue}

    return time_call(generate, 3).median / samples


def part_one(threads: int, samples: int) -> dict:
    torch.manual_seed(0)
    model = WaveNet(RECEPTIVE).eval()
    if not check_fast_equals_naive(model):
        print("error: sample_fast differs from sample_naive under the same noise", file=sys.stderr)
        sys.exit(1)
    naive = naive_seconds_per_sample(model, repeats=20)
    eager = fast_eager_seconds_per_sample(model, samples)
    with tempfile.TemporaryDirectory() as folder:
        session = onnx_step_session(model, Path(folder), threads)
        onnx = fast_onnx_seconds_per_sample(session, RECEPTIVE, samples)
    return {"receptive_field": RECEPTIVE.receptive_field, "naive_s_per_sample": naive,
            "fast_eager_s_per_sample": eager, "fast_onnx_s_per_sample": onnx}


def part_two(models: str, name: str, threads: int, seconds: float, streams: list[int]) -> dict:
    served = Served(models, name, "onnx", threads)
    rate = served.manifest["data"]["sample_rate"]
    length = round(seconds * rate)

    async def concurrent(n: int) -> float:
        start = time.perf_counter()
        await asyncio.gather(*(served.engine.sample(name, 1, seed, 1.0, 0, length=length) for seed in range(n)))
        return time.perf_counter() - start

    async def first_chunk() -> float:
        start = time.perf_counter()
        stream = served.engine.sample_stream(name, 1, 0, 1.0, 0, length=length, chunk=rate // 10)
        await anext(stream)
        elapsed = time.perf_counter() - start
        await stream.aclose()
        return elapsed

    served.run(concurrent(1))  # warm-up: sessions, first batchers
    results = {"model": str(served.engine.model(name).entry.directory), "seconds_per_stream": seconds,
               "chunk": served.manifest["capabilities"]["sample"]["step_shape"][0],
               "first_chunk_100ms_s": served.run(first_chunk()), "streams": {}}
    for n in streams:
        wall = served.run(concurrent(n))
        results["streams"][n] = {"wall_s": wall, "rtf_per_stream": seconds / wall, "rtf_total": n * seconds / wall}
    served.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=1600, help="part 1: samples generated per timing")
    parser.add_argument("--models", default="models")
    parser.add_argument("--name", default="wavenet")
    parser.add_argument("--seconds", type=float, default=2.0, help="part 2: audio seconds per stream")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    env = environment(threads)
    one = part_one(threads, args.samples)
    print(f"# WaveNet speed\n\n{describe_environment(env)}\n")
    print(f"## Fast vs naive generation, batch 1, receptive field {one['receptive_field']} samples\n")
    naive = one["naive_s_per_sample"]
    rows = [["naive (network over the receptive field per sample)", f"{naive * 1e3:.2f} ms", f"{1 / naive:,.0f}", "1x"]]
    for key, label in (("fast_eager_s_per_sample", "fast, eager PyTorch (sample_fast)"),
                       ("fast_onnx_s_per_sample", f"fast, onnxruntime sample_step (K={RECEPTIVE.chunk})")):
        rows.append([label, f"{one[key] * 1e3:.3f} ms", f"{1 / one[key]:,.0f}", f"{naive / one[key]:.0f}x"])
    print(markdown_table(["method", "time per sample", "samples/s", "speed-up vs naive"], rows))
    print("\nsample_fast == sample_naive under the same noise: checked")
    if not any((Path(args.models) / args.name).glob("*/manifest.json")):
        print(f"\nnote: no model {args.name!r} in {args.models}; no real-time factor", file=sys.stderr)
        write_json(args.json, {"environment": env, "fast_vs_naive": one})
        return
    two = part_two(args.models, args.name, threads, args.seconds, args.streams)
    print(f"\n## Real-time factor of {two['model']} (Engine.sample, onnxruntime, K={two['chunk']})\n")
    rows = [[str(n), f"{r['wall_s']:.2f} s", f"{r['rtf_per_stream']:.2f}", f"{r['rtf_total']:.2f}"]
            for n, r in two["streams"].items()]
    print(markdown_table(["concurrent streams", f"wall time for {args.seconds:g} s each", "RTF per stream",
                          "RTF total"], rows))
    print(f"\ntime to the first 100 ms chunk, 1 stream: {two['first_chunk_100ms_s'] * 1e3:.0f} ms")
    write_json(args.json, {"environment": env, "fast_vs_naive": one, "real_time": two})


if __name__ == "__main__":
    main()
