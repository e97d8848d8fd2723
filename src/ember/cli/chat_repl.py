"""The terminal loop of `ember chat`: prompt, stream the answer, keep the history.

    ember chat smollm2-135m-instruct --system "You are terse."
    > What is the capital of France?
    The capital of France is Paris.
    >

Each answer ends with a newline and a fresh `> ` prompt before input is read. Ctrl-C during an answer stops
that answer (the request is aborted) and returns to the prompt; Ctrl-C at the prompt clears the line;
Ctrl-D or /exit quits; /reset clears the conversation. Arrow keys and history come from readline (history
kept in EMBER_HOME/chat_history). With stdin not a terminal, lines are read without a prompt and an error
ends the command with its exit code (for scripts).

The model behind the loop is an `answer(messages) -> iterator of text` function: `local_answerer` (an
engine in this process) or `remote.chat_answerer` (a running `ember serve`).
"""

import queue
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ember.errors import EmberError, InvalidRequest

Answerer = Callable[[list[dict]], Iterator[str]]
HELP = "Type a message; /reset clears the conversation, /exit or Ctrl-D quits, Ctrl-C stops an answer."


def local_answerer(engine, *, max_tokens: int, temperature: float, top_p: float, seed: int | None,
                   constraint=None) -> Answerer:
    """Streams from an in-process Engine; closing the iterator (Ctrl-C) aborts the request at once."""
    from ember.engine.sampling import SamplingParams

    def answer(messages: list[dict]) -> Iterator[str]:
        ids = engine.chat_prompt(messages)
        room = engine.context_length - len(ids) - 1
        if room < 1:
            raise InvalidRequest("the conversation no longer fits the context; /reset it")
        params = SamplingParams(max_tokens=min(max_tokens, room), temperature=temperature, top_p=top_p, seed=seed,
                                constraint=constraint)
        deltas: queue.SimpleQueue = queue.SimpleQueue()
        rid = engine.add_request(ids, params, deltas.put)
        finished = False
        try:
            while not finished:
                try:
                    d = deltas.get(timeout=0.1)  # a short wait keeps Ctrl-C responsive
                except queue.Empty:
                    continue
                finished = d.finish_reason is not None
                if d.text:
                    yield d.text
        finally:
            if not finished:
                engine.abort(rid)

    return answer


def _readline(history: Path | None) -> None:
    """Line editing and history for input(); absent readline (Windows) input() still works."""
    try:
        import readline
    except ImportError:
        return
    if history is None:
        return
    import atexit

    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        if history.exists():
            readline.read_history_file(history)
    except OSError:
        return
    readline.set_history_length(1000)

    def save() -> None:
        try:
            readline.write_history_file(history)
        except OSError:
            pass

    atexit.register(save)


def run(answer: Answerer, system: str | None = None, *, interactive: bool | None = None,
        history: Path | None = None) -> None:
    base = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    interactive = sys.stdin.isatty() if interactive is None else interactive
    if interactive:
        _readline(history)
        print(HELP, file=sys.stderr, flush=True)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            if interactive:
                print()
            return
        except KeyboardInterrupt:  # at the prompt: drop the line, as a shell does
            print()
            continue
        cmd = line.strip()
        if cmd in ("/exit", "/quit", "/bye"):
            return
        if cmd == "/reset":
            messages = list(base)
            continue
        if not cmd:
            continue
        messages.append({"role": "user", "content": line})
        try:
            _turn(answer, messages, interactive)
        except KeyboardInterrupt:  # a second Ctrl-C while the turn was being wrapped up: still just a turn
            sys.stdout.write("\n")
            if messages[-1]["role"] == "user":
                messages.pop()


def _turn(answer: Answerer, messages: list[dict], interactive: bool) -> None:
    """Streams one answer to stdout and appends it to `messages` (on an error the user's message is dropped)."""
    parts: list[str] = []
    stream = answer(messages)
    try:
        try:
            for text in stream:
                sys.stdout.write(text)
                sys.stdout.flush()
                parts.append(text)
        except KeyboardInterrupt:  # what was shown stays in the history; the rest is never generated
            sys.stdout.write(" [stopped]")
        finally:
            stream.close()
    except EmberError as e:
        if not interactive:
            raise
        sys.stdout.write("\n" if parts else "")
        sys.stdout.flush()
        print(f"error: {e.message}", file=sys.stderr, flush=True)
        messages.pop()
        return
    messages.append({"role": "assistant", "content": "".join(parts)})
    sys.stdout.write("\n")  # the answer ends its line: the next prompt starts on a fresh one
    sys.stdout.flush()
