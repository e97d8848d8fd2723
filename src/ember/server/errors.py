"""EmberError -> HTTP status + OpenAI's error JSON, once for the whole server.

    curl -s localhost:8000/v1/models/nope   # {"error": {"message": ..., "type": "not_found_error", ...}}

Every way a request can fail ends here: our own errors keep their class's status; pydantic validation errors
become 400 (OpenAI never answers 422); unknown routes 404; anything unexpected is logged with its traceback
and answered with a plain 500 message (never the traceback itself).
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ember.errors import Conflict, EmberError, Overloaded
from ember.server.schemas import validation_message

log = logging.getLogger("ember.server")


class NotReady(EmberError):
    """Models still loading, or the server draining for shutdown: retry (elsewhere) shortly."""

    exit_code = 1
    status = 503
    type = "service_unavailable"


class RequestTimeout(EmberError):
    """A request ran past --request-timeout; what it generated so far is discarded (or ends the stream)."""

    exit_code = 1
    status = 504
    type = "timeout"


def error_body(message: str, type_: str, param: str | None = None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str, param=None, code=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


def from_ember(e: EmberError) -> JSONResponse:
    headers = {"Retry-After": str(e.retry_after)} if isinstance(e, Overloaded) else None
    if isinstance(e, NotReady):
        headers = {"Retry-After": "5"}
    if e.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    status = e.status
    message = e.message
    if status >= 500:
        log.error("server error %s: %s", type(e).__name__, e.message)
    if isinstance(e, Conflict) and e.details:
        return JSONResponse({**error_body(message, e.type, e.param, e.code), **e.details}, status_code=status,
                            headers=headers)
    return error_response(status, message, e.type, e.param, e.code, headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    return validation_message(exc.errors())


_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                 429: "rate_limit_error", 503: "service_unavailable"}


def install(app: FastAPI) -> None:
    @app.exception_handler(EmberError)
    async def _ember(_req: Request, e: EmberError):
        return from_ember(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, e: RequestValidationError):
        message, param = _validation_message(e)
        return error_response(400, message, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, e: StarletteHTTPException):
        if e.status_code == 404:
            message = f"no route {req.method} {req.url.path}"
        elif e.status_code == 405:
            message = f"method {req.method} not allowed on {req.url.path}"
        else:
            message = str(e.detail)
        return error_response(e.status_code, message, _STATUS_TYPES.get(e.status_code, "invalid_request_error"),
                              headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(req: Request, e: Exception):
        log.exception("unhandled error on %s %s", req.method, req.url.path)
        return error_response(500, "internal server error; see the server log", "internal_error")
