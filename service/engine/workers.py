"""Where the models run: in engine worker processes (serving), or in the calling process (tests, benchmarks).

Both runners have one call, `await runner.call(model, function, feeds) -> outputs`, which the
engine's schedulers make once per batch or step, and `await runner.procedure(model, request, arrays)`,
which runs a whole iterative procedure (a Markov chain, posterior refinement, an importance-weighted bound)
beside the runtimes (service.engine.worker_procedures: its state never crosses processes). The other
schedulers stay in the API process, next to the requests they serve.

WorkerPool starts one worker process per visible CUDA device, else one CPU worker. A call
travels over a Unix socket (service.engine.channel) as a JSON header frame and one raw buffer frame per
tensor: no pickle on the hot path, and the receiver's arrays view the message's bytes. When a worker
dies its in-flight calls fail at once with WorkerLost (503; gRPC UNAVAILABLE) and it is started
again; a worker that takes longer than call_timeout_s over one call is killed, which takes the
same path. While no worker is up, ready() is False and a new call waits (at most
wait_for_worker_s) for one to come back, so requests still queued in a scheduler run on the
restarted worker instead of failing.
"""

import asyncio
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from service import event_loop, logs
from service.engine import channel
from service.engine.errors import EngineError, UnknownModel, VersionGone, WorkerLost
from service.engine.runtimes import TensorFunction, import_torch, load_function
from service.engine.worker_procedures import ProcedureFailed, WorkerProcedures, refusal
from service.settings import Settings
from service.store.store import StoreError, manifest_digest, verify_files

log = logging.getLogger("genserve.workers")

Arrays = dict[str, np.ndarray]
RESTART_BACKOFF_S = (0.0, 1.0, 2.0, 5.0, 10.0)  # restart delay: a worker that was up died, then 1, 2, ... failed starts


class Functions:
    """Every function of every model, (model, function) -> its loaded runtime, each loaded on first use.

    preload() loads them all, in manifest order; a call that needs a function not loaded yet loads it
    at once (or waits for the preload that is loading it), so a worker can answer before all are loaded.
    A model is named as `directories` names it, or by a version's id (version_id(): a version loaded after the
    start, service.api.repository), which is read on first use, and again after forget() frees its runtimes: it
    runs only if its manifest is still the one loaded and every file still has the sha256 that manifest lists.
    """

    def __init__(self, directories: dict[str, Path], runtime: str, threads: int, device: int | None):
        self.runtime, self.threads, self.device = runtime, threads, device
        self.specs: dict[tuple[str, str], tuple[dict, Path]] = {}
        self.locks: dict[tuple[str, str], threading.Lock] = {}
        for model, directory in directories.items():
            self._add(model, Path(directory), json.loads((Path(directory) / "manifest.json").read_text()))
        self.loaded: dict[tuple[str, str], TensorFunction] = {}
        self.verified: set[str] = set()  # version ids checked since their last forget()
        self.adding = threading.Lock()

    def _add(self, model: str, directory: Path, manifest: dict) -> None:
        for name, spec in manifest["functions"].items():
            self.specs[model, name] = (spec, directory)
            self.locks.setdefault((model, name), threading.Lock())

    def _add_version(self, version: str) -> None:
        """A version named by its id, if its manifest is still the one the id names and every file it lists still
        has its sha256 (hashed once, in this process: what the load certified is what runs)."""
        directory, _, digest = version.rpartition("@")
        try:
            manifest = json.loads((Path(directory) / "manifest.json").read_text())
        except (OSError, ValueError) as e:  # gone, being written
            why = getattr(e, "strerror", None) or e
            raise version_changed(directory, f"its manifest cannot be read: {why}") from None
        if manifest_digest(manifest) != digest:
            raise version_changed(directory, "its manifest is not the one loaded")
        try:
            verify_files(Path(directory), manifest)
        except (OSError, StoreError) as e:
            raise version_changed(directory, str(e)) from None
        self._add(version, Path(directory), manifest)

    def __getitem__(self, key: tuple[str, str]) -> TensorFunction:
        model = key[0]
        if model not in self.verified and "@" in model and Path(model).is_absolute():  # a version_id
            with self.adding:
                if model not in self.verified:
                    self._add_version(model)
                    for each in [k for k in self.specs if k[0] == model]:  # every runtime from the files just checked,
                        self._load(each)  # not one read later, when a file may have changed
                    self.verified.add(model)
        return self._load(key)

    def _load(self, key: tuple[str, str]) -> TensorFunction:
        if (function := self.loaded.get(key)) is None:  # (forget() may drop it from another thread)
            with self.locks[key]:  # KeyError for a function no model has
                if (function := self.loaded.get(key)) is None:
                    spec, directory = self.specs[key]
                    function = self.loaded[key] = load_function(key[1], spec, directory, self.runtime, self.threads,
                                                                self.device)
        return function

    def preload(self) -> None:
        for key in list(self.specs):  # a call may add a version meanwhile
            self[key]

    def forget(self, model: str) -> None:
        """Free the runtimes loaded for `model` (a version no longer served) and, for a version id, what this process
        knows of it; a call that names it checks and loads them again."""
        self.verified.discard(model)
        for key in [key for key in list(self.loaded) if key[0] == model]:
            self.loaded.pop(key, None)
        if "@" in model:  # a version id: its manifest's entries go too (a model named at the start keeps them)
            for key in [key for key in list(self.specs) if key[0] == model]:
                self.specs.pop(key, None)
                self.locks.pop(key, None)


def version_id(directory: Path, manifest: dict) -> str:
    """How a runner knows a version loaded after the start: its directory and its manifest's digest (which holds
    every file's sha256), so a version whose files were replaced is a new id, never the runtimes of the old files."""
    return f"{Path(directory).resolve()}@{manifest_digest(manifest)}"


def version_changed(directory: str, why: str) -> UnknownModel:
    """The refusal of a call on a version whose directory changed or went since it was loaded."""
    path = Path(directory)
    return UnknownModel(f"version: model {path.parent.name!r} version {path.name}: its files in the store are gone "
                        f"or changed since it was loaded ({why}); load the model again", field="version")


class InProcess:
    """Runs the functions in this process, on a thread (the runtimes release the GIL)."""

    def __init__(self, directories: dict[str, Path], runtime: str, threads: int = 0):
        self.functions = Functions(directories, runtime, threads, None)
        self.functions.preload()
        self.procedures: WorkerProcedures | None = None
        self.procedures_loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Nothing to start: the functions were loaded in __init__."""

    async def stop(self) -> None:
        """Nothing to stop."""

    def ready(self) -> bool:
        return True

    async def call(self, model: str, function: str, feeds: Arrays) -> Arrays:
        try:
            return await asyncio.to_thread(lambda: self.functions[model, function](**feeds))
        except UnknownModel as e:  # a version whose files went or changed: as a worker's refusal reads (refusal())
            raise VersionGone(e.message, e.field) from None

    def forget(self, model: str) -> None:
        self.functions.forget(model)

    async def procedure(self, model: str, request: dict, arrays: Arrays) -> tuple[Arrays, dict]:
        """An iterative procedure's outputs and its schedulers' events (service.engine.worker_procedures)."""
        loop = asyncio.get_running_loop()
        if self.procedures is None or self.procedures_loop is not loop:  # its schedulers belong to one event loop
            self.procedures, self.procedures_loop = WorkerProcedures(self.call), loop
        return await self.procedures.run(model, request, arrays)


# --- the wire format -------------------------------------------------------------------------------------------------


def pack(header: dict, arrays: Arrays) -> list:
    """[JSON header with each tensor's name, dtype and shape, then each tensor's raw bytes (a flat uint8 view)]."""
    arrays = {name: np.asarray(a, order="C") for name, a in arrays.items()}  # (ascontiguousarray makes 0-d 1-d)
    header = {**header, "tensors": [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]}
    return [json.dumps(header).encode(), *(a.reshape(-1).view(np.uint8) for a in arrays.values())]


def unpack(frames: list) -> tuple[dict, Arrays]:
    """The header and the tensors of a packed message; the arrays view the frames' memory (no copy)."""
    header = json.loads(bytes(frames[0]))
    arrays = {name: np.frombuffer(frame, np.dtype(dtype)).reshape(shape)
              for (name, dtype, shape), frame in zip(header.pop("tensors"), frames[1:], strict=True)}
    return header, arrays


# --- the worker process ----------------------------------------------------------------------------------------------


def worker_main(address: str, directories: dict[str, str], runtime: str, threads: int, device: int | None) -> None:
    """Entry point of a worker process: answer calls until the API process closes the connection, loading every model's
    functions meanwhile (a call loads the function it needs first, if the preload has not reached it yet)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C drains the API process, which then stops its workers
    logs.configure(Settings().log_format, f"%(asctime)s %(levelname)s worker[{os.getpid()}]: %(message)s")
    functions = Functions({m: Path(d) for m, d in directories.items()}, runtime, threads, device)
    threading.Thread(target=_preload, args=(functions,), name="preload", daemon=True).start()
    event_loop.run(_answer_calls(address, functions))
    os._exit(0)  # nothing to flush; a shutdown would wait on (or abort in) a preload still loading a model


def _preload(functions: Functions) -> None:
    start = time.monotonic()
    functions.preload()
    log.info("all %d functions loaded in %.1f s", len(functions.specs), time.monotonic() - start)


async def _answer_calls(address: str, functions: Functions) -> None:
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="run")
    loop = asyncio.get_running_loop()

    async def call(model: str, function: str, feeds: Arrays) -> Arrays:
        return await loop.run_in_executor(pool, lambda: functions[model, function](**feeds))

    procedures = WorkerProcedures(call)

    async def answer(header: dict, feeds: Arrays) -> None:
        reply_header, outputs = {"id": header["id"]}, {}
        try:
            if "procedure" in header:
                outputs, reply_header["events"] = await procedures.run(header["model"], header["procedure"], feeds)
            else:
                outputs = await call(header["model"], header["function"], feeds)
        except ProcedureFailed as e:  # refused or out of time: the caller gets the engine's own error
            reply_header.update(events=e.events, error=e.error.message, code=e.error.code, field=e.error.field)
        except EngineError as e:  # a version whose files changed since its load (Functions)
            reply_header.update(error=e.message, code=e.code, field=e.field)
        except Exception as e:  # noqa: BLE001 - the caller gets the error, the worker lives on
            reply_header["error"] = f"{type(e).__name__}: {e}"
        with contextlib.suppress(ConnectionError):  # the API process has gone: nobody to answer
            connection.send(pack(reply_header, outputs))

    tasks: dict[int, asyncio.Task] = {}

    def received(frames: list) -> None:
        header, feeds = unpack(frames)
        if "cancel" in header:  # the caller went away: its procedure leaves at the next step
            if (task := tasks.get(header["cancel"])) is not None:
                task.cancel()
            return
        if "forget" in header:  # a version no longer served
            functions.forget(header["forget"])
            return
        task = tasks[header["id"]] = asyncio.create_task(answer(header, feeds))
        task.add_done_callback(lambda _, call_id=header["id"]: tasks.pop(call_id, None))

    connection = await channel.connect(address, received)
    connection.send(pack({"ready": True}, {}))  # no call comes before it, so `connection` is set when one does
    await connection.closed  # the API process closed it, or died: the worker exits


# --- the API side ----------------------------------------------------------------------------------------------------


def visible_cuda_devices(runtime: str) -> list[int]:
    """CUDA device indices the runtime can use: none without a GPU build of the runtime and a GPU."""
    if runtime == "torchscript":
        return list(range(import_torch().cuda.device_count()))
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

    def __init__(self, device: int | None, pool: "WorkerPool"):
        self.device, self.pool = device, pool
        self.label = "cpu" if device is None else f"cuda:{device}"
        self.up = False
        self.stopping = False
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count()
        self.generation = 0
        self.failed_starts = 0
        self.process: multiprocessing.Process | None = None
        self.started_at = 0.0
        self.listener: asyncio.AbstractServer | None = None
        self.channel: channel.Channel | None = None  # once the process connects
        self.address = ""

    async def start(self) -> None:
        """Listen, spawn the process; up turns True when it answers (it loads the models meanwhile: Functions)."""
        self.generation += 1
        self.address = f"{self.pool.sockets_dir}/{self.label.replace(':', '')}-{self.generation}"
        self.listener = await channel.listen(self.address, self._received, self._connected)
        if self.stopping:  # stop() came while listening
            self.listener.close()
            return
        self.process = self.pool.spawn(self.address, self.device)
        try:
            self.process.start()
        except BaseException:
            self.listener.close()
            raise
        self.started_at = time.monotonic()
        asyncio.get_running_loop().add_reader(self.process.sentinel, self._died)
        log.info("engine worker %s: started, pid %d", self.label, self.process.pid)

    def _connected(self, connection: channel.Channel) -> None:
        self.channel = connection  # the socket is in a private folder: only the worker connects

    def _received(self, frames: list) -> None:
        """An answer (or the worker's first message, ready): to the call waiting for it, if it still is."""
        try:
            header, outputs = unpack(frames)
            if header.get("ready"):
                self.up, self.failed_starts = True, 0
                self.pool.worker_up.set()
                log.info("engine worker %s: ready in %.1f s", self.label, time.monotonic() - self.started_at)
                return
            future = self.pending.pop(header["id"], None)
        except Exception:  # a message that is not an answer: the worker cannot be trusted, kill it (and restart)
            log.exception("engine worker %s: unreadable answer; killing it", self.label)
            self.process.kill()
            return
        if future is None or future.done():
            return  # its caller has gone
        if "code" in header:
            error = refusal(header["code"], header["error"], header["field"])
            future.set_exception(ProcedureFailed(error, header["events"]) if "events" in header else error)
        elif "error" in header:
            future.set_exception(RuntimeError(f"engine worker {self.label}: {header['error']}"))
        else:
            future.set_result((header, outputs))

    def _died(self) -> None:
        """The process exited: fail its in-flight calls now, then start it again (unless stopping)."""
        asyncio.get_running_loop().remove_reader(self.process.sentinel)
        self.process.join()
        code, was_up = self.process.exitcode, self.up
        self.up = False
        self.listener.close()
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        Path(self.address).unlink(missing_ok=True)
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
        self.pool.on_restart()
        self._restart_later()

    def _restart_later(self) -> None:
        """Start the worker again after the backoff its failed starts so far call for."""
        delay = RESTART_BACKOFF_S[min(self.failed_starts, len(RESTART_BACKOFF_S) - 1)]
        asyncio.get_running_loop().call_later(delay, self._restart)

    def _restart(self) -> None:
        if not self.stopping:
            asyncio.ensure_future(self.start()).add_done_callback(self._started)

    def _started(self, starting: asyncio.Future) -> None:
        """A restart that failed (no socket, no process) is logged and tried again after the next backoff."""
        if starting.cancelled() or starting.exception() is None:
            return
        log.error("engine worker %s: restart failed (%r); trying again", self.label, starting.exception())
        self.failed_starts += 1
        self._restart_later()

    async def call(self, model: str, function: str, feeds: Arrays) -> Arrays:
        return (await self.ask({"model": model, "function": function}, feeds))[1]

    async def procedure(self, model: str, request: dict, arrays: Arrays) -> tuple[Arrays, dict]:
        """An iterative procedure run in the worker (service.engine.worker_procedures): its outputs and its
        schedulers' events."""
        header, outputs = await self.ask({"model": model, "procedure": request}, arrays)
        return outputs, header["events"]

    async def ask(self, header: dict, arrays: Arrays) -> tuple[dict, Arrays]:
        """Send one call, wait for its answer (header, arrays); a caller that goes away cancels it in the worker."""
        call_id = next(self.ids)
        loop = asyncio.get_running_loop()
        future = self.pending[call_id] = loop.create_future()
        timer = loop.call_later(self.pool.call_timeout_s, self._timed_out, future)
        try:
            try:
                if self.channel is None:
                    raise ConnectionError
                self.channel.send(pack({**header, "id": call_id}, arrays))
            except ConnectionError:  # the worker has just died; _died() has run, or soon will
                raise WorkerLost(f"engine worker {self.label} exited; retry shortly") from None
            return await future
        except asyncio.CancelledError:
            if self.up and self.channel is not None:
                with contextlib.suppress(ConnectionError):  # a worker that is going has nothing to cancel
                    self.channel.send(pack({"cancel": call_id}, {}))
            raise
        finally:
            timer.cancel()
            self.pending.pop(call_id, None)

    def _timed_out(self, future: asyncio.Future) -> None:
        """A call went unanswered for call_timeout_s: kill the worker (_died() fails every call in flight and
        restarts it); this call fails now."""
        if future.done():
            return
        log.error("engine worker %s: no answer in %.0f s; killing it", self.label, self.pool.call_timeout_s)
        self.up = False  # not ready from now on, not only once _died() has run
        self.process.kill()
        future.set_exception(WorkerLost(f"engine worker {self.label} did not answer in {self.pool.call_timeout_s:.0f}"
                                        " s and was restarted; retry shortly"))

    async def stop(self) -> None:
        self.stopping = True
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            await asyncio.to_thread(self.process.join, 10)
            if self.process.is_alive():
                self.process.kill()
        if self.listener is not None:
            self.listener.close()


class WorkerPool:
    """One worker process per visible CUDA device, else one CPU worker."""

    def __init__(self, directories: dict[str, Path], runtime: str, threads: int = 0,
                 on_restart: Callable[[], None] = lambda: None, call_timeout_s: float = 300.0,
                 wait_for_worker_s: float = 30.0):
        """on_restart() is called each time a worker dies and is started again."""
        self.directories = {model: str(directory) for model, directory in directories.items()}
        self.runtime, self.threads, self.on_restart = runtime, threads, on_restart
        self.call_timeout_s, self.wait_for_worker_s = call_timeout_s, wait_for_worker_s
        self.sockets_dir = tempfile.mkdtemp(prefix="genserve-")
        self.worker_up = asyncio.Event()  # set whenever a worker reports that it answers calls
        self.workers = [Worker(device, self) for device in (visible_cuda_devices(runtime) or [None])]

    def spawn(self, address: str, device: int | None) -> multiprocessing.Process:
        args = (address, self.directories, self.runtime, self.threads, device)
        return multiprocessing.get_context("spawn").Process(target=worker_main, args=args, daemon=True,
                                                            name=f"genserve-worker-{device}")

    async def start(self) -> None:
        """Spawn every worker without waiting for them: ready() says when they are up."""
        for worker in self.workers:
            await worker.start()

    def ready(self) -> bool:
        """True when every worker answers calls (False while one restarts); models it has not loaded yet load
        on first use."""
        return all(worker.up for worker in self.workers)

    async def _worker(self) -> Worker:
        """The least busy worker that is up; while none is (starting, restarting), wait for one, bounded."""
        deadline = time.monotonic() + self.wait_for_worker_s
        while not (up := [worker for worker in self.workers if worker.up]):
            self.worker_up.clear()
            try:
                await asyncio.wait_for(self.worker_up.wait(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise WorkerLost(f"no engine worker came up in {self.wait_for_worker_s:.0f} s; retry later") from None
        return min(up, key=lambda w: len(w.pending))

    async def call(self, model: str, function: str, feeds: Arrays) -> Arrays:
        return await (await self._worker()).call(model, function, feeds)

    async def procedure(self, model: str, request: dict, arrays: Arrays) -> tuple[Arrays, dict]:
        """An iterative procedure run in a worker, beside the runtime: its outputs and its schedulers' events."""
        return await (await self._worker()).procedure(model, request, arrays)

    def forget(self, model: str) -> None:
        """Free a version's runtimes in every worker that is up; a worker started from now on does not load it."""
        self.directories.pop(model, None)
        for worker in self.workers:
            if worker.up and worker.channel is not None:
                with contextlib.suppress(ConnectionError):
                    worker.channel.send(pack({"forget": model}, {}))

    async def stop(self) -> None:
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        shutil.rmtree(self.sockets_dir, ignore_errors=True)
