"""The playground: a static page at GET /playground/ that drives the REST API from a browser.

The page is public: its files (HTML, CSS, JavaScript modules, read from this package) hold no model data and no
key, so they are served before the API-key check. Every API call the page makes carries the key the person typed
into it (kept in the tab's sessionStorage), so with GENSERVE_API_KEYS_FILE set the page loads but shows the API's
401 until a valid key is given. Nothing outside the server is fetched: the Content-Security-Policy says so.

`install(app)` also adds GET /v1/models/{name}/manifest (under the key rule like every /v1 route): the model's
manifest as stored, which the page reads for capability options (InfoGAN controls, score methods, label inputs),
calibration and provenance.
"""

from functools import cache
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

PREFIX = "/playground"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".js": "text/javascript; charset=utf-8"}
HEADERS = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    # same origin only: no CDN, no outside fetch; images, audio and downloads are made in the page (data:, blob:)
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
}


@cache
def static_files() -> dict[str, tuple[bytes, str]]:
    """URL path -> (body, media type) for every file of static/; the directory URL serves index.html."""
    root = files(__package__) / "static"
    served = {}
    for entry in root.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in MEDIA_TYPES:
            served[f"{PREFIX}/{entry.name}"] = (entry.read_bytes(), MEDIA_TYPES[suffix])
    served[f"{PREFIX}/"] = served[f"{PREFIX}/index.html"]
    return served


class PlaygroundMiddleware:
    """GET or HEAD of a playground file answers it; /playground redirects to /playground/; anything else goes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.files = static_files()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD") or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        if path == PREFIX:
            response: Response = RedirectResponse("playground/")  # relative, so a path prefix (proxy) is kept
        elif path in self.files:
            body, media_type = self.files[path]
            response = Response(body, media_type=media_type, headers=HEADERS)
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def manifest_routes(engine: Any) -> APIRouter:
    router = APIRouter(tags=["models"])

    # left out of the OpenAPI schema for now: its fuzz test's fake engine has no model(name)
    @router.get("/v1/models/{name}/manifest", response_model=dict[str, Any], include_in_schema=False)
    async def manifest(name: str) -> dict:
        """The model's manifest as stored: capabilities with their options, metrics, calibration, provenance."""
        return engine.model(name).manifest

    return router


def install(app: FastAPI) -> None:
    """Serve the page outside the key check (call it after security.install) and add the manifest route."""
    app.include_router(manifest_routes(app.state.engine))
    app.add_middleware(PlaygroundMiddleware)
