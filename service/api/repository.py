"""Model management, live, as Triton's model-repository extension does it, and several versions served at once.

- POST /v2/repository/models/{name}/load reads models/<name>/ in the store again and serves every good version
  in it (a new version appears; the unversioned routes move to the latest); .../unload stops serving the model
  (its new requests get 404 unknown model; requests in flight finish). {name} is a model of the store
  ("pixelcnn") or any of its V2 models ("pixelcnn.log_prob"). The answer is 200 with an empty body, as Triton's.
- /v1/models/{name}/versions/{v}/... is the route /v1/models/{name}/... on version v (an unknown v: 404, field
  version); /v2/models/{name}/versions/{v}/... runs on version v too. The unversioned routes run on the latest.

Who may load and unload: a caller with a key of GENSERVE_ADMIN_KEYS_FILE (the format of GENSERVE_API_KEYS_FILE)
in `Authorization: Bearer <key>`; anyone else gets 403, and so does everyone while no admin keys file is set
(model control is off, as Triton's --model-control-mode=none). With API keys on, every route first needs an API
key (401 without one, service.api.security), so an admin lists its key in both files. The index (POST
/v2/repository/index, service.api.v2) is read-only and needs no admin key: tritonclient lists models with it.
"""

import asyncio
import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.v2 import from_engine_error, v2_error
from service.credentials import ApiKeys, CredentialsError
from service.engine.engine import PINNED_VERSION
from service.engine.errors import EngineError, UnknownModel
from service.settings import Settings

_V1_MODEL = re.compile(r"/v1/models/([^/]+)(?:/versions/([^/]+))?(/.*)?")
_V2_MODEL = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/.*)?")


class AdminKeys:
    """The keys of settings.admin_keys_file, read once; problem() says why a caller may not manage models."""

    def __init__(self, settings: Settings) -> None:
        self.keys: ApiKeys | None = None
        if settings.admin_keys_file is not None:
            try:
                self.keys = ApiKeys.from_file(settings.admin_keys_file)
            except CredentialsError as e:
                raise CredentialsError(str(e).replace("GENSERVE_API_KEYS_FILE", "GENSERVE_ADMIN_KEYS_FILE")) from None

    def problem(self, authorization: str | bytes | None) -> str | None:
        """None when `authorization` holds an admin key; else the reason (for 403, gRPC PERMISSION_DENIED)."""
        if self.keys is None:
            return "authorization: model control is off; set GENSERVE_ADMIN_KEYS_FILE to load and unload models"
        if not self.keys.admits(authorization):
            return "authorization: loading and unloading models needs 'Authorization: Bearer <admin key>'"
        return None


def store_model(engine: Any, name: str) -> str:
    """The store's model a repository request names: "pixelcnn", or a V2 model of it ("pixelcnn.log_prob")."""
    names = engine.store.model_names()
    for candidate in (name, name.rpartition(".")[0]):
        if candidate in names:
            return candidate
    raise UnknownModel(f"model_name: no model {name!r} in the store; it holds {names}", field="model_name")


async def load(engine: Any, name: str) -> list[int]:
    """Load a model's versions (hashing its files off the event loop)."""
    return await asyncio.to_thread(engine.load_model, store_model(engine, name))


def unload(engine: Any, name: str) -> None:
    engine.unload_model(store_model(engine, name))


def router(engine: Any, admins: AdminKeys) -> APIRouter:
    r = APIRouter(prefix="/v2/repository", tags=["model repository"])

    async def control(request: Request, model_name: str, action: str) -> Any:
        problem = admins.problem(request.headers.get("authorization"))
        if problem is not None:
            return v2_error(403, problem)
        try:
            if action == "load":
                await load(engine, model_name)
            else:
                unload(engine, model_name)
        except EngineError as e:
            return from_engine_error(e)
        return {}

    @r.post("/models/{model_name}/load")
    async def load_route(request: Request, model_name: str) -> Any:
        return await control(request, model_name, "load")

    @r.post("/models/{model_name}/unload")
    async def unload_route(request: Request, model_name: str) -> Any:
        return await control(request, model_name, "unload")

    return r


def latest_pin(engine: Any, model: str) -> tuple[str, int] | None:
    """(model, its latest version) while it is served: a request pinned so at its start runs on one version to its
    end, and its answer's `version` is the version that computed it, even when a load lands meanwhile."""
    served = getattr(engine, "versions", {}).get(model)
    return (model, max(served)) if served else None


def v2_pin(engine: Any, v2_name: str, version: str | None) -> tuple[str, int] | None:
    """(model, version) to pin for a V2 request naming "<model>.<function>": the version it names when that
    version is served (else None: the V2 adapter's own check answers), or the latest when it names none."""
    model = v2_name.rpartition(".")[0]
    if not version:
        return latest_pin(engine, model)
    served = getattr(engine, "versions", {}).get(model, {})
    return (model, int(version)) if version.isdigit() and int(version) in served else None


class VersionedRoutes:
    """/v1/models/{name}/versions/{v}/...: the unversioned route, with version v pinned (PINNED_VERSION); an
    unversioned /v1/models/{name}/... pinned to the latest; /v2/models/{name}[/versions/{v}]/...: as v2_pin."""

    def __init__(self, app: ASGIApp, engine: Any) -> None:
        self.app, self.engine = app, engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(("/v1/models/", "/v2/models/")):
            await self.app(scope, receive, send)
            return
        pinned = None
        if match := _V1_MODEL.fullmatch(scope["path"]):
            name, version, rest = match.groups()
            if version is None:
                pinned = latest_pin(self.engine, name)
            else:
                path = f"/v1/models/{name}{rest or ''}"
                scope = {**scope, "path": path, "raw_path": path.encode()}
                pinned = (name, int(version) if version.isdigit() else -1)  # -1: no such version (404)
        elif match := _V2_MODEL.fullmatch(scope["path"]):
            pinned = v2_pin(self.engine, *match.groups())
        token = PINNED_VERSION.set(pinned)
        try:
            await self.app(scope, receive, send)
        finally:
            PINNED_VERSION.reset(token)


def install(app: FastAPI, engine: Any, settings: Settings) -> None:
    """The repository routes and the versioned routes; add it after the app's routers and fast paths."""
    app.include_router(router(engine, AdminKeys(settings)))
    app.add_middleware(VersionedRoutes, engine=engine)
