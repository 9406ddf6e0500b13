"""What a rescan of the store costs (the repository index, each store-poll tick, a worker's check of a version):
side by side in one process, alternating, a rescan of every model that reuses the digests and schema checks of
unchanged files (what the service does) against one that forgets them first (every byte hashed, every manifest
validated, as before 2026-12-07).

    .venv/bin/python benchmarks/store_scan.py [--models-dir models] [--rounds 5]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from service.store import store as store_module  # noqa: E402


def rescan_s(store: store_module.ModelStore, forget: bool) -> float:
    """Seconds of one scan of every model, after forgetting every digest and validation if `forget`."""
    if forget:
        store_module._DIGESTS.clear()
        store.valid_manifests.clear()
    started = time.perf_counter()
    for name in store.model_names():
        store.scan_model(name)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    store = store_module.ModelStore(args.models_dir)
    times = {"reused": [], "forgotten": []}
    for _ in range(args.rounds):
        times["forgotten"].append(rescan_s(store, forget=True))
        times["reused"].append(rescan_s(store, forget=False))
    files = sum(len(entry.manifest["files"]) for entry in store.entries.values())
    print(f"{len(store.model_names())} models, {files} files; median of {args.rounds} rescans, alternating")
    for kind, values in times.items():
        print(f"{kind:>9}: {statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main()
