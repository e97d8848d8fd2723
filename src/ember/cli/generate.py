"""`ember generate`, `ember chat`, `ember batch`: the engine from the command line.

    ember generate smollm2-135m-instruct "The capital of France is" --max-tokens 32 --temperature 0
    ember chat smollm2-135m-instruct --system "You are terse."
    ember batch smollm2-135m-instruct requests.jsonl results.jsonl

With an `ember serve` running at EMBER_HOST (default 127.0.0.1:8000) that serves the model, all three
talk to it over the API instead of loading the model (cli/remote.py); `--local` always runs in-process.

`batch` reads OpenAI batch lines ({"custom_id", "method", "url", "body"}), runs them all through one
continuous batch, and writes one result per line in input order (flushed line by line). Bodies are the
server's: parsed by server/schemas.py, answered in server/formats.py's shapes (echo + logprobs and
`max_tokens: 0` score a prompt; prompts may be token ids). A bad line becomes
an error record and the rest still run; rerunning with the same out.jsonl skips the lines already done.
"""

import dataclasses
import json
import os
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import typer

from ember.errors import EmberError, InvalidRequest

MAX_TOKENS = typer.Option(None, "--max-tokens", help="New tokens at most (default: 256; batch: the body's).")
LOCAL = typer.Option(False, "--local", help="Load the model in this process even when a server is running.")


def register(root: typer.Typer) -> None:
    root.command("generate")(generate)
    root.command("chat")(chat)
    root.command("batch")(batch)


def _engine(ref: str, max_slots: int = 32, max_seq_len: int = 2048, threads: int | None = None,
            speculative: str | None = None, num_speculative_tokens: int = 4):
    from ember.config import get_settings
    from ember.engine.engine import Engine
    from ember.engine.speculative import SpecConfig

    spec = SpecConfig(speculative, num_tokens=num_speculative_tokens) if speculative else None
    return Engine.load(ref, get_settings(), max_slots=max_slots, max_seq_len=max_seq_len, threads=threads,
                       speculative=spec)


def generate(ref: str = typer.Argument(..., help="Model reference (name, name:3, name@alias) or a HF folder."),
             prompt: str = typer.Argument(..., help="Prompt text ('-' reads stdin)."),
             max_tokens: int = typer.Option(256, "--max-tokens"),
             temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
             top_p: float = typer.Option(1.0, "--top-p"),
             top_k: int = typer.Option(0, "--top-k"),
             seed: int = typer.Option(None, "--seed"),
             beams: int = typer.Option(1, "--beams", help="> 1: beam search with this many beams."),
             stop: list[str] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
             chat_mode: bool = typer.Option(False, "--chat", help="Wrap the prompt as one user message."),
             stream: bool = typer.Option(False, "--stream/--no-stream", help="Print tokens as they come."),
             json_schema: Path = typer.Option(None, "--json-schema", help="Constrain the output to this JSON schema."),
             regex: str = typer.Option(None, "--regex", help="Constrain the output to this regex."),
             choice: list[str] = typer.Option(None, "--choice", help="Constrain the output to one of these."),
             threads: int = typer.Option(None, "--threads"),
             speculative: str = typer.Option(None, "--speculative", help="Speculative decoding: ngram (local)."),
             num_speculative_tokens: int = typer.Option(4, "--num-speculative-tokens", min=1, max=16),
             local: bool = LOCAL):
    """Complete one prompt (through a running `ember serve` when there is one)."""
    from ember.cli import remote as api

    constraint = _constraint(json_schema, regex, choice)
    if prompt == "-":
        prompt = sys.stdin.read()
    server = api.connect(ref, local)
    if server is not None:
        try:
            return api.generate(server, prompt, chat_mode=chat_mode, stream=stream, max_tokens=max_tokens,
                                temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, beams=beams,
                                stop=stop or [], extra=_guided(constraint))
        except api.Fallback as e:
            api.note(f"{e}; loading {ref} locally")
    from ember.engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                            num_beams=beams, stop=stop or [], constraint=constraint)
    engine = _engine(ref, max_slots=4, max_seq_len=min(8192, max(2048, max_tokens + 1024)), threads=threads,
                     speculative=speculative, num_speculative_tokens=num_speculative_tokens)
    p = engine.chat_prompt([{"role": "user", "content": prompt}]) if chat_mode else prompt
    if stream and not params.use_beam_search:
        _stream_print(engine, p, params)
    else:
        print(engine.generate([p], params)[0].text)


def _stream_print(engine, prompt, params) -> str:
    """Prints deltas as they arrive; returns the whole text."""
    import asyncio

    async def run() -> str:
        out = []
        async for d in engine.stream(prompt, params):
            sys.stdout.write(d.text)
            sys.stdout.flush()
            out.append(d.text)
        sys.stdout.write("\n")
        return "".join(out)

    return asyncio.run(run())


def chat(ref: str = typer.Argument(..., help="Model reference or HF folder (needs a chat template)."),
         system: str = typer.Option(None, "--system", help="System message."),
         max_tokens: int = typer.Option(512, "--max-tokens"),
         temperature: float = typer.Option(0.7, "--temperature"),
         top_p: float = typer.Option(0.95, "--top-p"),
         seed: int = typer.Option(None, "--seed"),
         json_schema: Path = typer.Option(None, "--json-schema", help="Constrain each answer to this JSON schema."),
         regex: str = typer.Option(None, "--regex", help="Constrain each answer to this regex."),
         choice: list[str] = typer.Option(None, "--choice", help="Constrain each answer to one of these."),
         threads: int = typer.Option(None, "--threads"),
         local: bool = LOCAL):
    """Interactive chat: streams each answer, keeps the history. /reset clears it, /exit or Ctrl-D ends,
    Ctrl-C stops an answer."""
    from ember.cli import chat_repl, remote as api
    from ember.config import get_settings

    constraint = _constraint(json_schema, regex, choice)
    sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
    server = api.connect(ref, local)
    if server is not None:
        answer = api.chat_answerer(server, **sampling, extra=_guided(constraint))
    else:
        engine = _engine(ref, max_slots=2, threads=threads)
        engine.chat_prompt([{"role": "user", "content": "hi"}])  # fail now if there is no template
        answer = chat_repl.local_answerer(engine, **sampling, constraint=constraint)
    chat_repl.run(answer, system, history=get_settings().home / "chat_history")


def _constraint(json_schema: Path | None, regex: str | None, choice: list[str] | None):
    """--json-schema FILE / --regex / --choice -> the engine's Constraint (at most one)."""
    from ember.engine.structured import Constraint

    given = [x for x in (json_schema, regex, choice) if x]
    if len(given) > 1:
        raise InvalidRequest("give at most one of --json-schema, --regex and --choice")
    if json_schema:
        try:
            return Constraint("json_schema", json.loads(Path(json_schema).read_text()), "--json-schema")
        except (OSError, ValueError) as e:
            raise InvalidRequest(f"cannot read the JSON schema {json_schema}: {e}", param="--json-schema") from None
    if regex:
        return Constraint("regex", regex, "--regex")
    if choice:
        return Constraint("choice", list(choice), "--choice")
    return None


def _guided(constraint) -> dict:
    """The same constraint as vLLM's request extras, for the server path."""
    if constraint is None:
        return {}
    return {{"json_schema": "guided_json", "regex": "guided_regex", "choice": "guided_choice"}[constraint.kind]:
            constraint.value}


# ----- batch -----
# Lines are parsed with the server's own request models and rendered with its formatter (vLLM's run_batch.py
# does the same), so a body means the same thing to `ember batch` as to `ember serve`.


@dataclass
class _Served:
    """What server/formats.py reads of a served model."""

    id: str
    tokenizer: object


@dataclass
class _Line:
    url: str
    body: object  # CompletionRequest or ChatRequest
    prompts: list[list[int]]
    params: object  # SamplingParams
    tool_names: set[str] | None = None  # a chat line with tools: calls are parsed out of the text


def _prepare(engine, line: str, lineno: int) -> _Line:
    """Parses one batch line; raises EmberError for a bad one."""
    from pydantic import ValidationError

    from ember.server import tools
    from ember.server.schemas import ChatRequest, CompletionRequest, validation_message
    from ember.server.structured_schemas import constraint_of

    try:
        req = json.loads(line)
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"line {lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(req, dict) or not isinstance(req.get("body"), dict):
        raise InvalidRequest(f"line {lineno}: expected an object with 'custom_id' and 'body'")
    url = req.get("url", "/v1/chat/completions")
    if url not in ("/v1/chat/completions", "/v1/completions"):
        raise InvalidRequest(f"line {lineno}: url must be /v1/chat/completions or /v1/completions", param="url")
    model = ChatRequest if url == "/v1/chat/completions" else CompletionRequest
    try:
        body = model.model_validate(req["body"])
    except ValidationError as e:
        msg, param = validation_message(e.errors())
        raise InvalidRequest(f"line {lineno}: {msg}", param=param) from None
    if body.stream:
        raise InvalidRequest(f"line {lineno}: stream is not available in a batch", param="stream")
    params = body.to_sampling_params()
    names = None
    if isinstance(body, ChatRequest):  # tools and response_format exactly as the server applies them
        choice = body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump") else body.tool_choice
        ids, constraint, names = tools.prepare_chat(
            engine, tools.chat_messages(body.messages), [t.model_dump(exclude_none=True) for t in body.tools or []]
            or None, choice, body.parallel_tool_calls, constraint_of(body), body.add_generation_prompt)
        prompts = [ids]
    else:
        p = body.prompt
        prompts = [engine.encode(p)] if isinstance(p, str) or isinstance(p[0], int) else [engine.encode(x) for x in p]
        constraint = constraint_of(body)
    if constraint is not None:
        params = dataclasses.replace(params, constraint=constraint)
    for ids in prompts:
        engine.check(ids, params, param="messages" if isinstance(body, ChatRequest) else "prompt")
    return _Line(url, body, prompts, params, names)


def _response(engine, ref: str, ln: _Line, accs: dict, usage) -> dict:
    from ember.server import formats

    served = _Served(ln.body.model or ref, engine.tokenizer)
    if ln.tool_names:
        from ember.server.tools import ToolChatFormat

        return ToolChatFormat(served, ln.prompts, ln.body, ln.tool_names).full(accs, usage, ln.body.n)
    cls = formats.ChatFormat if ln.url == "/v1/chat/completions" else formats.CompletionFormat
    return cls(served, ln.prompts, ln.body).full(accs, usage, ln.body.n)


def batch(ref: str = typer.Argument(..., help="Model reference or HF folder."),
          input_path: Path = typer.Argument(..., help="OpenAI batch input (.jsonl)."),
          output_path: Path = typer.Argument(..., help="Results (.jsonl), appended; rerun to resume."),
          max_slots: int = typer.Option(32, "--max-slots"),
          threads: int = typer.Option(None, "--threads"),
          local: bool = LOCAL):
    """Offline batch inference, results in input order; reruns resume after the last written line."""
    from rich.progress import Progress

    from ember.engine.scheduler import Delta, Usage
    from ember.server.formats import ChoiceAcc

    if not input_path.is_file():
        from ember.errors import NotFound

        raise NotFound(f"input file {input_path} not found")
    lines = input_path.read_text().splitlines()
    lines = [ln for ln in lines if ln.strip()]
    from ember.jobs.batch import done_lines

    done = done_lines(output_path)  # the same resume rule as a /v1/batches job
    if done > len(lines):
        raise InvalidRequest(f"{output_path} has more results ({done}) than {input_path} has lines")
    from ember.cli import remote as api

    server = api.connect(ref, local) if done < len(lines) else None
    if server is not None:
        n_err = api.batch(server, lines, done, output_path)
        print(f"{len(lines)} lines: {len(lines) - done} run by {server.base}, {done} already done, {n_err} errors "
              f"-> {output_path}", file=sys.stderr)
        return
    engine = _engine(ref, max_slots=max_slots)
    results: dict[int, dict] = {}
    cond = threading.Condition()

    def custom_id(i: int) -> str:
        try:
            return json.loads(lines[i]).get("custom_id") or f"line-{i + 1}"
        except (json.JSONDecodeError, AttributeError):
            return f"line-{i + 1}"

    def record(i: int, response: dict | None, error: EmberError | None) -> None:
        rec = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id(i),
               "response": None if response is None else {"status_code": 200, "body": response},
               "error": None if error is None else {"code": error.type, "message": error.message}}
        with cond:
            results[i] = rec
            cond.notify()

    def submit(i: int) -> None:
        try:
            ln = _prepare(engine, lines[i], i + 1)
            accs: dict[int, dict] = {pi: {} for pi in range(len(ln.prompts))}
            usage = Usage(0, 0)
            pending = [len(ln.prompts)]
            lock = threading.Lock()

            def on_delta(d, pi, ln=ln, accs=accs, usage=usage, pending=pending, lock=lock):
                with lock:
                    accs[pi].setdefault(d.index, ChoiceAcc()).add(d)
                    if d.usage is None:
                        return
                    usage.prompt_tokens += d.usage.prompt_tokens
                    usage.completion_tokens += d.usage.completion_tokens
                    usage.cached_tokens += d.usage.cached_tokens
                    pending[0] -= 1
                    if pending[0]:
                        return
                record(i, _response(engine, ref, ln, accs, usage), None)

            for pi, ids in enumerate(ln.prompts):
                if ln.params.use_beam_search:
                    comp = engine.beam_search(ids, ln.params)
                    for c in comp.choices:
                        on_delta(Delta(comp.request_id, c.index, c.text, c.token_ids, c.logprobs, c.finish_reason,
                                       comp.usage if c.index == len(comp.choices) - 1 else None), pi)
                else:
                    engine.add_request(ids, ln.params, lambda d, pi=pi, f=on_delta: f(d, pi))
        except EmberError as e:
            record(i, None, e)

    window = max_slots * 4  # requests in flight at most, so a huge file does not tokenize up front
    nxt = done
    with open(output_path, "a") as out, Progress(transient=not sys.stderr.isatty()) as bar:
        task = bar.add_task("batch", total=len(lines), completed=done)
        for i in range(done, len(lines)):
            while nxt < len(lines) and nxt < i + window:
                submit(nxt)
                nxt += 1
            with cond:
                while i not in results:
                    cond.wait()
                rec = results.pop(i)
            out.write(json.dumps(rec) + "\n")
            out.flush()
            os.fsync(out.fileno())
            bar.advance(task)
    engine.close()
    n_err = sum(1 for ln in output_path.read_text().splitlines() if json.loads(ln).get("error"))
    print(f"{len(lines)} lines: {len(lines) - done} run now, {done} already done, {n_err} errors -> {output_path}",
          file=sys.stderr)
