"""`genserve serve`: build the settings, load the model store, start the engine, serve REST with uvicorn."""

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
    import uvicorn

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
    log.info("gRPC port %d is not served yet: the gRPC adapter comes in a later issue", settings.grpc_port)
    app = create_app(engine, settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
