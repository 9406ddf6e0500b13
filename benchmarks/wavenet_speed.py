"""WaveNet speed: fast generation vs naive at a receptive field of 1,024 samples; the shipped model's step on
each runtime: its load time, real-time factor (audio seconds produced per wall second) for 1 stream and for 16
concurrent streams, and the time to the first 100 ms chunk, side by side in one run.

Part 1, fast vs naive, batch 1, a randomly initialised WaveNet with dilations 1..512 (receptive field
1,024; residual 32, skip 64, the shipped model's widths):
- naive: `sample_naive`'s work for one sample once the prefix is one receptive field long (the whole
  network over the receptive field; further back changes nothing, so this is the cheapest naive step
  past the first 1,024 samples; `sample_naive` itself re-runs the whole prefix and only gets slower);
- fast eager: `sample_fast` (per-layer queues, Paine et al. 2016) in eager PyTorch;
- fast onnxruntime: the exported `sample_step` (K samples per call, queues as state) in a loop;
- fast kernel: the same step on the service's fused kernel (dilated_gated_stack, numba).
Under the same noise, sample_naive and sample_fast must agree, and so must the kernel; the script checks both
and exits 1 if not.

Part 2, the step of --models/--name (default models/wavenet) on each of --runtimes (default: unrolled, the
ONNX step as shipped before issue 16, all 400 samples unrolled in one graph, rebuilt from the model's weights
into a copy of the store; onnx-graph, the shipped ONNX step, a Loop over chunks of 20 unrolled samples; onnx,
which runs the step on the fused kernel its manifest names):
- load: the step function loaded and ready for a first call: the ONNX session in this process; the kernel in a
  fresh process, numba's import included, with its machine code from numba's cache (and once with an empty
  cache: the compile a machine pays once);
- 1 stream with --threads threads (one core: 1), and --many concurrent one-stream requests with
  --many-threads threads (default: every core) through `Engine.sample` (continuous batching: the concurrent
  requests share each step call), --seconds of audio each;
- the first 100 ms chunk of one `Engine.sample_stream`, with --threads threads.

    .venv/bin/python benchmarks/wavenet_speed.py [--threads 1] [--many-threads 0] [--seconds 2] [--json out.json]
"""

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import Served, describe_environment, environment, markdown_table, set_threads, time_call, write_json

from service.engine.kernels.dilated_stack import Kernel
from service.engine.runtimes import load_function
from training.export import export_function
from training.families.wavenet import (
    START,
    Step,
    WaveNet,
    WaveNetConfig,
    initial_state,
    kernel_weights,
    sample_fast,
    sample_naive,
)

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


def kernel_seconds_per_sample(model: WaveNet, samples: int) -> tuple[float, bool]:
    """The fused kernel at batch 1, K per call: (seconds per sample, its codes == sample_fast's)."""
    kernel = Kernel({n: w.numpy() for n, w in kernel_weights(model).items()}, threads=1)
    k, noise = model.config.chunk, torch.rand(1, samples, generator=torch.Generator().manual_seed(1))
    kernel.warm_up()

    def generate() -> np.ndarray:
        x, queue, chunks = np.full((1, k), START, np.int64), np.zeros([1, *kernel.queue_shape], np.float32), []
        for i in range(0, samples, k):
            x, queue = kernel.step(x, queue, noise[:, i: i + k].numpy(), np.ones(1, np.float32), np.zeros(1, np.int64))
            chunks.append(x)
        return np.concatenate(chunks, axis=1)

    fast = sample_fast(model, torch.zeros(1, dtype=torch.long), noise, torch.ones(1))
    same = np.array_equal(generate(), fast.numpy())
    return time_call(generate, 3).median / samples, same


def part_one(threads: int, samples: int) -> dict:
    torch.manual_seed(0)
    model = WaveNet(RECEPTIVE).eval()
    if not check_fast_equals_naive(model):
        print("error: sample_fast differs from sample_naive under the same noise", file=sys.stderr)
        sys.exit(1)
    naive = naive_seconds_per_sample(model, repeats=20)
    eager = fast_eager_seconds_per_sample(model, samples)
    kernel, same = kernel_seconds_per_sample(model, samples)
    if not same:
        print("error: the fused kernel's codes differ from sample_fast's under the same noise", file=sys.stderr)
        sys.exit(1)
    with tempfile.TemporaryDirectory() as folder:
        session = onnx_step_session(model, Path(folder), threads)
        onnx = fast_onnx_seconds_per_sample(session, RECEPTIVE, samples)
    return {"receptive_field": RECEPTIVE.receptive_field, "naive_s_per_sample": naive,
            "fast_eager_s_per_sample": eager, "fast_onnx_s_per_sample": onnx, "fast_kernel_s_per_sample": kernel}


def step_load_seconds(directory: Path, runtime: str, threads: int) -> float:
    """Load the step function on `runtime` and make it ready for a first call (a kernel: compiled or cached)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    start = time.perf_counter()
    function = load_function("sample_step", manifest["functions"]["sample_step"], directory, runtime, threads)
    getattr(function, "compiled", None) and function.compiled.join()
    return time.perf_counter() - start


COLD = """import json, sys, time; sys.path.insert(0, {root!r}); start = time.perf_counter()
from pathlib import Path; from service.engine.runtimes import load_function
d = Path({directory!r}); entry = json.loads((d / "manifest.json").read_text())["functions"]["sample_step"]
load_function("sample_step", entry, d, "onnx", 1).compiled.join(); print(time.perf_counter() - start)"""


def kernel_load_seconds(directory: Path) -> tuple[float, float]:
    """The kernel's load in a fresh process (numba imported, the weights read, the loop ready): (with an empty
    numba cache, so compiling it; then again in another fresh process, from the cache the first one wrote)."""
    root = str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        cold, warm = (float(subprocess.run([sys.executable, "-c", COLD.format(root=root, directory=str(directory))],
                                           check=True, capture_output=True, text=True, env=env).stdout.split()[-1])
                      for _ in range(2))
    return cold, warm


def streams(served: Served, name: str, seconds: float, n: int) -> float:
    """Wall seconds for n concurrent one-stream requests of `seconds` of audio each."""
    rate = served.manifest["data"]["sample_rate"]

    async def concurrent() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(served.engine.sample(name, 1, seed, 1.0, 0, length=round(seconds * rate))
                               for seed in range(n)))
        return time.perf_counter() - start

    return served.run(concurrent())


def first_chunk_seconds(served: Served, name: str) -> float:
    rate = served.manifest["data"]["sample_rate"]

    async def first() -> float:
        start = time.perf_counter()
        stream = served.engine.sample_stream(name, 1, 0, 1.0, 0, length=rate, chunk=rate // 10)
        await anext(stream)
        elapsed = time.perf_counter() - start
        await stream.aclose()
        return elapsed

    return min(served.run(first()) for _ in range(3))


def unrolled_store(directory: Path, folder: Path) -> Path:
    """A copy of the model's store entry whose sample_step.onnx is the step as shipped before issue 16: all K
    samples unrolled in one graph, traced from the model's own weights (read off its TorchScript step)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    entry = manifest["functions"]["sample_step"]
    scripted = torch.jit.load(str(directory / entry["files"]["torchscript"]))
    weights = {key.split("step.model.", 1)[1]: value for key, value in scripted.state_dict().items()
               if "step.model." in key}
    config = WaveNetConfig(num_classes=len(manifest["data"]["classes"]), **manifest["provenance"]["config"]["model"])
    model = WaveNet(config).eval()
    model.load_state_dict(weights)
    out = folder / directory.parent.name / directory.name
    out.mkdir(parents=True)
    for f in directory.iterdir():
        (out / f.name).symlink_to(f.resolve())
    (out / "sample_step.onnx").unlink()
    b, k = 2, config.chunk
    chunk = torch.full((b, k), START, dtype=torch.long)
    inputs = (chunk, *initial_state(Step(model), b).values(), torch.rand(b, k), torch.ones(b),
              torch.zeros(b, dtype=torch.long), chunk, torch.zeros_like(chunk))
    names = [spec["name"] for spec in entry["inputs"]]
    outputs = [spec["name"] for spec in entry["outputs"]]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Step(model), inputs, str(out / "sample_step.onnx"), dynamo=False, opset_version=17,
                          input_names=names, output_names=outputs,
                          dynamic_axes={n: {0: "batch"} for n in [*names, *outputs]})
    manifest["files"]["sample_step.onnx"] = hashlib.sha256((out / "sample_step.onnx").read_bytes()).hexdigest()
    (out / "manifest.json").unlink()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def measure(models: str, name: str, runtime: str, threads: int, many_threads: int, seconds: float,
            many: int) -> dict:
    """One runtime of the served model: first 100 ms chunk, 1 stream on `threads`, `many` on `many_threads`."""
    row = {}
    one = Served(models, name, runtime, threads)
    streams(one, name, 0.1, 1)  # warm-up: sessions, compiled kernel, first batchers
    row["first_chunk_100ms_s"] = first_chunk_seconds(one, name)
    row["one_stream_wall_s"] = streams(one, name, seconds, 1)
    one.close()
    several = Served(models, name, runtime, many_threads)
    streams(several, name, 0.1, many)
    row["many_streams_wall_s"] = streams(several, name, seconds, many)
    several.close()
    row["rtf_one"] = seconds / row["one_stream_wall_s"]
    row["rtf_many_total"] = many * seconds / row["many_streams_wall_s"]
    return row


def part_two(models: str, name: str, runtimes: list[str], threads: int, many_threads: int, seconds: float,
             many: int) -> dict:
    """Each runtime of the model's step; "unrolled" is "onnx-graph" on a copy of the store whose ONNX step is the
    one shipped before issue 16 (all K samples unrolled)."""
    directory = max((Path(models) / name).glob("*/manifest.json"), key=lambda p: int(p.parent.name)).parent
    results = {"model": str(directory), "seconds_per_stream": seconds, "streams": many, "threads": threads,
               "many_threads": many_threads, "runtimes": {}}
    if "onnx" in runtimes:
        results["kernel_cold_load_s"], results["kernel_warm_load_s"] = kernel_load_seconds(directory)
    with tempfile.TemporaryDirectory() as folder:
        for runtime in runtimes:
            store = str(unrolled_store(directory, Path(folder))) if runtime == "unrolled" else models
            served_runtime = "onnx-graph" if runtime == "unrolled" else runtime
            entry = Path(store) / directory.parent.name / directory.name
            in_process = step_load_seconds(entry, served_runtime, threads)
            row = {"step_load_s": results["kernel_warm_load_s"] if runtime == "onnx" else in_process}
            row |= measure(store, name, served_runtime, threads, many_threads, seconds, many)
            results["runtimes"][runtime] = row
    return results


RUNTIME_NAMES = {"unrolled": "ONNX step, {k} samples unrolled (before issue 16)",
                 "onnx-graph": "ONNX step, Loop over chunks of 20 (--runtime onnx-graph)",
                 "onnx": "fused kernel dilated_gated_stack (default runtime)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default: %(default)s)")
    parser.add_argument("--many-threads", type=int, default=0,
                        help="threads for the concurrent streams (default: 0, every core)")
    parser.add_argument("--samples", type=int, default=1600, help="part 1: samples generated per timing")
    parser.add_argument("--models", default="models")
    parser.add_argument("--name", default="wavenet")
    parser.add_argument("--runtimes", nargs="+", default=["unrolled", "onnx-graph", "onnx"],
                        help="unrolled: the ONNX step as shipped before (rebuilt from the model's weights)")
    parser.add_argument("--seconds", type=float, default=2.0, help="part 2: audio seconds per stream")
    parser.add_argument("--many", type=int, default=16, help="part 2: concurrent streams")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    many_threads = args.many_threads or os.cpu_count() or 1
    env = environment(threads)
    one = part_one(threads, args.samples)
    print(f"# WaveNet speed\n\n{describe_environment(env)}\n")
    print(f"## Fast vs naive generation, batch 1, receptive field {one['receptive_field']} samples\n")
    naive = one["naive_s_per_sample"]
    rows = [["naive (network over the receptive field per sample)", f"{naive * 1e3:.2f} ms", f"{1 / naive:,.0f}", "1x"]]
    for key, label in (("fast_eager_s_per_sample", "fast, eager PyTorch (sample_fast)"),
                       ("fast_onnx_s_per_sample", f"fast, onnxruntime sample_step (K={RECEPTIVE.chunk})"),
                       ("fast_kernel_s_per_sample", f"fast, fused kernel dilated_gated_stack (K={RECEPTIVE.chunk})")):
        rows.append([label, f"{one[key] * 1e3:.3f} ms", f"{1 / one[key]:,.0f}", f"{naive / one[key]:.0f}x"])
    print(markdown_table(["method", "time per sample", "samples/s", "speed-up vs naive"], rows))
    print("\nsample_fast == sample_naive == the fused kernel under the same noise: checked")
    if not any((Path(args.models) / args.name).glob("*/manifest.json")):
        print(f"\nnote: no model {args.name!r} in {args.models}; no real-time factor", file=sys.stderr)
        write_json(args.json, {"environment": env, "fast_vs_naive": one})
        return
    two = part_two(args.models, args.name, args.runtimes, threads, many_threads, args.seconds, args.many)
    k = json.loads((Path(two["model"]) / "manifest.json").read_text())["capabilities"]["sample"]["step_shape"][0]
    print(f"\n## {two['model']}: its step on each runtime (Engine.sample, {args.seconds:g} s of audio per stream)\n")
    rows = [[RUNTIME_NAMES.get(runtime, runtime).format(k=k), f"{r['step_load_s']:.2f} s",
             f"{r['first_chunk_100ms_s'] * 1e3:.0f} ms", f"{r['rtf_one']:.2f}x", f"{r['rtf_many_total']:.1f}x"]
            for runtime, r in two["runtimes"].items()]
    print(markdown_table(["runtime", "step load", "first 100 ms chunk", f"1 stream ({threads} thread)",
                          f"{args.many} streams, total ({many_threads} threads)"], rows))
    if "kernel_cold_load_s" in two:
        print(f"\nstep load: the ONNX session created in this process; the kernel in a fresh process (numba imported, "
              f"its machine code from numba's cache). The kernel's first load on a machine (empty cache: compiled "
              f"and cached): {two['kernel_cold_load_s']:.1f} s")
    write_json(args.json, {"environment": env, "fast_vs_naive": one, "real_time": two})


if __name__ == "__main__":
    main()
