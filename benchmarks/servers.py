"""A real `genserve serve` on free ports of 127.0.0.1, for the benchmarks that drive one (fuzz, soak,
memory_lengths): start it, wait until it is ready, stop it, and read its processes' memory.

No torch here: fuzz.py is also schemathesis' hooks module, and none of these scripts needs it.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
GENSERVE = Path(sys.executable).parent / "genserve"  # this venv's CLI


def revision() -> str:
    """The commit under test, and whether tracked files differ from it (others may be editing the checkout)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes in the working tree" if dirty else "")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reduced_store(models: Path, only: list[str], into: Path) -> Path:
    """A store of links to the named models of `models` (and its evaluation/ folder, if any)."""
    store = into / "models"
    store.mkdir()
    for name in [*only, "evaluation"]:
        if (models / name).exists():
            (store / name).symlink_to((models / name).resolve())
        elif name != "evaluation":
            sys.exit(f"no model {name!r} in {models}")
    return store


def start_server(store: Path, port: int, grpc_port: int, log: Path, env: dict[str, str] | None = None
                 ) -> subprocess.Popen:
    """`genserve serve` over `store`, one intra-op thread, its stdout and stderr into `log`; `env` is added to a
    copy of this process's environment without its GENSERVE_* settings."""
    command = [str(GENSERVE), "serve", "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port),
               "--models", str(store)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_") and k != "SCHEMATHESIS_HOOKS"}
    clean.update(GENSERVE_INTRA_OP_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    print("$ " + " ".join(command), flush=True)
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=REPO, env=clean | (env or {}), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=5.0).status_code == 200
    except httpx.TransportError:
        return False


def wait_ready(process: subprocess.Popen, base: str, log: Path, timeout_s: float = 180.0) -> None:
    """Wait until the server at `base` answers /readyz 200; exit with the tail of its log if it dies or stalls."""
    deadline = time.monotonic() + timeout_s
    while not ready(base):
        if process.poll() is not None:
            sys.exit(f"the server exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            sys.exit(f"the server was not ready in {timeout_s:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)


def stop(process: subprocess.Popen, drain_s: float = 60.0) -> None:
    """SIGTERM (the server drains), then SIGKILL after drain_s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=drain_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (FileNotFoundError, ProcessLookupError):
        return None


def worker_pid(api_pid: int) -> int | None:
    """The engine worker: the API process's multiprocessing child (not its resource tracker)."""
    try:
        children = Path(f"/proc/{api_pid}/task/{api_pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    for child in children:
        try:
            if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text():
                return int(child)
        except FileNotFoundError:
            continue
    return None
