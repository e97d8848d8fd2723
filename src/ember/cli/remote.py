"""`ember generate|chat|batch` through a running `ember serve`, as `ollama run` talks to its server.

    ember serve &                                              # once; keeps the model loaded
    ember generate smollm2-135m-instruct "Hi" --max-tokens 8   # answered by the server: no model load
    EMBER_HOST=http://10.0.0.5:9000 EMBER_API_KEY=sk-... ember chat smollm2-135m-instruct
    ember generate smollm2-135m-instruct "Hi" --local          # always the in-process engine

`connect(ref)` asks the server at EMBER_HOST (default http://127.0.0.1:8000) whether it serves `ref`
(GET /v1/models/REF, a short connect timeout, so an absent server costs milliseconds). When it does not
(no server, another model, a key it refuses), the command says so in one `note:` line on stderr and runs
the model locally. Only httpx is imported here: the `ember` process never loads torch on this path.
"""

import json
import os
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

from ember.errors import (
    EmberError,
    Forbidden,
    InvalidRequest,
    NotFound,
    Overloaded,
    Unauthorized,
)

DEFAULT_HOST = "http://127.0.0.1:8000"
CONNECT_TIMEOUT = 0.5  # seconds: a local server accepts in microseconds; nobody listening refuses at once
PROBE_TIMEOUT = 3.0  # seconds for the whole probe: a server too busy to answer a model card is not used
BY_STATUS = {400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 413: InvalidRequest,
             429: Overloaded}


class Fallback(InvalidRequest):
    """The server cannot run this request (model not served, context too small): `generate` runs it locally;
    where there is no going back (a chat already under way, a batch line) it is an ordinary error."""


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def base_url() -> str:
    """EMBER_HOST as a URL: `host:port` and `http://host:port[/v1]` are both accepted."""
    host = (os.environ.get("EMBER_HOST") or DEFAULT_HOST).strip().rstrip("/")
    if "://" not in host:
        host = "http://" + host
    return host[:-3].rstrip("/") if host.endswith("/v1") else host


def _headers() -> dict:
    key = os.environ.get("EMBER_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _error(resp) -> EmberError:
    """The server's OpenAI error JSON -> the EmberError of its status (so the exit code is the local one)."""
    try:
        err = resp.json()["error"]
        message, code, param = err.get("message") or resp.reason_phrase, err.get("code"), err.get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        message, code, param = f"HTTP {resp.status_code} from the server", None, None
    return BY_STATUS.get(resp.status_code, EmberError)(f"server: {message}", code=code, param=param)


class Remote:
    """One model on one server; requests go to its OpenAI routes."""

    def __init__(self, base: str, model: str, card: dict):
        import httpx

        self.base, self.model, self.card = base, model, card
        self.client = httpx.Client(base_url=base, headers=_headers(),
                                   timeout=httpx.Timeout(60.0, connect=5.0, read=None))

    @property
    def context_length(self) -> int | None:
        return self.card.get("max_model_len")

    def post(self, path: str, body: dict) -> dict:
        import httpx

        try:
            resp = self.client.post(path, json={**body, "model": self.model})
        except httpx.HTTPError as e:
            raise EmberError(f"lost the server at {self.base}: {e}") from None
        if resp.status_code != 200:
            raise self._refusal(resp)
        return resp.json()

    def stream(self, path: str, body: dict) -> Iterator[str]:
        """Text deltas of choice 0 of a streamed completion or chat completion. Closing the generator
        (Ctrl-C) closes the connection, and the server aborts the request."""
        import httpx

        try:
            yield from self._stream(path, body)
        except httpx.HTTPError as e:
            raise EmberError(f"lost the server at {self.base}: {e}") from None

    def _stream(self, path: str, body: dict) -> Iterator[str]:
        chat = "chat" in path
        with self.client.stream("POST", path, json={**body, "model": self.model, "stream": True}) as resp:
            if resp.status_code != 200:
                resp.read()
                raise self._refusal(resp)
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise EmberError(f"server: {chunk['error'].get('message')}")
                for c in chunk.get("choices") or []:
                    if c.get("index", 0) == 0:
                        text = (c.get("delta") or {}).get("content") if chat else c.get("text")
                        if text:
                            yield text

    def count_chat_tokens(self, messages: list[dict]) -> int:
        return int(self.post("/tokenize", {"messages": messages})["count"])

    def _refusal(self, resp) -> EmberError:
        err = _error(resp)
        if err.code == "model_not_found":
            return Fallback(f"the server at {self.base} does not serve {self.model}")
        if err.code == "context_length_exceeded":
            return Fallback(f"the request does not fit the server's context ({err.message.removeprefix('server: ')})")
        return err

    def close(self) -> None:
        self.client.close()


def connect(ref: str, local: bool = False) -> Remote | None:
    """The running server that serves `ref`, or None (after a one-line note saying why) to run locally."""
    if local or Path(ref).exists():  # a folder on disk is only ever run here
        return None
    import httpx

    base = base_url()
    try:
        resp = httpx.get(f"{base}/v1/models/{quote(ref, safe='@:')}", headers=_headers(),
                         timeout=httpx.Timeout(PROBE_TIMEOUT, connect=CONNECT_TIMEOUT))
    except httpx.HTTPError as e:
        why = "did not answer in time" if isinstance(e, httpx.TimeoutException) else "is not reachable"
        note(f"no Ember server at {base} ({why}); loading {ref} locally (`ember serve` keeps it loaded)")
        return None
    if resp.status_code == 200:
        try:
            card = resp.json()
        except ValueError:
            card = None
        if isinstance(card, dict) and "chat" in (card.get("capabilities") or ["chat"]):
            return Remote(base, ref, card)
        note(f"the server at {base} does not generate with {ref}; loading it locally")
        return None
    why = {401: "needs an API key (set EMBER_API_KEY)", 403: "refuses this API key",
           404: f"does not serve {ref}", 503: "is still loading its models"}.get(resp.status_code,
                                                                                 f"answered {resp.status_code}")
    note(f"the server at {base} {why}; loading {ref} locally")
    return None


# ----- ember generate -----

def generate(remote: Remote, prompt: str, *, chat_mode: bool, stream: bool, max_tokens: int, temperature: float,
             top_p: float, top_k: int, seed: int | None, beams: int, stop: list[str],
             extra: dict | None = None) -> None:
    """`ember generate` over the API: the same options, the same output. Raises Fallback before printing
    anything when the server cannot run it."""
    body: dict = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
                  **(extra or {})}
    if top_k:
        body["top_k"] = top_k
    if stop:
        body["stop"] = list(stop)
    if beams > 1:
        body.update(use_beam_search=True, best_of=beams)
        stream = False  # beam search returns the finished beams (as the local path does)
    if chat_mode:
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": prompt}]
    else:
        path, body["prompt"] = "/v1/completions", prompt
    if stream:
        for text in remote.stream(path, body):
            sys.stdout.write(text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    choice = remote.post(path, body)["choices"][0]
    print(choice["message"]["content"] if chat_mode else choice["text"])


# ----- ember chat -----

def chat_answerer(remote: Remote, *, max_tokens: int, temperature: float, top_p: float, seed: int | None,
                  extra: dict | None = None):
    """The `answer(messages) -> iterator of text` function `ember chat` uses (cli/chat_repl.py)."""

    def answer(messages: list[dict]) -> Iterator[str]:
        n = max_tokens
        if remote.context_length:
            room = remote.context_length - remote.count_chat_tokens(messages) - 1
            if room < 1:
                raise InvalidRequest("the conversation no longer fits the context; /reset it")
            n = min(n, room)
        body = {"messages": messages, "max_tokens": n, "temperature": temperature, "top_p": top_p, "seed": seed,
                **(extra or {})}
        yield from remote.stream("/v1/chat/completions", body)

    return answer


# ----- ember batch -----

def batch(remote: Remote, lines: list[str], done: int, output_path: Path, workers: int = 16) -> int:
    """Sends lines[done:] to the server (`workers` at a time) and appends one result per line to
    output_path in input order, the same records as the local path writes. Returns the number of errors."""
    from rich.progress import Progress

    def one(i: int) -> dict:
        custom_id, response, error = f"line-{i + 1}", None, None
        try:
            req = json.loads(lines[i])
            if not isinstance(req, dict) or not isinstance(req.get("body"), dict):
                raise InvalidRequest(f"line {i + 1}: expected an object with 'custom_id' and 'body'")
            custom_id = req.get("custom_id") or custom_id
            url = req.get("url") or ("/v1/chat/completions" if "messages" in req["body"] else "/v1/completions")
            if url not in ("/v1/chat/completions", "/v1/completions"):
                raise InvalidRequest(f"line {i + 1}: unsupported url {url!r}")
            body = {k: v for k, v in req["body"].items() if k not in ("stream", "stream_options")}
            response = {"status_code": 200, "body": remote.post(url, body)}
        except json.JSONDecodeError as e:
            error = InvalidRequest(f"line {i + 1}: not valid JSON ({e.msg})")
        except Fallback as e:
            error = InvalidRequest(str(e))
        except EmberError as e:
            error = e
        return {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id, "response": response,
                "error": None if error is None else {"code": error.type, "message": error.message}}

    n_err = 0
    with ThreadPoolExecutor(workers) as pool, open(output_path, "a") as out, \
            Progress(transient=not sys.stderr.isatty()) as bar:
        task = bar.add_task("batch", total=len(lines), completed=done)
        # map() yields in input order while up to `workers` requests run; results are written as they come.
        for rec in pool.map(one, range(done, len(lines))):
            out.write(json.dumps(rec) + "\n")
            out.flush()
            os.fsync(out.fileno())
            n_err += rec["error"] is not None
            bar.advance(task)
    return n_err
