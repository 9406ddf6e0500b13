"""`genserve serve`: build the settings, load the model store, start the engine, serve REST with uvicorn."""

import asyncio
import contextlib
import logging
from pathlib import Path

log = logging.getLogger("genserve")
DRAIN_GRACE_S = 30.0


def run(
    host: str | None = None,
    port: int | None = None,
    grpc_port: int | None = None,
    models: str | Path | None = None,
) -> None:
    """Serve the model store in `models` on host:port. Arguments left None come from GENSERVE_* / defaults."""
    from service.api import create_app
    from service.engine.engine import Engine
    from service.engine.errors import EngineError
    from service.engine.metrics import EngineMetrics
    from service.engine.workers import WorkerPool
    from service.settings import Settings
    from service.store import ModelStore, StoreError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    given = {"host": host, "port": port, "grpc_port": grpc_port, "models": models}
    settings = Settings(**{key: value for key, value in given.items() if value is not None})
    try:
        store = ModelStore(settings.models)  # refuses a file whose sha256 differs, and names it
    except StoreError as e:
        raise SystemExit(f"genserve: cannot load the model store: {e}") from e
    metrics = EngineMetrics()
    directories = {name: entry.directory for name, entry in store.entries.items()}
    workers = WorkerPool(directories, settings.runtime, settings.intra_op_threads, metrics.worker_restarted,
                         settings.worker_call_timeout_s, settings.worker_wait_s)
    try:
        engine = Engine(store, settings, metrics, runner=workers)
    except EngineError as e:
        raise SystemExit(f"genserve: cannot serve the model store: {e.detail}") from e
    log.info("model store %s: %s", settings.models, ", ".join(store.names()) or "no models")
    app = create_app(engine, settings)
    asyncio.run(serve(app, engine, settings))


async def serve(app, engine, settings) -> None:
    """uvicorn and the grpc.aio server on one event loop, drained together on SIGTERM/SIGINT.

    On the signal both stop taking new work and finish what is in flight (grace DRAIN_GRACE_S):
    HTTP keeps its listener open and answers new requests 503 (service.api.drain) until no request
    is in flight, then uvicorn stops; gRPC at once reports NOT_SERVING and refuses new calls
    (UNAVAILABLE). Then the engine workers stop, serve() returns and the process exits 0. A second
    signal stops waiting for in-flight work.
    uvicorn's own signal handling would re-raise the signal once it is done, killing the
    process before gRPC has drained, so the loop's handlers stand in for it.
    """
    import signal

    import uvicorn

    from service.grpc import build_grpc_server

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # the loop's handlers below stand in for uvicorn's (which re-raise the signal)
            yield

    grpc_server = build_grpc_server(engine, settings, settings.grpc_port)
    # drain_http() has waited for in-flight requests; uvicorn then only closes idle connections
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5)
    web = Server(config)
    drained: asyncio.Future | None = None

    async def drain_grpc() -> None:
        await grpc_server.genserve_health.enter_graceful_shutdown()
        await grpc_server.stop(grace=DRAIN_GRACE_S)  # in-flight calls finish (within the grace); new ones are refused

    async def drain_http() -> None:
        if not await app.state.drain.finished(DRAIN_GRACE_S):  # new requests get 503 meanwhile
            log.warning("drain: HTTP requests still in flight after %.0f s; stopping anyway", DRAIN_GRACE_S)
        web.should_exit = True

    def start_drain() -> asyncio.Future:
        nonlocal drained
        if drained is None:
            app.state.drain.begin()
            drained = asyncio.gather(drain_grpc(), drain_http())
        return drained

    def on_signal(sig: signal.Signals) -> None:
        if drained is not None:  # a second signal: stop waiting for in-flight work
            log.info("%s again: stopping now", sig.name)
            web.should_exit = web.force_exit = True
            app.state.drain.stop_waiting()
            asyncio.ensure_future(grpc_server.stop(grace=None))
            return
        log.info("%s: draining", sig.name)
        start_drain()

    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await engine.start()  # the workers load the models in the background; /readyz says when they are up
        await grpc_server.start()
        log.info("gRPC on %s:%d", settings.host, grpc_server.genserve_port)
        await web.serve()  # returns once drain_http() has set should_exit
        await start_drain()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await engine.stop()
