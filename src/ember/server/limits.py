"""Limits checked before any work: request sizes and ranges (before tokenizing), and per-key limits (rpm,
tpm, parallel requests, token budget, models) with OpenAI's `x-ratelimit-*` headers.

    ember serve --max-best-of 8 --max-prompt-chars 65536 --max-messages 1024 --default-max-tokens 1024
    ember keys create --name team-a --rpm 60 --tpm 20000 --max-parallel 4 --budget 1000000 --models tiny

Request checks (`check_text`, `check_chat`, `check_params`) raise InvalidRequest (400) naming the field.
Key checks (`admit`) raise Overloaded (429 with Retry-After) for rpm/tpm/parallel, Forbidden (403) for an
exhausted budget; an expired key is already refused by auth (401). The counters behind rpm, tpm and budgets
live in the database (store/usage.py), so replicas sharing it share the limits; `max_parallel` is counted
per server process. A `Ticket` counts a request's tokens as they are produced (streamed ones in batches of
`FLUSH_TOKENS` or every `FLUSH_S` seconds) and writes the rest when the request ends.
"""

import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass, field

from ember.errors import Forbidden, InvalidRequest, NotFound, Overloaded
from ember.store import usage

MAX_STOP_TOKEN_IDS = 256
MAX_LOGIT_BIAS = 300  # OpenAI's limit
MAX_STOP_CHARS = 512
MAX_NAME_CHARS = 256
MAX_SEED = 2**63  # seeds are int64, as OpenAI documents
FLUSH_TOKENS, FLUSH_S = 32, 1.0


@dataclass
class RequestLimits:
    max_best_of: int = 8  # beams, best_of and n (TGI's --max-best-of)
    max_prompt_chars: int = 65536
    max_messages: int = 1024
    default_max_tokens: int = 1024
    queue_timeout: float = 120.0
    request_timeout: float = 600.0  # from arrival to the last token; then 504 (or an error event in a stream)


# ----- request shape, before tokenizing -----
def _surrogate_free(value, param: str) -> None:
    """Lone UTF-16 surrogates (valid JSON escapes, invalid text) cannot be tokenized or encoded: 400."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"{param} contains a lone UTF-16 surrogate (invalid Unicode text)",
                                 param=param) from None
    elif isinstance(value, (list, tuple)):
        for v in value:
            _surrogate_free(v, param)
    elif isinstance(value, dict):
        for k, v in value.items():
            _surrogate_free(k, param)
            _surrogate_free(v, param)


def check_text(body, lim: RequestLimits, prompt_field: str = "prompt", per_item: bool = False) -> None:
    """Characters and valid Unicode of every text field of a request body. per_item: the character limit
    applies to each input of a list (embeddings, where each input is truncated to the model's length)."""
    for name, value in body:
        _surrogate_free(value, prompt_field if name in ("prompt", "input") else name)
    text = getattr(body, prompt_field, None)
    sizes = [len(text)] if isinstance(text, str) else [len(t) for t in text or [] if isinstance(t, str)]
    chars = max(sizes, default=0) if per_item else sum(sizes)
    if chars > lim.max_prompt_chars:
        raise InvalidRequest(f"{prompt_field} has {chars} characters; this server takes at most "
                             f"{lim.max_prompt_chars} (--max-prompt-chars)", param=prompt_field)
    _check_sampling_fields(body, lim)


def check_chat(body, lim: RequestLimits) -> None:
    """Message count and total characters of a chat request, before its template is rendered."""
    msgs = body.messages or []
    if len(msgs) > lim.max_messages:
        raise InvalidRequest(f"{len(msgs)} messages; this server takes at most {lim.max_messages} "
                             "(--max-messages)", param="messages")
    for name, value in body:
        if name != "messages":
            _surrogate_free(value, name)
    chars = 0
    for m in msgs:
        text = m.text()
        _surrogate_free(text, "messages")
        chars += len(text)
        if m.name is not None:
            _surrogate_free(m.name, "name")
            if len(m.name) > MAX_NAME_CHARS:
                raise InvalidRequest(f"a message name is at most {MAX_NAME_CHARS} characters", param="name")
    if chars > lim.max_prompt_chars:
        raise InvalidRequest(f"the messages have {chars} characters; this server takes at most "
                             f"{lim.max_prompt_chars} (--max-prompt-chars)", param="messages")
    _check_sampling_fields(body, lim)


def _check_sampling_fields(body, lim: RequestLimits) -> None:
    seed = getattr(body, "seed", None)
    if seed is not None and not -MAX_SEED <= seed < MAX_SEED:
        raise InvalidRequest("seed must be a 64-bit signed integer", param="seed")
    stop_ids = getattr(body, "stop_token_ids", None) or []
    if len(stop_ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidRequest(f"at most {MAX_STOP_TOKEN_IDS} stop_token_ids", param="stop_token_ids")
    if len(getattr(body, "logit_bias", None) or {}) > MAX_LOGIT_BIAS:
        raise InvalidRequest(f"logit_bias takes at most {MAX_LOGIT_BIAS} tokens", param="logit_bias")
    stop = getattr(body, "stop", None)
    for s in [stop] if isinstance(stop, str) else stop or []:
        if len(s) > MAX_STOP_CHARS:
            raise InvalidRequest(f"a stop string is at most {MAX_STOP_CHARS} characters", param="stop")
    lp = getattr(body, "length_penalty", 1.0)
    if lp is not None and not (math.isfinite(lp) and -10 <= lp <= 10):
        raise InvalidRequest("length_penalty must be in [-10, 10]", param="length_penalty")
    for name in ("n", "best_of"):
        v = getattr(body, name, None)
        if v is not None and v > lim.max_best_of:
            raise InvalidRequest(f"{name} is at most {lim.max_best_of} on this server (--max-best-of)", param=name)


def check_params(params, served, prompts: list[list[int]], lim: RequestLimits, key=None,
                 cache_salt: str | None = None) -> None:
    """After SamplingParams are built: beam width, stop token ids in range, a bounded default max_tokens,
    and the prefix-cache salt (reuse only within one key, or one client-given cache_salt)."""
    if params.use_beam_search and params.num_beams > lim.max_best_of:
        raise InvalidRequest(f"beam search with {params.num_beams} beams; this server runs at most "
                             f"{lim.max_best_of} (--max-best-of)", param="best_of")
    vocab = served.engine.model.vocab_size if served.engine is not None else len(served.tokenizer)
    if any(not 0 <= t < vocab for t in params.stop_token_ids):
        raise InvalidRequest(f"stop_token_ids must be token ids in [0, {vocab})", param="stop_token_ids")
    if params.max_tokens is None and served.engine is not None:
        room = served.engine.context_length - max(len(p) for p in prompts)
        params.max_tokens = max(1, min(lim.default_max_tokens, room))
    # Another tenant's cached prefix must not show in cached_tokens (a timing/usage side channel).
    params.cache_salt = f"{key.id if key else ''}|{cache_salt or ''}"


# ----- per-key limits -----
def check_model(request, served) -> None:
    """A key limited to some models sees only those: others are 404, as if not served."""
    key = getattr(request.state, "key", None)
    if key is not None and key.models and not allowed(key, served):
        raise NotFound(f"the model {served.id!r} does not exist or is not served here (see /v1/models)",
                       param="model", code="model_not_found")


def allowed(key, served) -> bool:
    return not key.models or served.id in key.models or served.ref in key.models or \
        served.ref.split(":")[0] in key.models


def _headers(key, req_used: int, tok_used: int, now: float) -> dict[str, str]:
    reset = f"{60 - int(now) % 60}s"
    h = {}
    if key.rpm:
        h.update({"x-ratelimit-limit-requests": str(key.rpm),
                  "x-ratelimit-remaining-requests": str(max(0, key.rpm - req_used)),
                  "x-ratelimit-reset-requests": reset})
    if key.tpm:
        h.update({"x-ratelimit-limit-tokens": str(key.tpm),
                  "x-ratelimit-remaining-tokens": str(max(0, key.tpm - tok_used)),
                  "x-ratelimit-reset-tokens": reset})
    return h


class Parallel:
    """Requests in flight per key in this process (max_parallel)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count: dict[str, int] = {}

    def take(self, key_id: str, limit: int | None) -> bool:
        with self._lock:
            n = self.count.get(key_id, 0)
            if limit and n >= limit:
                return False
            self.count[key_id] = n + 1
            return True

    def give(self, key_id: str) -> None:
        with self._lock:
            n = self.count.get(key_id, 1) - 1
            if n <= 0:
                self.count.pop(key_id, None)
            else:
                self.count[key_id] = n


def _admit_sync(key, model: str, settings) -> dict[str, str]:
    """Budget, rpm and tpm against the database; counts the request. Returns the x-ratelimit headers."""
    now = time.time()
    key_id = key.id if key else usage.NO_KEY
    if key is not None and key.budget_tokens:
        used = usage.tokens_since(key.id, usage.period_start(key.budget_period), settings)
        if used >= key.budget_tokens:
            end = usage.period_end(key.budget_period)
            when = f"; it resets at {end.isoformat()}" if end else ""
            raise Forbidden(f"this API key has used its token budget ({used} of {key.budget_tokens} tokens per "
                            f"{key.budget_period or 'month'}){when}", code="budget_exceeded")
    if key is None or not (key.rpm or key.tpm):
        usage.start_request(key_id, model, settings, now)
        return {}
    # Checked and counted in one statement: two replicas cannot both take the minute's last request.
    refused, reqs, toks = usage.take_request(key.id, model, key.rpm, key.tpm, settings, now)
    wait = 60 - int(now) % 60
    if refused == "rpm":
        raise _limited(f"rate limit: {key.rpm} requests per minute for this API key; retry in {wait}s", wait,
                       _headers(key, reqs, toks, now))
    if refused == "tpm":
        raise _limited(f"rate limit: {key.tpm} tokens per minute for this API key; retry in {wait}s", wait,
                       _headers(key, reqs, toks, now))
    return _headers(key, reqs + 1, toks, now)


def _limited(message: str, wait: int, headers: dict) -> Overloaded:
    e = Overloaded(message, retry_after=max(1, wait), code="rate_limit_exceeded")
    e.headers = headers
    return e


@dataclass
class Ticket:
    """One admitted request's share of its key's limits; `tokens` as they come, `close` once at the end."""

    key_id: str
    model: str
    settings: object
    parallel: Parallel | None = None
    live: bool = False  # write tokens while streaming (keys with tpm or a budget); else once at the end
    prompt_done: int = 0
    completion_done: int = 0
    pending: int = 0
    last_flush: float = field(default_factory=time.monotonic)
    closed: bool = False

    def tokens(self, n: int) -> None:
        """Completion tokens just produced (called on the event loop)."""
        self.pending += n
        if self.live and (self.pending >= FLUSH_TOKENS or time.monotonic() - self.last_flush >= FLUSH_S):
            n, self.pending = self.pending, 0
            self.completion_done += n
            self.last_flush = time.monotonic()
            _background(usage.add_tokens, self.key_id, self.model, 0, n, self.settings)

    def close(self, prompt_tokens: int, completion_tokens: int) -> None:
        if self.closed:
            return
        self.closed = True
        if self.parallel is not None:
            self.parallel.give(self.key_id)
        p = max(0, prompt_tokens - self.prompt_done)
        c = max(0, completion_tokens - self.completion_done)
        self.prompt_done += p
        self.completion_done += c
        self.pending = 0
        _background(usage.add_tokens, self.key_id, self.model, p, c, self.settings)


def _background(fn, *args) -> None:
    try:
        asyncio.get_running_loop().run_in_executor(None, fn, *args)
    except RuntimeError:  # no loop (called from a worker thread): write now
        fn(*args)


async def admit(request, served) -> Ticket:
    """Checks and counts the request against its key's limits; returns the ticket that counts its tokens."""
    st = request.app.state
    key = getattr(request.state, "key", None)
    if key is not None and key.max_parallel and not st.parallel.take(key.id, key.max_parallel):
        e = Overloaded(f"this API key already has {key.max_parallel} requests in flight (max_parallel); retry "
                       "when one finishes", retry_after=1, code="rate_limit_exceeded")
        raise e
    parallel = st.parallel if key is not None and key.max_parallel else None
    try:
        headers = await asyncio.get_running_loop().run_in_executor(None, _admit_sync, key, served.id, st.settings)
    except Overloaded as e:
        request.state.ratelimit_headers = getattr(e, "headers", {})
        if parallel is not None:
            parallel.give(key.id)
        raise
    except BaseException:
        if parallel is not None:
            parallel.give(key.id)
        raise
    request.state.ratelimit_headers = headers
    live = key is not None and bool(key.tpm or key.budget_tokens)
    return Ticket(key.id if key else usage.NO_KEY, served.id, st.settings, parallel, live)


# ----- before the body is parsed -----
class MessageCount:
    """Pure ASGI: a large JSON body whose message count exceeds --max-messages is refused before it is parsed.

    Parsing and validating 100,000 small JSON objects holds the GIL for seconds (a worker thread would not
    help), so the count is taken on the raw bytes: every message has exactly one `"role"` key, and a quote
    inside a JSON string is always escaped, so `body.count(b'"role"')` is at least the number of messages."""

    THRESHOLD = 64 * 1024  # smaller bodies cannot hold enough messages to matter

    def __init__(self, app, max_messages: int):
        self.app, self.max_messages = app, max_messages

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) < self.THRESHOLD:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # the client went away
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        roles = body.count(b'"role"')
        if roles > self.max_messages:
            from ember.server.errors import error_body

            scope.setdefault("state", {}).setdefault("log", {})["error"] = "too many messages"
            data = json.dumps(error_body(f"the request has {roles} messages; this server takes at most "
                                         f"{self.max_messages} (--max-messages)", "invalid_request_error",
                                         "messages")).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
