"""`genserve serve`: build the settings, load the model store, start the engine, serve REST with uvicorn."""

import asyncio
import logging
from pathlib import Path

log = logging.getLogger("genserve")


def run(
    host: str | None = None,
    port: int | None = None,
    grpc_port: int | None = None,
    models: str | Path | None = None,
) -> None:
    """Serve the model store in `models` on host:port. Arguments left None come from GENSERVE_* / defaults."""
    from service.api import create_app
    from service.engine.engine import Engine
    from service.settings import Settings
    from service.store import ModelStore, StoreError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    given = {"host": host, "port": port, "grpc_port": grpc_port, "models": models}
    settings = Settings(**{key: value for key, value in given.items() if value is not None})
    try:
        store = ModelStore(settings.models)  # refuses a file whose sha256 differs, and names it
    except StoreError as e:
        raise SystemExit(f"genserve: cannot load the model store: {e}") from e
    engine = Engine(store, settings)
    log.info("model store %s: %s", settings.models, ", ".join(store.names()) or "no models")
    app = create_app(engine, settings)
    asyncio.run(serve(app, engine, settings))


async def serve(app, engine, settings) -> None:
    """uvicorn and the grpc.aio server on one event loop; on shutdown gRPC reports NOT_SERVING, then drains."""
    import uvicorn

    from service.grpc import build_grpc_server

    grpc_server = build_grpc_server(engine, settings, settings.grpc_port)
    await grpc_server.start()
    log.info("gRPC on %s:%d", settings.host, grpc_server.genserve_port)
    web = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info"))
    try:
        await web.serve()  # returns after SIGINT/SIGTERM, once in-flight HTTP requests are done
    finally:
        await grpc_server.genserve_health.enter_graceful_shutdown()
        await grpc_server.stop(grace=30)  # in-flight calls finish; new ones are refused
