"""Where the models run: in engine worker processes (serving), or in the calling process (tests, benchmarks).

Both runners have one call, `await runner.call(model, function, feeds) -> outputs`, which the
engine's schedulers make once per batch or step. The schedulers stay in the API process, next to
the requests they serve; a worker holds only the loaded runtimes and runs what it is sent.

WorkerPool starts one worker process per visible CUDA device, else one CPU worker. A call
travels over zmq (ipc://) as a JSON header frame and one raw buffer frame per tensor: no
pickle on the hot path, and the receiver wraps the frames without copying them. When a worker
dies its in-flight calls fail at once with WorkerLost (503; gRPC UNAVAILABLE) and it is started
again; until it is up, ready() is False and calls fail fast. Requests still queued in a
scheduler are not lost: they run on the restarted worker.
"""

import asyncio
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from service.engine.errors import WorkerLost
from service.engine.runtimes import TensorFunction, load_function

log = logging.getLogger("genserve.workers")

Arrays = dict[str, np.ndarray]
RESTART_BACKOFF_S = (0.0, 1.0, 2.0, 5.0, 10.0)  # after the 1st, 2nd, ... consecutive failed start


def load_functions(directories: dict[str, Path], runtime: str, threads: int,
                   device: int | None) -> dict[tuple[str, str], TensorFunction]:
    """Every function of every model: (model, function) -> its loaded runtime."""
    loaded = {}
    for model, directory in directories.items():
        manifest = json.loads((Path(directory) / "manifest.json").read_text())
        for name, spec in manifest["functions"].items():
            loaded[model, name] = load_function(name, spec, Path(directory), runtime, threads, device)
    return loaded


class InProcess:
    """Runs the functions in this process, on a thread (the runtimes release the GIL)."""

    def __init__(self, directories: dict[str, Path], runtime: str, threads: int = 0):
        self.functions = load_functions(directories, runtime, threads, None)

    async def start(self) -> None:
        """Nothing to start: the functions were loaded in __init__."""

    async def stop(self) -> None:
        """Nothing to stop."""

    def ready(self) -> bool:
        return True

    async def call(self, model: str, function: str, feeds: Arrays) -> Arrays:
        return await asyncio.to_thread(lambda: self.functions[model, function](**feeds))


# --- the wire format -------------------------------------------------------------------------------------------------


def pack(header: dict, arrays: Arrays) -> list:
    """[JSON header with each tensor's name, dtype and shape, then each tensor's raw bytes]."""
    arrays = {name: np.asarray(a, order="C") for name, a in arrays.items()}  # (ascontiguousarray makes 0-d 1-d)
    header = {**header, "tensors": [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]}
    return [json.dumps(header).encode(), *arrays.values()]


def unpack(frames: list) -> tuple[dict, Arrays]:
    """The header and the tensors of a packed message; the arrays view the frames' memory (no copy)."""
    header = json.loads(bytes(frames[0].buffer))
    arrays = {name: np.frombuffer(frame.buffer, np.dtype(dtype)).reshape(shape)
              for (name, dtype, shape), frame in zip(header.pop("tensors"), frames[1:], strict=True)}
    return header, arrays


# --- the worker process ----------------------------------------------------------------------------------------------


def worker_main(address: str, directories: dict[str, str], runtime: str, threads: int, device: int | None) -> None:
    """Entry point of a worker process: load the models, then answer calls until the API process goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C drains the API process, which then stops its workers
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s worker[{os.getpid()}]: %(message)s")
    functions = load_functions({m: Path(d) for m, d in directories.items()}, runtime, threads, device)
    asyncio.run(_answer_calls(address, functions, os.getppid()))


async def _answer_calls(address: str, functions: dict[tuple[str, str], TensorFunction], parent: int) -> None:
    import zmq
    import zmq.asyncio

    socket = zmq.asyncio.Context().socket(zmq.DEALER)
    socket.connect(address)
    await socket.send_multipart(pack({"ready": True}, {}))
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="run")
    loop = asyncio.get_running_loop()

    async def answer(frames: list) -> None:
        header, feeds = unpack(frames)
        try:
            outputs = await loop.run_in_executor(pool, lambda: functions[header["model"], header["function"]](**feeds))
            reply = pack({"id": header["id"]}, outputs)
        except Exception as e:  # noqa: BLE001 - the caller gets the error, the worker lives on
            reply = pack({"id": header["id"], "error": f"{type(e).__name__}: {e}"}, {})
        await socket.send_multipart(reply, copy=False)

    tasks: set[asyncio.Task] = set()
    while os.getppid() == parent:  # orphaned (the API process was killed): exit
        if await socket.poll(1000):
            task = asyncio.create_task(answer(await socket.recv_multipart(copy=False)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


# --- the API side ----------------------------------------------------------------------------------------------------


def visible_cuda_devices(runtime: str) -> list[int]:
    """CUDA device indices the runtime can use: none without a GPU build of the runtime and a GPU."""
    if runtime == "torchscript":
        import torch

        return list(range(torch.cuda.device_count()))
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return list(range(len([d for d in visible.split(",") if d.strip() not in ("", "-1")])))
    if shutil.which("nvidia-smi") is None:
        return [0]
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    return list(range(sum(line.startswith("GPU ") for line in listing.splitlines())))


class Worker:
    """One worker process (restarted when it dies) and the socket the API process talks to it on."""

    def __init__(self, device: int | None, spawn: Callable[[str, int | None], multiprocessing.Process],
                 on_restart: Callable[[], None], sockets_dir: str):
        self.device, self.spawn, self.on_restart, self.sockets_dir = device, spawn, on_restart, sockets_dir
        self.label = "cpu" if device is None else f"cuda:{device}"
        self.up = False
        self.stopping = False
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count()
        self.generation = 0
        self.failed_starts = 0
        self.process: multiprocessing.Process | None = None
        self.started_at = 0.0
        self.socket = None
        self.reader: asyncio.Task | None = None

    def start(self) -> None:
        """Spawn the process; up turns True when it reports its models loaded."""
        import zmq
        import zmq.asyncio

        self.generation += 1
        address = f"ipc://{self.sockets_dir}/{self.label.replace(':', '')}-{self.generation}"
        self.socket = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(address)
        self.process = self.spawn(address, self.device)
        self.process.start()
        self.started_at = time.monotonic()
        asyncio.get_running_loop().add_reader(self.process.sentinel, self._died)
        self.reader = asyncio.create_task(self._read())
        log.info("engine worker %s: started, pid %d", self.label, self.process.pid)

    async def _read(self) -> None:
        while True:
            header, outputs = unpack(await self.socket.recv_multipart(copy=False))
            if header.get("ready"):
                self.up, self.failed_starts = True, 0
                log.info("engine worker %s: ready in %.1f s", self.label, time.monotonic() - self.started_at)
                continue
            future = self.pending.pop(header["id"], None)
            if future is None or future.done():
                continue  # its caller has gone
            if "error" in header:
                future.set_exception(RuntimeError(f"engine worker {self.label}: {header['error']}"))
            else:
                future.set_result(outputs)

    def _died(self) -> None:
        """The process exited: fail its in-flight calls now, then start it again (unless stopping)."""
        asyncio.get_running_loop().remove_reader(self.process.sentinel)
        self.process.join()
        code, was_up = self.process.exitcode, self.up
        self.up = False
        self.reader.cancel()
        self.socket.close()
        lost = WorkerLost(f"engine worker {self.label} exited (code {code}) while running this request; "
                          "retry shortly")
        for future in self.pending.values():
            if not future.done():
                future.set_exception(lost)
        self.pending.clear()
        if self.stopping:
            return
        log.error("engine worker %s: exited with code %s; restarting", self.label, code)
        self.failed_starts = 0 if was_up else self.failed_starts + 1
        self.on_restart()
        delay = RESTART_BACKOFF_S[min(self.failed_starts, len(RESTART_BACKOFF_S) - 1)]
        asyncio.get_running_loop().call_later(delay, lambda: None if self.stopping else self.start())

    async def call(self, model: str, function: str, feeds: Arrays) -> Arrays:
        call_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        try:
            await self.socket.send_multipart(pack({"id": call_id, "model": model, "function": function}, feeds),
                                             copy=False)
            return await future
        finally:
            self.pending.pop(call_id, None)

    async def stop(self) -> None:
        self.stopping = True
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            await asyncio.to_thread(self.process.join, 10)
            if self.process.is_alive():
                self.process.kill()


class WorkerPool:
    """One worker process per visible CUDA device, else one CPU worker."""

    def __init__(self, directories: dict[str, Path], runtime: str, threads: int = 0,
                 on_restart: Callable[[], None] = lambda: None):
        """on_restart() is called each time a worker that died is started again."""
        self.directories = {model: str(directory) for model, directory in directories.items()}
        self.runtime, self.threads, self.on_restart = runtime, threads, on_restart
        self.sockets_dir = tempfile.mkdtemp(prefix="genserve-")
        self.workers = [Worker(device, self._spawn, on_restart, self.sockets_dir)
                        for device in (visible_cuda_devices(runtime) or [None])]

    def _spawn(self, address: str, device: int | None) -> multiprocessing.Process:
        args = (address, self.directories, self.runtime, self.threads, device)
        return multiprocessing.get_context("spawn").Process(target=worker_main, args=args, daemon=True,
                                                            name=f"genserve-worker-{device}")

    async def start(self) -> None:
        """Spawn every worker without waiting for them: ready() says when they are up."""
        for worker in self.workers:
            worker.start()

    def ready(self) -> bool:
        """True when every worker has loaded its models (False while one restarts)."""
        return all(worker.up for worker in self.workers)

    async def call(self, model: str, function: str, feeds: Arrays) -> Arrays:
        up = [worker for worker in self.workers if worker.up]
        if not up:
            raise WorkerLost("no engine worker is up (starting or restarting); retry shortly")
        worker = min(up, key=lambda w: len(w.pending))  # the least busy device
        return await worker.call(model, function, feeds)

    async def stop(self) -> None:
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        shutil.rmtree(self.sockets_dir, ignore_errors=True)
