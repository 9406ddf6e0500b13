"""Who may use the REST API: API keys (401), JSON-only bodies (415) and CORS, as pure ASGI middleware.

- With settings.api_keys_file set, every route but /healthz and /readyz (and /metrics when
  settings.metrics_public) needs `Authorization: Bearer <key>`; otherwise 401 with WWW-Authenticate: Bearer.
- A POST body must be JSON (application/json), on the V2 routes also the binary extension's
  (application/octet-stream, application/vnd.*, e.g. SageMaker's application/vnd.sagemaker-triton.binary+json);
  anything else is 415, so a web page cannot drive the server with a form or a text/plain "simple request" that
  skips CORS. tritonclient.http sends no Content-Type at all, so none is allowed on the V2 routes (elsewhere: only
  without a body), unless the request carries an Origin (every browser POST does): a page must say JSON, which
  makes its browser ask CORS first.
- A coded body (Content-Encoding other than identity) is 415 except on V2 /infer, which inflates gzip and deflate.
- CORS (Starlette's CORSMiddleware) only for settings.cors_origins; none by default, so no CORS headers.

Refusals use the error body of the route's protocol: {"error": {"code", "message", "field"}} for /v1 and
the rest, {"error": message} for the Open Inference Protocol's /v2.
"""

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import is_v2, protocol_error
from service.api.v2 import is_infer_path
from service.credentials import ApiKeys, api_keys
from service.settings import Settings

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
ACCEPTED_TYPES = (b"application/json", b"application/octet-stream")
VENDOR_TYPES = b"application/vnd."
SHOWN_TYPE_CHARS = 80  # of a refused Content-Type, in the message


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def content_type(scope: Scope) -> bytes | None:
    """The request's media type, lower case, without parameters (b"application/json"); None when not given."""
    value = _header(scope, b"content-type")
    return None if value is None else value.partition(b";")[0].strip().lower()


def _refusal(scope: Scope, status: int, code: str, message: str, field: str,
             headers: dict | None = None) -> JSONResponse:
    return protocol_error(scope["path"], status, code, message, field, headers)


class AuthMiddleware:
    """401 for a request without a valid `Authorization: Bearer <key>`, except on `open_paths`."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app, self.keys, self.open_paths = app, keys, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        authorization = _header(scope, b"authorization")
        if self.keys.admits(authorization):
            await self.app(scope, receive, send)
            return
        message = ("authorization: missing; send the header 'Authorization: Bearer <key>'" if authorization is None
                   else "authorization: not a valid 'Bearer <key>'")
        refuse = _refusal(scope, 401, "unauthorized", message, "authorization", {"WWW-Authenticate": "Bearer"})
        await refuse(scope, receive, send)


def content_type_problem(path: str, media: bytes | None, origin: bytes | None, has_body: bool) -> str | None:
    """Why a POST with this media type (content_type: lower case, no parameters) and these headers is refused (415),
    or None when its body may be read. The V2 routes also take the binary extension's types, and no type from a
    client that is not a web page (tritonclient.http sends none); every other route reads JSON only, and a body
    without a type there would be misread."""
    v2 = is_v2(path)
    if media is None:
        if origin is not None:
            return "content-type: missing; a request from a web page must send 'Content-Type: application/json'"
        if v2 or not has_body:
            return None
        return "content-type: missing; send 'Content-Type: application/json'"
    if media == b"application/json" or (v2 and (media in ACCEPTED_TYPES or media.startswith(VENDOR_TYPES))):
        return None
    shown = media.decode("latin-1")[:SHOWN_TYPE_CHARS]
    if not v2:
        return f"content-type: {shown!r} is not accepted on {path[:SHOWN_TYPE_CHARS]!r}; send application/json"
    return (f"content-type: {shown!r} is not accepted; send application/json "
            "(V2 binary tensors: application/octet-stream)")


def _has_body(scope: Scope) -> bool:
    """Whether the request says it has a body: a Content-Length above 0, or a Transfer-Encoding (chunked)."""
    length = (_header(scope, b"content-length") or b"").strip()
    return _header(scope, b"transfer-encoding") is not None or length not in (b"0", b"")


def content_encoding_problem(path: str, encoding: bytes | None) -> str | None:
    """Why a POST body's Content-Encoding is refused (415), or None: only V2 /infer inflates gzip and deflate
    (v2._decompress); every other route reads the body as it comes, so a coded one would be misread."""
    if encoding is None or encoding.strip().lower() in (b"", b"identity") or is_infer_path(path):
        return None
    shown = encoding.decode("latin-1")[:SHOWN_TYPE_CHARS]
    return (f"content-encoding: {shown!r} is not accepted on {path[:SHOWN_TYPE_CHARS]!r}; send the body "
            "uncompressed (V2 /infer routes accept gzip and deflate)")


class ContentTypeMiddleware:
    """415 for a POST whose body is not JSON or V2 binary tensors (content_type_problem), or is coded where the
    route cannot inflate it (content_encoding_problem)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for field, problem in (
                    ("content-type", content_type_problem(scope["path"], content_type(scope), _header(scope, b"origin"),
                                                          _has_body(scope))),
                    ("content-encoding", content_encoding_problem(scope["path"], _header(scope, b"content-encoding")))):
                if problem is not None:
                    await _refusal(scope, 415, "unsupported_media_type", problem, field)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the middleware, outermost last: CORS answers preflights and marks refusals, then keys, then 415."""
    app.add_middleware(ContentTypeMiddleware)
    keys = api_keys(settings)
    if keys is not None:
        open_paths = (OPEN_PATHS | {"/metrics"}) if settings.metrics_public else OPEN_PATHS
        app.add_middleware(AuthMiddleware, keys=keys, open_paths=open_paths)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "inference-header-content-length",
                                          "x-request-id"],
                           expose_headers=["genserve-seed", "retry-after", "inference-header-content-length",
                                           "x-request-id"])
