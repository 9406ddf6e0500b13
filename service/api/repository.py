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

import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.api.v2 import ERRORS, V2Error, from_engine_error, v2_error
from service.engine.engine import PINNED_VERSION
from service.engine.errors import VERSION_FIELD, EngineError, UnknownModel
from service.engine.oip import chosen_by
from service.model_control import AdminKeys, latest_pin, load, unload, v2_pin
from service.settings import Settings
from service.store import is_version_number

_V1_MODEL = re.compile(r"/v1/models/([^/]+)(?:/versions/([^/]+))?(/.*)?")
_V2_MODEL = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/.*)?")


# what load and unload answer besides 200: the V2 errors, and 403 for a caller without an admin key
CONTROL_ERRORS = {**ERRORS, 403: {"model": V2Error, "description": "no admin key, or model control is off (no "
                                                                 "GENSERVE_ADMIN_KEYS_FILE)"}}


def router(engine: Any, admins: AdminKeys) -> APIRouter:
    r = APIRouter(prefix="/v2/repository", tags=["model repository"], responses=CONTROL_ERRORS)

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


class VersionedRoutes:
    """/v1/models/{name}/versions/{v}/...: the unversioned route, with version v pinned (PINNED_VERSION); an
    unversioned /v1/models/{name}/... pinned to the latest; /v2/models/{name}[/versions/{v}]/...: as v2_pin. The
    field that chose the version (VERSION_FIELD) is `version` on a versioned /v1 route, else `model`; on V2,
    `model_version` where the path names a version, else `model_name` (oip.chosen_by)."""

    def __init__(self, app: ASGIApp, engine: Any) -> None:
        self.app, self.engine = app, engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(("/v1/models/", "/v2/models/")):
            await self.app(scope, receive, send)
            return
        pinned, field = None, "model"
        if match := _V1_MODEL.fullmatch(scope["path"]):
            name, version, rest = match.groups()
            if version is None:
                pinned = latest_pin(self.engine, name)
            elif not is_version_number(version):  # "+1", "1.0", "²" (int() would read "+1" as 1)
                refusal = error_response(404, UnknownModel.code, f"version: {version!r} is not a version number "
                                         "(digits 0-9)", "version")
                await refusal(scope, receive, send)
                return
            else:
                # no trailing slash: the app's slash redirect would point at the unversioned route, unpinned;
                # raw_path stays the client's, which refusals name (service.api.errors.sent_path)
                scope = {**scope, "path": f"/v1/models/{name}{(rest or '').rstrip('/')}"}
                pinned, field = (name, int(version)), "version"
        elif match := _V2_MODEL.fullmatch(scope["path"]):
            name, version = match.groups()
            pinned, field = v2_pin(self.engine, name, version), chosen_by("model_name", version)
        token, field_token = PINNED_VERSION.set(pinned), VERSION_FIELD.set(field)
        try:
            await self.app(scope, receive, send)
        finally:
            PINNED_VERSION.reset(token)
            VERSION_FIELD.reset(field_token)


def install(app: FastAPI, engine: Any, settings: Settings) -> None:
    """The repository routes and the versioned routes; add it after the app's routers and fast paths."""
    app.include_router(router(engine, AdminKeys(settings)))
    app.add_middleware(VersionedRoutes, engine=engine)
