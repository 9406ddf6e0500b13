"""`genserve serve`: build the settings, load the model store, start the engine, serve REST with uvicorn."""

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections import Counter
from pathlib import Path

from service import event_loop, logs

log = logging.getLogger("genserve")
CUT_ANSWER_S = 5.0  # once a drain is cut, how long cut work gets to end (an HTTP 503 sent, a gRPC step finished)


def named(key: str, given: dict) -> str:
    """A setting as the user set it: its flag where run() was given it (`genserve serve`'s command line), its
    GENSERVE_ variable where that is set or the setting has no flag, else the flag (the default was used)."""
    env = f"GENSERVE_{key.upper()}"
    if key not in given:  # no flag: only run()'s arguments have one
        return env
    from_env = given[key] is None and env in {name.upper() for name in os.environ}  # pydantic-settings: any case
    return env if from_env else "--" + key.replace("_", "-")


def check_ports(settings, given: dict) -> None:
    """Refuse, in one line naming the flag or variable that set it (`named`), an HTTP or gRPC port that cannot be
    listened on (taken by another process, or privileged), before anything starts: no worker, no gRPC server, no
    half-started uvicorn."""
    import socket

    if settings.port == settings.grpc_port != 0:
        raise SystemExit(f"genserve: {named('port', given)} and {named('grpc_port', given)} are both "
                         f"{settings.port}; give them different ports")
    for key, port in (("port", settings.port), ("grpc_port", settings.grpc_port)):
        if port == 0:  # any free port
            continue
        try:
            family, kind, proto, _, address = socket.getaddrinfo(settings.host, port, type=socket.SOCK_STREAM,
                                                                 flags=socket.AI_PASSIVE)[0]
        except socket.gaierror as e:
            raise SystemExit(f"genserve: cannot resolve --host {settings.host!r}: {e.strerror}") from e
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no obstacle
            try:
                probe.bind(address)
            except OSError as e:
                raise SystemExit(f"genserve: cannot listen on {settings.host}:{port} ({e.strerror}); give another "
                                 f"{named(key, given)}") from e


def run(
    host: str | None = None,
    port: int | None = None,
    grpc_port: int | None = None,
    models: str | Path | None = None,
    allow_empty: bool | None = None,
) -> None:
    """Serve the model store in `models` on host:port. Arguments left None come from GENSERVE_* / defaults.

    Refused at once, in one line: a port that is taken, a store with no model (unless allow_empty), a model
    version that fails its checks (unless settings.skip_bad_models: then that version is left out and logged,
    its model is served from its good versions, and a model with none is listed as unavailable in /v1/models
    and in the genserve_model_unavailable metric).
    """
    from pydantic import ValidationError

    from service.api import create_app
    from service.engine.engine import Engine
    from service.engine.errors import EngineError
    from service.engine.metrics import EngineMetrics
    from service.engine.runtimes import MissingRuntime
    from service.engine.workers import WorkerPool
    from service.settings import Settings
    from service.store import ModelStore, StoreError

    given = {"host": host, "port": port, "grpc_port": grpc_port, "models": models, "allow_empty": allow_empty}
    try:
        settings = Settings(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as e:  # a bad value: one line per setting, named as it is set (flag or GENSERVE_*)
        raise SystemExit("genserve: bad setting: " + "; ".join(
            f"{named('_'.join(map(str, error['loc'])), given)}: {error['msg']} (got {error['input']!r})"
            for error in e.errors())) from None
    logs.configure(settings.log_format)
    check_security(settings)
    check_ports(settings, given)
    try:  # refuses a file whose sha256 differs, and names it (with skip_bad_models: leaves its model out)
        store = ModelStore(settings.models, skip_bad=settings.skip_bad_models)
    except StoreError as e:
        skip = "" if e.kind == "store" else " (GENSERVE_SKIP_BAD_MODELS=true serves the other models)"
        raise SystemExit(f"genserve: cannot load the model store: {e}{skip}") from e
    for bad in store.bad:  # as Engine.load_model logs a version it leaves out
        model = "not served" if bad.name in store.unavailable else "served from its good versions"
        log.warning("model %s: version %s not loaded (%s): %s", bad.name, bad.version, model, bad.reason)
    if not store.entries and not settings.allow_empty:
        raise SystemExit(f"genserve: no model to serve: {store.empty_reason()}; give --allow-empty (or "
                         "GENSERVE_ALLOW_EMPTY=true) to serve it anyway")
    metrics = EngineMetrics()
    directories = {name: entry.directory for name, entry in store.entries.items()}
    try:
        workers = WorkerPool(directories, settings.runtime, settings.intra_op_threads, metrics.worker_restarted,
                             settings.worker_call_timeout_s, settings.worker_wait_s)
    except MissingRuntime as e:
        raise SystemExit(f"genserve: {e}") from None
    try:
        engine = Engine(store, settings, metrics, runner=workers)
    except EngineError as e:
        raise SystemExit(f"genserve: cannot serve the model store: {e.detail}") from e
    store.register_metrics(metrics.registry, [u for u in engine.unavailable if u["name"] not in store.unavailable])
    log.info("model store %s: %s", settings.models, ", ".join(store.names()) or "no models")
    app = create_app(engine, settings)
    tune_gc(settings.gc_young_threshold, metrics.registry)
    event_loop.run(serve(app, engine, settings))


def loop_lag_histogram(registry):
    """genserve_event_loop_lag_seconds of `registry`: how late the API process's event loop runs what is ready
    (service.event_loop.watch_lag; benchmarks/rest_tail.py reads it beside a load generator's latencies)."""
    from prometheus_client import Histogram

    return Histogram("genserve_event_loop_lag_seconds", "How late the API process's event loop resumed a task "
                     f"due every {event_loop.LAG_TICK_S:g} s", buckets=event_loop.LAG_BUCKETS, registry=registry)


GC_PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def tune_gc(young_threshold: int, registry) -> None:
    """Fewer, cheaper and shorter garbage collections on the hot path, each timed into
    genserve_gc_pause_seconds{generation} of `registry`.

    What is loaded by now (modules, the app, the models' metadata) is moved to the permanent generation
    (gc.freeze), so no collection walks it again. The young generation is collected after `young_threshold`
    net allocations instead of CPython's 700: a request's short-lived objects are mostly freed by reference
    counting before a collection sees them. Not much higher than 10,000: what reference counting cannot free
    waits for the collection, and a pause grows with it. grpc.aio leaves a reference cycle on every call (its
    method lookup's closure), so at 100,000 one collection freed thousands of calls' cycles at once while every
    call in flight waited, and gRPC's p99 at 64 clients doubled in the rounds it fell in
    (benchmarks/gc_pauses.py; benchmarks/results/gc_pauses.md). Not applied under Ray Serve, whose replicas are
    not started by `genserve serve`."""
    from prometheus_client import Histogram

    pauses = Histogram("genserve_gc_pause_seconds", "Garbage collection pauses of the API process", ["generation"],
                       buckets=GC_PAUSE_BUCKETS, registry=registry)
    by_generation = [pauses.labels(str(g)) for g in range(3)]
    started = [0.0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            by_generation[info["generation"]].observe(time.perf_counter() - started[0])

    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(young_threshold, gen1, gen2)
    gc.callbacks.append(timed)


def _http_protocol() -> str:
    """uvicorn's httptools parser when it is installed (a genserve dependency), else its pure-Python h11."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


def check_security(settings) -> None:
    """Refuse a keys file or TLS pair that cannot be used, before anything loads; say how the ports are guarded."""
    from service.credentials import CredentialsError, api_keys, check_tls

    try:
        keys, tls = api_keys(settings), check_tls(settings)
    except CredentialsError as e:
        raise SystemExit(f"genserve: {e}") from e
    if keys is None:
        log.warning("no GENSERVE_API_KEYS_FILE: REST (port %d) and gRPC (port %d) are open to anyone who can reach "
                    "them", settings.port, settings.grpc_port)
    else:
        public = "; /metrics is public" if settings.metrics_public else ""
        log.info("API keys: %d from %s; /healthz, /readyz and gRPC health are open%s", len(keys),
                 settings.api_keys_file, public)
    log.info("TLS: %s", "off (plain HTTP and gRPC)" if tls is None else f"on, certificate {tls[0]}")


async def serve(app, engine, settings) -> None:
    """uvicorn and the grpc.aio server on one event loop, drained together on SIGTERM/SIGINT.

    On the signal both stop taking new work and finish what is in flight (within settings.drain_timeout_s):
    HTTP keeps its listener open and answers new requests 503 (service.api.drain) until no request
    is in flight, then uvicorn stops; gRPC at once reports NOT_SERVING and refuses new calls
    (UNAVAILABLE). Then the engine workers stop, serve() returns and the process exits 0. What is still
    in flight when the time is up is cut, and a WARNING says how many HTTP requests and gRPC calls, by
    route and method. A second signal stops waiting for in-flight work.
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
    # drain_http() has waited for in-flight requests; uvicorn then only closes idle connections.
    # TLS: check_security() has made sure that the certificate and key are both set or both unset.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5,
                            access_log=settings.access_log, log_config=logs.uvicorn_log_config(settings.log_format),
                            http=_http_protocol(),
                            ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key)
    web = Server(config)
    drained: asyncio.Future | None = None
    limit_s = settings.drain_timeout_s

    async def drain_grpc() -> None:
        await grpc_server.genserve_health.enter_graceful_shutdown()
        stopped = asyncio.ensure_future(grpc_server.stop(grace=limit_s))  # new calls are refused from now on
        calls = grpc_server.genserve_calls
        if not await calls.finished(limit_s):
            log.warning("drain: cut %s after %g s (GENSERVE_DRAIN_TIMEOUT_S)", _cut(calls.methods, "gRPC call"),
                        limit_s)
        await stopped  # cancels the calls still running at the limit
        await calls.finished(CUT_ANSWER_S)  # a cancelled stream ends its step in flight before the workers stop

    async def drain_http() -> None:
        drain = app.state.drain
        if not await drain.finished(limit_s):  # new requests get 503 meanwhile
            log.warning("drain: cut %s after %g s (GENSERVE_DRAIN_TIMEOUT_S)", _cut(drain.cut(), "HTTP request"),
                        limit_s)
            await drain.finished(CUT_ANSWER_S)  # the cut requests answer 503 (or break off their streams)
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
            grpc_server.genserve_calls.stop_waiting()
            asyncio.ensure_future(grpc_server.stop(grace=None))
            return
        log.info("%s: draining", sig.name)
        start_drain()

    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    lag = asyncio.ensure_future(event_loop.watch_lag(loop_lag_histogram(engine.metrics.registry)))
    try:
        await engine.start()  # the workers load the models in the background; /readyz says when they are up
        await grpc_server.start()
        log.info("gRPC on %s:%d", settings.host, grpc_server.genserve_port)
        await web.serve()  # returns once drain_http() has set should_exit
        await start_drain()
    finally:
        lag.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
        await engine.stop()


def _cut(in_flight: Counter, what: str) -> str:
    """What a drain cut, from a count by route or method: e.g.
    "2 HTTP requests still in flight (POST /v1/models/{name}/sample x2)"."""
    total = sum(in_flight.values())
    routes = ", ".join(f"{route} x{count}" for route, count in sorted(in_flight.items()))
    return f"{total} {what}{'' if total == 1 else 's'} still in flight ({routes})"
