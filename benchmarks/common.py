"""Shared helpers for the benchmarks: threads, a timer, the served engine, a markdown table, JSON output.

Run the benchmarks as scripts (`.venv/bin/python benchmarks/<name>.py`); this
module is imported from the same folder.
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass
class Timing:
    """Wall-clock seconds of the timed repeats (warm-up runs excluded)."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def repeats(self) -> int:
        return len(self.times)

    def to_dict(self) -> dict:
        return {"median_s": self.median, "min_s": min(self.times), "max_s": max(self.times),
                "repeats": self.repeats, "times_s": self.times}


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 1, budget_s: float | None = None,
              min_repeats: int = 3) -> Timing:
    """Call fn `warmup` times untimed, then `repeats` times timed with time.perf_counter.

    With budget_s, stops early once the timed calls have used that many seconds
    and at least `min_repeats` were made, so slow cases stay bounded.
    """
    for _ in range(warmup):
        fn()
    timing = Timing()
    while len(timing.times) < repeats:
        start = time.perf_counter()
        fn()
        timing.times.append(time.perf_counter() - start)
        if budget_s is not None and len(timing.times) >= min_repeats and sum(timing.times) > budget_s:
            break
    return timing


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None: keep torch's default) and return what torch uses."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def environment(threads: int) -> dict:
    """What a reader needs to compare numbers between machines."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": threads,
           "cpu_count": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor(),
           "cuda": torch.cuda.is_available()}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    return env


def describe_environment(env: dict) -> str:
    return (f"torch {env['torch']} ({env['threads']} intra-op threads), onnxruntime {env['onnxruntime']}, "
            f"python {env['python']}, {env['cpu_count']} CPUs ({env['machine']}), cuda: {env['cuda']}")


def add_common_args(parser: argparse.ArgumentParser, repeats: int | None, warmup: int = 1) -> None:
    """--run-dir, --models, --name, --threads, --json, and unless repeats is None, --repeats and --warmup."""
    parser.add_argument("--run-dir", default="runs/pixelcnn",
                        help="training run for the eager model (default: %(default)s)")
    parser.add_argument("--models", default="models", help="model store for the served path (default: %(default)s)")
    parser.add_argument("--name", default="pixelcnn", help="model name in the store (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for torch, TorchScript and onnxruntime (default: torch's default)")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats,
                            help="timed repeats; the median is reported (default: %(default)s)")
        parser.add_argument("--warmup", type=int, default=warmup,
                            help="untimed warm-up calls before timing (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    parser.add_argument("--queue-delay-us", type=int, default=None,
                        help="served path: override the manifest's max_queue_delay_us, how long the dynamic "
                             "batcher waits for a batch to fill (default: the manifest's)")


def load_eager(run_dir: str | Path):
    """(model, config, split) of a training run, or None (with a note) when there is no checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.safetensors").is_file():
        print(f"note: no checkpoint in {run_dir}; skipping the eager PyTorch rows", file=sys.stderr)
        return None
    from training.train import load_model

    return load_model(run_dir)


# A slow machine must not turn a long benchmark call into a DeadlineExceeded.
TIMEOUT_MS = 30 * 60 * 1000


class Served:
    """The served path: an Engine over one model of the store, on one runtime, driven from one event loop.

    Requests go through the engine's schedulers as the API's do, so a lone
    score request waits up to max_queue_delay_us for company before it runs.
    """

    def __init__(self, models: str | Path, name: str, runtime: str, threads: int, queue_delay_us: int | None = None):
        from service.engine.engine import Engine
        from service.settings import Settings
        from service.store import ModelStore

        store = ModelStore(Path(models))
        if name not in store.entries:
            raise KeyError(f"model {name!r} is not in the store {models} (it has {store.names()})")
        store.entries = {name: store.entries[name]}  # load only the benchmarked model
        self.name, self.runtime = name, runtime
        overrides = {"timeout_ms": TIMEOUT_MS}
        if queue_delay_us is not None:
            overrides["max_queue_delay_us"] = queue_delay_us
        settings = Settings(runtime=runtime, intra_op_threads=threads, models=Path(models), **overrides)
        self.engine = Engine(store, settings)
        self.manifest = self.engine.model(name).manifest
        self.batching = {**self.manifest["batching"], **overrides}
        self.runner = asyncio.Runner()

    def run(self, coroutine):
        return self.runner.run(coroutine)

    def close(self) -> None:
        self.runner.close()


def load_served(args: argparse.Namespace, runtimes: list[str], threads: int) -> dict[str, Served]:
    """One Served per runtime for --models/--name, or none (with a note) when the store lacks the model."""
    if not runtimes:
        return {}
    if not any((Path(args.models) / args.name).glob("*/manifest.json")):
        print(f"note: no model {args.name!r} in the store {args.models}; skipping the served rows", file=sys.stderr)
        return {}
    return {runtime: Served(args.models, args.name, runtime, threads, args.queue_delay_us) for runtime in runtimes}


def describe_served(served: dict[str, Served]) -> str:
    """One line: which model the served rows ran, and the batching knobs in force."""
    s = next(iter(served.values()))
    b = s.batching
    return (f"served model: {s.engine.model(s.name).entry.directory} via Engine ({', '.join(served)}); "
            f"max_batch_size {b['max_batch_size']}, max_queue_delay_us {b['max_queue_delay_us']}")


def served_info(served: dict[str, Served]) -> dict | None:
    """For the JSON: the served model's directory, runtimes and batching knobs."""
    if not served:
        return None
    s = next(iter(served.values()))
    return {"directory": str(s.engine.model(s.name).entry.directory), "runtimes": list(served),
            "batching": s.batching}


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; numbers should already be formatted as strings."""
    cells = [[str(c).replace("|", "\\|") for c in row] for row in rows]  # a bare | would split the cell
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join(lines)


def write_json(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable))
    print(f"\nwrote {path}")


def _jsonable(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def fmt(value: float, digits: int = 3) -> str:
    """Seconds, rates and ratios with about `digits` significant figures."""
    if value == 0 or not (abs(value) < float("inf")):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
