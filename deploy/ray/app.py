"""genserve on Ray Serve: the REST app of `genserve serve` in N replicas behind Ray Serve's HTTP proxy.

Each replica is one Ray actor that loads the model store and serves service.api.create_app(engine) through
Ray Serve's late-bound ASGI ingress (`__serve_build_asgi_app__`), so every route, status code and body is the
one `genserve serve` gives. Ray Serve's proxy routes each request to a replica; its controller scales the
replicas between the config's min and max by the ongoing requests per replica and replaces one that dies.

The engine runs the models in the replica's own process (the in-process runner, service.engine.workers
InProcess), not in an engine worker process: under Ray the replica is the unit that is supervised and restarted,
so a worker process inside it (and the pool's restarts) would be a second supervisor doing the same job.
Answers carry `x-genserve-replica` (the Ray replica id), so a caller can see which replica served it.

Deploy with `serve run deploy/ray/serve.yaml` (PYTHONPATH must reach this file and the service package);
the README's "Scale-out on Ray Serve" and scripts/ray_test.py show the whole loop.
"""

from pathlib import Path
from typing import Any

from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REPLICA_HEADER = b"x-genserve-replica"
REPO = Path(__file__).resolve().parents[2]


class ReplicaHeader:
    """Adds `x-genserve-replica: <replica id>` to every HTTP answer (pure ASGI middleware)."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app, self.replica = app, replica.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER, self.replica)]
            await send(message)

        await self.app(scope, receive, send_with_header)


@serve.deployment(name="genserve", health_check_period_s=5, health_check_timeout_s=10)
@serve.ingress()
class Genserve:
    """One replica: the model store loaded into an engine, served by the genserve REST app."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        """`settings`: Settings fields (models, runtime, intra_op_threads, ...); GENSERVE_* variables fill the rest."""
        from service.engine.engine import Engine
        from service.settings import Settings
        from service.store import ModelStore

        self.settings = Settings(**(settings or {}))
        store = ModelStore(self.settings.models, skip_bad=self.settings.skip_bad_models)
        self.engine = Engine(store, self.settings)  # runner None: the in-process runner, models loaded here

    def __serve_build_asgi_app__(self) -> ASGIApp:
        from service.api import create_app

        app = create_app(self.engine, self.settings)
        app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
        return app

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose engine cannot run the models is restarted."""
        if not self.engine.ready():
            raise RuntimeError("genserve engine not ready")


def build(args: dict[str, Any]) -> serve.Application:
    """The application builder named by serve.yaml's import_path; `args` are the Settings fields of each replica.
    A relative `models` is taken from the repository root (the folder holding deploy/), not the replica's cwd."""
    settings = dict(args)
    if "models" in settings:
        settings["models"] = str(REPO / settings["models"])  # an absolute path stays as it is
    return Genserve.bind(settings)
