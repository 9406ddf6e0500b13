"""What a scan of the store costs (at start, and at each rescan: the repository index, each store-poll tick, a
worker's check of a version): side by side in one process, alternating, three ways of scanning every model.

- served: what the service does once its digests settled (two scans 2 s apart), reusing the digests and schema
  checks of files unchanged since;
- nothing reused: every byte hashed, every manifest validated by jsonschema-rs (as at start);
- jsonschema alone: nothing reused and every manifest validated by jsonschema (as before 2026-12-07).

    .venv/bin/python benchmarks/store_scan.py [--models-dir models] [--rounds 5]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from service.store import store as store_module  # noqa: E402

REFUSE_ALL = SimpleNamespace(is_valid=lambda manifest: False)  # so that jsonschema validates every manifest


def scan_s(store: store_module.ModelStore, way: str, served: dict) -> float:
    """Seconds of one scan of every model, the given way; `served` holds the service's own digests and passed
    manifests between its scans (the other ways start from nothing)."""
    fast = store.schema.fast
    if way == "served":
        store_module._DIGESTS, store.schema.passed = served["digests"], served["passed"]
    else:
        store_module._DIGESTS, store.schema.passed = {}, set()
    if way == "jsonschema alone":
        store.schema.fast = REFUSE_ALL
    started = time.perf_counter()
    for name in store.model_names():
        store.scan_model(name)
    elapsed = time.perf_counter() - started
    store.schema.fast = fast
    return elapsed


def settled_state(store: store_module.ModelStore) -> dict:
    """The service's state after two scans SETTLED_S apart: every unchanged file's digest may be reused."""
    served = {"digests": {}, "passed": set()}
    scan_s(store, "served", served)
    time.sleep(store_module.SETTLED_S + 0.1)
    scan_s(store, "served", served)
    return served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    store = store_module.ModelStore(args.models_dir)
    served = settled_state(store)
    times = {"served": [], "nothing reused": [], "jsonschema alone": []}
    for _ in range(args.rounds):
        for way in ("jsonschema alone", "nothing reused", "served"):
            times[way].append(scan_s(store, way, served))
    files = sum(len(entry.manifest["files"]) for entry in store.entries.values())
    print(f"{len(store.model_names())} models, {files} files; median of {args.rounds} scans, alternating")
    for way, values in times.items():
        print(f"{way:>16}: {statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
