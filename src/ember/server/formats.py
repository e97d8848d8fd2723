"""OpenAI's response shapes for completions and chat completions, whole and as stream chunks.

    curl -N localhost:8000/v1/chat/completions --json '{"messages": [...], "stream": true}'
    # data: {"id":"chatcmpl-..","object":"chat.completion.chunk",..,
    #        "choices":[{"index":0,"delta":{"role":"assistant","content":""},..}]}

Choice indices: prompt p, choice j of n -> index p * n + j (what OpenAI does for a list of prompts).
With `echo` and `logprobs` a completion's logprobs start with the prompt's tokens (the first one null), as
OpenAI's legacy API and vLLM return them; `prompt_logprobs` (vLLM's extra) is a list per prompt token of
{token id: {logprob, rank, decoded_token}}, per choice for completions and per response for chat.
`ember batch` renders its results with these same classes (cli/generate.py).
"""

import time
import uuid
from dataclasses import dataclass, field


def model_card(m) -> dict:
    base = getattr(m, "base", None)  # a LoRA adapter served by its base (pool.AdapterView)
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": "ember", "root": m.ref,
            "parent": base.id if base is not None else None, "max_model_len": m.context_length if m.loaded else None,
            "capabilities": ["completions", "chat"] if m.kind == "generate" else ["embeddings"]}


def _reason(r: str | None) -> str | None:
    return None if r is None else r if r in ("stop", "length") else "stop"


@dataclass
class ChoiceAcc:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_logprobs: list | None = None

    def add(self, d) -> None:
        self.text += d.text
        self.token_ids += d.token_ids
        self.logprobs += d.logprobs or []
        self.finish_reason = d.finish_reason or self.finish_reason
        if d.prompt_logprobs is not None:
            self.prompt_logprobs = d.prompt_logprobs

    @property
    def score(self) -> float:
        return sum(lp["logprob"] for lp in self.logprobs)


def usage(run) -> dict:
    return {"prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens,
            "total_tokens": run.prompt_tokens + run.completion_tokens,
            # Prompt tokens whose keys and values a previous request left in the cache (engine/scheduler.py).
            "prompt_tokens_details": {"cached_tokens": run.cached_tokens}}


class _Format:
    object_full = object_chunk = ""
    prefix = ""

    def __init__(self, served, prompts, body):
        self.served, self.prompts, self.body = served, prompts, body
        self.tok = served.tokenizer
        self.n = body.n
        self.id = f"{self.prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.want_logprobs = self._want_logprobs()
        self._tok_str: dict[int, str] = {}
        self.prompt_lps: dict[int, list] = {}  # prompt index -> its prompt logprobs, once the engine sent them

    def _want_logprobs(self) -> bool:
        return False

    def token_str(self, t: int) -> str:
        s = self._tok_str.get(t)
        if s is None:
            s = self._tok_str[t] = self.tok.decode([t], skip_special_tokens=False)
        return s

    def _head(self, obj: str, include_usage: bool = False) -> dict:
        h = {"id": self.id, "object": obj, "created": self.created, "model": self.served.id,
             "system_fingerprint": None}
        if include_usage:
            h["usage"] = None
        return h

    def usage_chunk(self, run) -> dict:
        return {**self._head(self.object_chunk), "choices": [], "usage": usage(run)}

    def _ranked(self, accs: dict) -> list[tuple[int, ChoiceAcc]]:
        """(output index, choice) in order; with best_of > n only the n best (by logprob) of each prompt."""
        out = []
        for pi in sorted(accs):
            choices = [accs[pi][j] for j in sorted(accs[pi])]
            if len(choices) > self.n and not self.body.use_beam_search:
                choices = sorted(choices, key=lambda c: c.score, reverse=True)
            out += [(pi * self.n + j, c) for j, c in enumerate(choices[: self.n])]
        return out

    def stream_start(self, include_usage: bool) -> list[dict]:
        return []

    def _seen_prompt_lps(self, pi: int, plp) -> list | None:
        if plp is not None:
            self.prompt_lps[pi] = plp
        return plp

    def _prompt_lps_of(self, pi: int, accs: dict) -> list | None:
        for c in accs.get(pi, {}).values():
            if c.prompt_logprobs is not None:
                return self._seen_prompt_lps(pi, c.prompt_logprobs)
        return self.prompt_lps.get(pi)

    def vllm_prompt_logprobs(self, plp: list | None) -> list | None:
        """vLLM's shape: per prompt token None (the first) or {token id: {logprob, rank, decoded_token}} for
        the token itself and the top alternatives."""
        if plp is None or self.body.prompt_logprobs is None:
            return None
        k = self.body.prompt_logprobs
        out = []
        for lp in plp:
            if lp is None:
                out.append(None)
                continue
            entry = {str(t): {"logprob": v, "rank": r + 1, "decoded_token": self.token_str(t)}
                     for r, (t, v) in enumerate(lp["top"][:k])}
            entry.setdefault(str(lp["token_id"]), {"logprob": lp["logprob"], "rank": lp.get("rank"),
                                                   "decoded_token": self.token_str(lp["token_id"])})
            out.append(entry)
        return out


def tokenizer_info(tok, context_length: int | None) -> dict:
    """vLLM's /tokenizer_info: the tokenizer's class, its init settings (JSON values only), the special tokens
    as strings, and the chat template."""
    info = {"tokenizer_class": type(tok).__name__}
    for k, v in getattr(tok, "init_kwargs", {}).items():
        if k in ("name_or_path", "tokenizer_file", "vocab_file", "merges_file"):
            continue  # file paths on the server: nothing a client can use
        if isinstance(v, (str, int, float, bool)) or v is None:
            info[k] = v
        elif hasattr(v, "content"):  # AddedToken
            info[k] = v.content
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        info[name] = getattr(tok, name, None)
    info["chat_template"] = getattr(tok, "chat_template", None)
    info["model_max_length"] = context_length
    return info


class CompletionFormat(_Format):
    object_full = object_chunk = "text_completion"
    prefix = "cmpl"

    def __init__(self, served, prompts, body):
        super().__init__(served, prompts, body)
        self.offsets: dict[tuple[int, int], int] = {}
        self.echoed: set[tuple[int, int]] = set()
        self.prompt_texts = [self.tok.decode(p) for p in prompts] if body.echo else None

    def _want_logprobs(self) -> bool:
        return self.body.logprobs is not None

    def _logprobs(self, key, lps: list[dict]) -> dict:
        toks, values, tops, offs = [], [], [], []
        off = self.offsets.get(key, 0)
        k = self.body.logprobs or 0
        for lp in lps:
            s = self.token_str(lp["token_id"])
            toks.append(s)
            values.append(lp["logprob"])
            if lp["logprob"] is None:  # the prompt's first token: nothing predicts it
                tops.append(None)
            else:
                top = {self.token_str(t): v for t, v in lp["top"][:k]}
                top.setdefault(s, lp["logprob"])
                tops.append(top)
            offs.append(off)
            off += len(s)
        self.offsets[key] = off
        return {"tokens": toks, "token_logprobs": values, "top_logprobs": tops, "text_offset": offs}

    def _echo_lps(self, pi: int, plp: list | None) -> list[dict]:
        """The prompt's entries in the logprobs of an echoed completion (echo + logprobs)."""
        if not (self.body.echo and self.want_logprobs) or plp is None:
            return []
        first = {"token_id": self.prompts[pi][0], "logprob": None, "top": None}
        return [first, *plp[1:]]

    def stream_delta(self, pi: int, d, include_usage: bool) -> list[dict]:
        key = (pi, d.index)
        text = d.text
        plp = self._seen_prompt_lps(pi, d.prompt_logprobs)
        entries = list(d.logprobs or [])
        if key not in self.echoed and (self.prompt_texts is not None or plp is not None):
            self.echoed.add(key)
            if self.prompt_texts is not None:
                text = self.prompt_texts[pi] + text
            entries = self._echo_lps(pi, self.prompt_lps.get(pi)) + entries
            plp = self.prompt_lps.get(pi)
        else:
            plp = None
        lps = self._logprobs(key, entries) if self.want_logprobs and entries else None
        if not text and lps is None and d.finish_reason is None and plp is None:
            return []
        if self.body.best_of and self.body.best_of > self.n:
            return []  # not streamable; refused at validation
        choice = {"index": pi * self.n + d.index, "text": text, "logprobs": lps,
                  "finish_reason": _reason(d.finish_reason)}
        if self.body.prompt_logprobs is not None:
            choice["prompt_logprobs"] = self.vllm_prompt_logprobs(plp)
        return [{**self._head(self.object_chunk, include_usage), "choices": [choice]}]

    def full(self, accs: dict, run, n: int) -> dict:
        choices = []
        for index, c in self._ranked(accs):
            pi = index // self.n
            text = (self.prompt_texts[pi] if self.prompt_texts is not None else "") + c.text
            plp = self._prompt_lps_of(pi, accs)
            lps = (self._logprobs((pi, index), self._echo_lps(pi, plp) + c.logprobs) if self.want_logprobs
                   else None)
            choice = {"index": index, "text": text, "logprobs": lps, "finish_reason": _reason(c.finish_reason)}
            if self.body.prompt_logprobs is not None:
                choice["prompt_logprobs"] = self.vllm_prompt_logprobs(plp)
            choices.append(choice)
        return {**self._head(self.object_full), "choices": choices, "usage": usage(run)}


class ChatFormat(_Format):
    object_full, object_chunk = "chat.completion", "chat.completion.chunk"
    prefix = "chatcmpl"

    def _want_logprobs(self) -> bool:
        return bool(self.body.logprobs)

    def _entry(self, t: int, v: float) -> dict:
        s = self.token_str(t)
        return {"token": s, "logprob": v, "bytes": list(s.encode("utf-8"))}

    def _logprobs(self, lps: list[dict]) -> dict:
        k = self.body.top_logprobs or 0
        return {"content": [{**self._entry(lp["token_id"], lp["logprob"]),
                             "top_logprobs": [self._entry(t, v) for t, v in lp["top"][:k]]} for lp in lps],
                "refusal": None}

    def stream_start(self, include_usage: bool) -> list[dict]:
        return [{**self._head(self.object_chunk, include_usage),
                 "choices": [{"index": pi * self.n + j, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}]}
                for pi in range(len(self.prompts)) for j in range(self.n)]

    def stream_delta(self, pi: int, d, include_usage: bool) -> list[dict]:
        index = pi * self.n + d.index
        out = []
        lps = self._logprobs(d.logprobs) if self.want_logprobs and d.logprobs else None
        plp = self.vllm_prompt_logprobs(d.prompt_logprobs)
        if d.text or lps is not None or plp is not None:
            chunk = {**self._head(self.object_chunk, include_usage),
                     "choices": [{"index": index, "delta": {"content": d.text}, "logprobs": lps,
                                  "finish_reason": None}]}
            if plp is not None:
                chunk["prompt_logprobs"] = plp
            out.append(chunk)
        if d.finish_reason is not None:
            out.append({**self._head(self.object_chunk, include_usage),
                        "choices": [{"index": index, "delta": {}, "logprobs": None,
                                     "finish_reason": _reason(d.finish_reason)}]})
        return out

    def full(self, accs: dict, run, n: int) -> dict:
        choices = []
        for index, c in self._ranked(accs):
            choices.append({"index": index, "message": {"role": "assistant", "content": c.text, "refusal": None},
                            "logprobs": self._logprobs(c.logprobs) if self.want_logprobs else None,
                            "finish_reason": _reason(c.finish_reason)})
        resp = {**self._head(self.object_full), "choices": choices, "usage": usage(run)}
        if self.body.prompt_logprobs is not None:
            resp["prompt_logprobs"] = self.vllm_prompt_logprobs(self._prompt_lps_of(0, accs))
        return resp
