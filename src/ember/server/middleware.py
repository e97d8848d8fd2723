"""Pure ASGI middlewares (no BaseHTTPMiddleware: it would buffer streams and hide client disconnects).

    ember serve --log-content        # request log lines then include prompt and completion text

- `RequestLog`: one structured JSON line per request on the `ember.requests` logger, written when the
  response (streamed or not) has finished: id, method, path, status, latency, plus what the handler put in
  `request.state.log` (model, token counts, TTFT, queue time, finish reasons, abort). Also counts
  `ember:http_requests_total` and sets the `x-request-id` response header.
- `BodyLimit`: 413 for bodies over the limit, whether announced by Content-Length or streamed chunked.
"""

import json
import logging
import time
import uuid

from ember.server.errors import error_body

log = logging.getLogger("ember.requests")


async def _send_json(send, status: int, body: dict, headers=()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["method"] == "POST" and headers.get(b"content-type", b"").split(b";")[0] in (
                b"", b"application/x-www-form-urlencoded", b"text/plain"):
            # Every body this API takes is JSON; accept it from clients (curl -d) that label it otherwise.
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"] + [
                (b"content-type", b"application/json")]
        length = headers.get(b"content-length")
        too_big = error_body(f"the request body exceeds {self.max_bytes} bytes", "invalid_request_error",
                             None, "request_too_large")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            scope.setdefault("state", {}).setdefault("log", {})["error"] = "body too large"
            return await _send_json(send, 413, too_big)
        seen = 0
        started = False

        async def guarded_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
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


class _TooLarge(Exception):
    pass


class RequestLog:
    def __init__(self, app, metrics, log_content: bool = False):
        self.app, self.metrics, self.log_content = app, metrics, log_content

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
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(msg)

        try:
            await self.app(scope, receive, logging_send)
        except BaseException:
            status[0] = status[0] or 500
            raise
        finally:
            self._emit(scope, rid, status[0], time.perf_counter() - t0, record)

    def _emit(self, scope, rid: str, status: int, latency: float, record: dict) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or ("unmatched" if status == 404 else scope.get("path", ""))
        self.metrics.http.labels(route=path, status=str(status)).inc()
        if path in ("/health", "/ready"):
            return  # probes poll these every few seconds; counted, not logged
        line = {"event": "request", "id": rid, "method": scope.get("method"), "path": scope.get("path"),
                "status": status, "latency_s": round(latency, 4)}
        for k, v in record.items():
            if k in ("prompt", "completion") and not self.log_content:
                continue
            line[k] = v
        # 503 (loading, draining) is expected operation, not a server error.
        level = logging.ERROR if status >= 500 and status != 503 else logging.INFO
        log.log(level, json.dumps(line, default=str, ensure_ascii=False))
