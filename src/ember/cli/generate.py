"""`ember generate`, `ember chat`, `ember batch`: the engine from the command line.

    ember generate smollm2-135m-instruct "The capital of France is" --max-tokens 32 --temperature 0
    ember chat smollm2-135m-instruct --system "You are terse."
    ember batch smollm2-135m-instruct requests.jsonl results.jsonl

`batch` reads OpenAI batch lines ({"custom_id", "method", "url", "body"}), runs them all through one
continuous batch, and writes one result per line in input order (flushed line by line). A bad line becomes
an error record and the rest still run; rerunning with the same out.jsonl skips the lines already done.
"""

import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import typer

from ember.errors import EmberError, InvalidRequest

MAX_TOKENS = typer.Option(None, "--max-tokens", help="New tokens at most (default: 256; batch: the body's).")


def register(root: typer.Typer) -> None:
    root.command("generate")(generate)
    root.command("chat")(chat)
    root.command("batch")(batch)


def _engine(ref: str, max_slots: int = 32, max_seq_len: int = 2048, threads: int | None = None):
    from ember.config import get_settings
    from ember.engine.engine import Engine

    return Engine.load(ref, get_settings(), max_slots=max_slots, max_seq_len=max_seq_len, threads=threads)


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
             json_schema: Path = typer.Option(None, "--json-schema", help="Constrain the output to this JSON schema (file)."),
             regex: str = typer.Option(None, "--regex", help="Constrain the output to this regex."),
             choice: list[str] = typer.Option(None, "--choice", help="Constrain the output to one of these (repeatable)."),
             threads: int = typer.Option(None, "--threads")):
    """Complete one prompt."""
    from ember.engine.sampling import SamplingParams

    if prompt == "-":
        prompt = sys.stdin.read()
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                            num_beams=beams, stop=stop or [], constraint=_constraint(json_schema, regex, choice))
    engine = _engine(ref, max_slots=4, max_seq_len=min(8192, max(2048, max_tokens + 1024)), threads=threads)
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
         json_schema: Path = typer.Option(None, "--json-schema", help="Constrain the output to this JSON schema (file)."),
         regex: str = typer.Option(None, "--regex", help="Constrain the output to this regex."),
         choice: list[str] = typer.Option(None, "--choice", help="Constrain the output to one of these (repeatable)."),
         threads: int = typer.Option(None, "--threads")):
    """Interactive chat: streams each answer, keeps the history. /reset clears it, /exit or Ctrl-D ends."""
    from ember.engine.sampling import SamplingParams

    engine = _engine(ref, max_slots=2, threads=threads)
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    engine.chat_prompt(history + [{"role": "user", "content": "hi"}])  # fail now if there is no template
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history = list(base)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        ids = engine.chat_prompt(history)
        room = engine.context_length - len(ids) - 1
        if room < 1:
            raise InvalidRequest("the conversation no longer fits the context; /reset it")
        params = SamplingParams(max_tokens=min(max_tokens, room), temperature=temperature, top_p=top_p, seed=seed,
                                constraint=_constraint(json_schema, regex, choice))
        answer = _stream_print(engine, ids, params)
        history.append({"role": "assistant", "content": answer})


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


def _structured_line(engine, body: dict, chat: bool, lineno: int):
    """A batch line's response_format / guided_* / tools -> (prompt ids or None, constraint, tool names)."""
    from pydantic import ValidationError

    from ember.server import tools
    from ember.server.schemas import ChatRequest, CompletionRequest
    from ember.server.structured_schemas import constraint_of

    try:
        parsed = (ChatRequest if chat else CompletionRequest).model_validate(body)
    except ValidationError as e:
        raise InvalidRequest(f"line {lineno}: {e.errors()[0].get('msg', 'invalid body')}") from None
    if not chat:
        return None, constraint_of(parsed), None
    choice = parsed.tool_choice.model_dump() if hasattr(parsed.tool_choice, "model_dump") else parsed.tool_choice
    return tools.prepare_chat(engine, tools.chat_messages(parsed.messages),
                              [t.model_dump(exclude_none=True) for t in parsed.tools or []] or None, choice,
                              parsed.parallel_tool_calls, constraint_of(parsed))


_STRUCTURED_KEYS = ("response_format", "tools", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
                    "structured_outputs")


# ----- batch -----

def params_from_body(body: dict, chat: bool):
    """OpenAI request body -> SamplingParams (the fields Ember supports; unknown ones are ignored)."""
    from ember.engine.sampling import SamplingParams

    lp = None
    if chat and body.get("logprobs"):
        lp = int(body.get("top_logprobs") or 0)
    elif not chat and body.get("logprobs") is not None:
        lp = int(body["logprobs"])
    stop = body.get("stop") or []
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", None if chat else 16))
    try:
        return SamplingParams(
            max_tokens=max_tokens, temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)), top_k=int(body.get("top_k", 0)), min_p=float(body.get("min_p", 0)),
            presence_penalty=float(body.get("presence_penalty", 0)),
            frequency_penalty=float(body.get("frequency_penalty", 0)),
            repetition_penalty=float(body.get("repetition_penalty", 1.0)),
            logit_bias=body.get("logit_bias") or {}, seed=body.get("seed"),
            stop=[stop] if isinstance(stop, str) else list(stop), n=int(body.get("n", 1)), logprobs=lp)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"bad parameter: {e}") from None


def _prepare(engine, line: str, lineno: int):
    """-> (custom_id, url, prompt ids, params); raises EmberError for a bad line."""
    try:
        req = json.loads(line)
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"line {lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(req, dict) or not isinstance(req.get("body"), dict):
        raise InvalidRequest(f"line {lineno}: expected an object with 'custom_id' and 'body'")
    url, body = req.get("url", "/v1/chat/completions"), req["body"]
    chat = "chat" in url or "messages" in body
    if chat:
        if not isinstance(body.get("messages"), list):
            raise InvalidRequest(f"line {lineno}: 'messages' must be a list")
        structured = any(k in body for k in _STRUCTURED_KEYS) or any(
            isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in body["messages"])
        prompt = None if structured else engine.chat_prompt(body["messages"])
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, (str, list)):
            raise InvalidRequest(f"line {lineno}: 'prompt' must be a string or a list of token ids")
        prompt = engine.encode(prompt)
    params = params_from_body(body, chat)
    if prompt is None or any(k in body for k in _STRUCTURED_KEYS):
        ids, constraint, names = _structured_line(engine, body, chat, lineno)
        prompt = ids if ids is not None else prompt
        if constraint is not None:
            import dataclasses

            params = dataclasses.replace(params, constraint=constraint)
        body = {**body, "__tool_names": names}
    return url, chat, body, prompt, params


def _response(comp, chat: bool, body: dict, ref: str) -> dict:
    choices = []
    for c in comp.choices:
        if chat and body.get("__tool_names"):
            from ember.server import tools

            content, calls = tools.parse_all(c.text, body["__tool_names"])
            msg = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
            reason = "tool_calls" if calls and c.finish_reason == "stop" else c.finish_reason
            choices.append({"index": c.index, "message": msg, "finish_reason": reason})
        elif chat:
            choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text},
                            "finish_reason": c.finish_reason})
        else:
            choices.append({"index": c.index, "text": c.text, "finish_reason": c.finish_reason})
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{comp.request_id}",
            "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": body.get("model", ref), "choices": choices,
            "usage": {"prompt_tokens": comp.usage.prompt_tokens, "completion_tokens": comp.usage.completion_tokens,
                      "total_tokens": comp.usage.total_tokens,
                      "prompt_tokens_details": {"cached_tokens": comp.usage.cached_tokens}}}


def _done_lines(out: Path) -> int:
    """Complete result lines already in out.jsonl; a torn last line (killed mid-write) is cut off."""
    if not out.exists():
        return 0
    data = out.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(out, "r+b") as f:
            f.truncate(len(keep))
    return keep.count(b"\n")


def batch(ref: str = typer.Argument(..., help="Model reference or HF folder."),
          input_path: Path = typer.Argument(..., help="OpenAI batch input (.jsonl)."),
          output_path: Path = typer.Argument(..., help="Results (.jsonl), appended; rerun to resume."),
          max_slots: int = typer.Option(32, "--max-slots"),
          threads: int = typer.Option(None, "--threads")):
    """Offline batch inference, results in input order; reruns resume after the last written line."""
    from rich.progress import Progress

    from ember.engine.engine import _Collector

    if not input_path.is_file():
        from ember.errors import NotFound

        raise NotFound(f"input file {input_path} not found")
    lines = input_path.read_text().splitlines()
    lines = [ln for ln in lines if ln.strip()]
    done = _done_lines(output_path)
    if done > len(lines):
        raise InvalidRequest(f"{output_path} has more results ({done}) than {input_path} has lines")
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
            url, chat, body, ids, params = _prepare(engine, lines[i], i + 1)
            acc = _Collector(ids)

            def on_delta(d, i=i, acc=acc, chat=chat, body=body):
                acc.add(d)
                if d.usage is not None:
                    record(i, _response(acc.completion(d), chat, body, ref), None)

            if params.use_beam_search:
                record(i, _response(engine.beam_search(ids, params), chat, body, ref), None)
            else:
                engine.add_request(ids, params, on_delta)
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
