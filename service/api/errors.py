"""Every error leaves the API as {"error": {"code", "message", "field"?}}, and the message names the field.

- RequestValidationError (pydantic, body structure and limits) -> 422 "invalid_request", field like "body.n";
  an unknown field (a misspelt "temprature") is one of them: "body.temprature: unknown field";
- EngineError (and the codecs' InvalidInput) -> its .status and .code;
- Starlette HTTPException (unknown route 404, 405, body parsing 400, 413) -> its status;
- anything else -> 500 "internal", logged with its traceback.

Under /v2 (the Open Inference Protocol) the same errors take the V2 format instead: {"error": "<message>"},
with 400 for an invalid request. Messages echo what the client sent (a field name, a value), so they are made
encodable first: a lone surrogate becomes the text "\\ud800", never an unencodable body.
"""

import logging
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.engine.errors import RETRY_AFTER_S, EngineError
from service.engine.validation import brief

log = logging.getLogger("genserve.api")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}
_MAX_LISTED = 5  # validation problems listed in one message
_MAX_NAME = 60  # a longer name in a field path (a client's unknown key) is quoted through validation.brief


def printable(text: str) -> str:
    """`text` as valid UTF-8: what cannot be encoded (a lone surrogate from a JSON "\\ud800") as a \\u escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": printable(message)}
    if field:
        error["field"] = printable(field)
    return {"error": error}


def error_response(status: int, code: str, message: str, field: str | None = None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


def sent_path(request: Request) -> str:
    """The path as the client sent it: a versioned /v1 route runs under its unversioned path (service.api.repository
    rewrites `path`), and ASGI's raw_path (optional) keeps the bytes received."""
    raw = request.scope.get("raw_path")
    return unquote(raw.decode("latin-1")) if raw else request.url.path


def v2_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """The Open Inference Protocol's error: {"error": "<message>"}."""
    return JSONResponse({"error": printable(message)}, status_code=status, headers=headers)


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def protocol_error(path: str, status: int, code: str, message: str, field: str | None = None,
                   headers=None) -> JSONResponse:
    """The error in the format of the protocol that `path` belongs to (V2: 400 for an invalid request)."""
    if is_v2(path):
        return v2_error(400 if status == 422 else status, message, headers)
    return error_response(status, code, message, field, headers)


def field_path(loc: tuple | list) -> str:
    """("body", "inputs", 1) -> "body.inputs[1]". A name of a client's (an unknown key) is echoed bounded."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            name = str(part) if len(str(part)) <= _MAX_NAME else brief(str(part))
            path += f".{name}" if path else name
    return path or "body"


def _describe(error: dict) -> tuple[str, str]:
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":  # loc is ("body", character position)
        position = loc[1] if len(loc) > 1 else "?"
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        return "body", f"body: invalid JSON at position {position}: {reason}"
    field = field_path(loc)
    if error.get("type") == "extra_forbidden":
        return field, f"{field}: unknown field; this request does not take it"
    return field, f"{field}: {error.get('msg', 'invalid value')}"


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [_describe(e) for e in exc.errors()] or [("body", "body: invalid request")]
    message = "; ".join(msg for _, msg in problems[:_MAX_LISTED])
    if len(problems) > _MAX_LISTED:
        message += f"; and {len(problems) - _MAX_LISTED} more"
    return protocol_error(request.url.path, 422, "invalid_request", message, problems[0][0])


async def _engine(request: Request, exc: EngineError) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_S} if exc.retry_later else None
    return protocol_error(request.url.path, exc.status, exc.code, exc.detail, exc.field, headers)


def unreadable_json(why: BaseException) -> str:
    """Why Python could not read a body as JSON, for a refusal naming the body: not UTF-8, nested past its recursion
    limit, an integer of over 4,300 digits (not what its message says the server could do about that)."""
    if isinstance(why, RecursionError):
        return "body: cannot be read as JSON: nested too deeply"
    return f"body: cannot be read as JSON: {str(why).partition(';')[0][:200] or type(why).__name__}"


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    code = _HTTP_CODES.get(status, "internal" if status >= 500 else "bad_request")
    detail, field = exc.detail if isinstance(exc.detail, str) else str(exc.detail), None
    if status == 400 and not detail.startswith("body"):  # FastAPI could not parse the body at all: say why
        why = exc.__cause__
        detail, field = (unreadable_json(why) if why else f"body: {detail}"), "body"
    elif status == 404 and detail == "Not Found":
        detail = f"path: no route {sent_path(request)}"
    elif status == 405:
        detail = f"method: {request.method} is not allowed on {sent_path(request)}"
    return protocol_error(request.url.path, status, code, detail, field, headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, sent_path(request), exc_info=exc)
    # Starlette re-raises after this answer and uvicorn then drops the connection: say so, so that a client
    # does not send its next request on a connection that is about to close
    return protocol_error(request.url.path, 500, "internal", "internal error; it has been logged",
                          headers={"Connection": "close"})


engine_error, unexpected_error = _engine, _unexpected  # for the fast paths, which answer past FastAPI's handlers


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(EngineError, _engine)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
