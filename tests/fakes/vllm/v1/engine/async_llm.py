"""The fake AsyncLLM: vLLM's async generate/abort/shutdown over a deterministic token walk."""

import asyncio
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list
    cumulative_logprob: float | None = None
    logprobs: list | None = None
    finish_reason: str | None = None
    stop_reason: object = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list
    prompt_logprobs: list | None
    outputs: list = field(default_factory=list)
    finished: bool = False
    num_cached_tokens: int = 0


def _options(token: int, k: int, vocab: int) -> dict:
    """The sampled token at rank 1 plus k alternatives (vLLM's logprobs dict)."""
    opts = {token: Logprob(math.log(0.5), 1)}
    for r in range(k):
        opts[(token + 1 + r) % vocab] = Logprob(math.log(0.5) - 1 - r, r + 2)
    return opts


class AsyncLLM:
    def __init__(self, folder: str, max_num_seqs: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.vocab = json.loads((Path(folder) / "config.json").read_text())["vocab_size"]
        # The walk's tokens: words, so the text is readable and each token decodes on its own.
        self.walk = self.tokenizer(" the fake vllm engine says hello to you")["input_ids"]
        self.aborted: set[str] = set()
        self.requests: list = []  # (request_id, prompt, sampling params) of every request, for the tests
        self.max_num_seqs = max_num_seqs
        self.step_s = float(os.environ.get("FAKE_VLLM_STEP_S", "0.02"))
        self.running = 0

    @classmethod
    def from_engine_args(cls, args):
        asyncio.get_running_loop()  # vLLM starts its output handler on the running loop
        return cls(args.model, args.max_num_seqs)

    async def generate(self, prompt, sampling_params, request_id):
        p = sampling_params
        ids = list(prompt["prompt_token_ids"])
        self.requests.append((request_id, dict(prompt), p))
        self.running += 1
        try:
            prompt_lps = None
            if p.prompt_logprobs is not None:
                prompt_lps = [None] + [_options(t, p.prompt_logprobs, self.vocab) for t in ids[1:]]
            texts = [""] * p.n
            done = [False] * p.n
            first = True
            for step in range(p.max_tokens):
                await asyncio.sleep(self.step_s)
                if request_id in self.aborted:
                    return
                outs = []
                for i in range(p.n):
                    if done[i]:
                        continue
                    tok = self.walk[(step + i) % len(self.walk)]
                    text = self.tokenizer.decode([tok])
                    reason = None
                    if tok in (p.stop_token_ids or []):
                        reason, text = "stop", ""
                    elif any(s in texts[i] + text for s in p.stop or []):
                        reason = "stop"
                        s = next(s for s in p.stop if s in texts[i] + text)
                        text = (texts[i] + text).split(s)[0][len(texts[i]):]
                    elif step + 1 == p.max_tokens:
                        reason = "length"
                    texts[i] += text
                    done[i] = reason is not None
                    lps = [_options(tok, p.logprobs, self.vocab)] if p.logprobs is not None else None
                    outs.append(CompletionOutput(i, text, [tok], None, lps, reason))
                yield RequestOutput(request_id, ids, prompt_lps if first else None, outs, all(done))
                first = False
                if all(done):
                    return
        finally:
            self.running -= 1

    async def abort(self, request_id):
        self.aborted.add(request_id)

    def shutdown(self):
        pass
