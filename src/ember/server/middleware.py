"""Pure ASGI middlewares (no BaseHTTPMiddleware: it would buffer streams and hide client disconnects).

    ember serve --log-content        # request log lines then include prompt and completion text (redacted)

- `RequestLog`: one structured JSON line per request on the `ember.requests` logger, written when the
  response (streamed or not) has finished: id, method, path, status, latency, plus what the handler put in
  `request.state.log` (model, token counts, TTFT, queue time, finish reasons, abort). Also counts
  `ember:http_requests_total` (labelled by route template, never the raw path, so the label set stays
  bounded) and sets the `x-request-id` and any `x-ratelimit-*` response headers (server/limits.py).
- `BodyLimit`: 413 for bodies over the limit, whether announced by Content-Length or streamed chunked;
  408 when a body stalls longer than `body_timeout` between chunks. (Non-JSON bodies are refused earlier,
  with 415, by server/hosts.py.)
"""

import asyncio
import json
import logging
import time
import uuid

from ember.server.errors import error_body
from ember.server.redact import redact_value

log = logging.getLogger("ember.requests")


async def _send_json(send, status: int, body: dict, headers=()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    def __init__(self, app, max_bytes: int, body_timeout: float | None = None):
        self.app, self.max_bytes, self.body_timeout = app, max_bytes, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        too_big = error_body(f"the request body exceeds {self.max_bytes} bytes", "invalid_request_error",
                             None, "request_too_large")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            scope.setdefault("state", {}).setdefault("log", {})["error"] = "body too large"
            return await _send_json(send, 413, too_big)
        seen = 0
        started = False
        body_done = False

        async def guarded_receive():
            nonlocal seen, body_done
            if body_done or self.body_timeout is None:
                msg = await receive()
            else:
                try:
                    msg = await asyncio.wait_for(receive(), self.body_timeout)
                except asyncio.TimeoutError:
                    raise _Slow() from None
            if msg["type"] == "http.request":
                body_done = not msg.get("more_body", False)
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, too_big)
        except _Slow:
            if not started:
                scope.setdefault("state", {}).setdefault("log", {})["error"] = "body too slow"
                await _send_json(send, 408, error_body(f"the request body stalled for {self.body_timeout:g}s",
                                                       "invalid_request_error", None, "request_timeout"),
                                 [(b"connection", b"close")])


# BaseException: FastAPI turns an Exception raised while it reads the body into a generic 400; these must
# reach BodyLimit itself to become 413 / 408.
class _TooLarge(BaseException):
    pass


class _Slow(BaseException):
    pass


class RequestLog:
    def __init__(self, app, metrics, log_content: bool = False, redact: bool = True):
        self.app, self.metrics, self.log_content, self.redact = app, metrics, log_content, redact

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        rid = "req-" + uuid.uuid4().hex[:16]
        record: dict = {}
        state = scope.setdefault("state", {})
        state["log"] = record
        state["request_id"] = rid
        status = [0]

        async def logging_send(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                extra = [(k.encode(), v.encode()) for k, v in (state.get("ratelimit_headers") or {}).items()]
                if record.get("version"):  # the registry version that answered (server/generation.py)
                    extra.append((b"x-ember-model-version", str(record["version"]).encode()))
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-request-id", rid.encode()), *extra]}
            await send(msg)

        try:
            await self.app(scope, receive, logging_send)
        except BaseException:
            status[0] = status[0] or 500
            raise
        finally:
            for release in state.get("on_end", ()):  # e.g. the engine pin of server/openai_api.py `_served`
                release()
            self._emit(scope, rid, status[0], time.perf_counter() - t0, record)

    def _emit(self, scope, rid: str, status: int, latency: float, record: dict) -> None:
        route = scope.get("route")
        # The route template (/v1/models/{model_id:path}), never the raw path: a client must not be able to
        # grow the metric's label set (every 413/415/404 of an unknown path is one "unmatched" label).
        path = getattr(route, "path", None) or "unmatched"
        self.metrics.http.labels(route=path, status=str(status)).inc()
        if path in ("/health", "/ready"):
            return  # probes poll these every few seconds; counted, not logged
        line = {"event": "request", "id": rid, "method": scope.get("method"), "path": scope.get("path"),
                "status": status, "latency_s": round(latency, 4)}
        for k, v in record.items():
            if k in ("prompt", "completion"):
                if not self.log_content:
                    continue
                v = redact_value(v) if self.redact else v
            line[k] = v
        # 503 (loading, draining) is expected operation, not a server error.
        level = logging.ERROR if status >= 500 and status != 503 else logging.INFO
        log.log(level, json.dumps(line, default=str, ensure_ascii=False))
