"""Incremental detokenization and stop strings for streaming.

    async for delta in engine.stream("Count: 1, 2,", SamplingParams(stop=["10"]))   # deltas come from here

Decoding a growing token list piece by piece breaks multi-byte characters and the leading-space rules of
BPE tokenizers, so text is produced the way vLLM does it: decode a short window ending at the new token
and emit only what extends the window's previous text, holding back while the tail is an incomplete
UTF-8 sequence ("\\ufffd"). Text that could still turn into a stop string is held back too, so a stream
never shows a client the beginning of a stop string that the final text then cuts off.
"""


class Detokenizer:
    def __init__(self, tokenizer, prompt_ids: list[int], stop: list[str], skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        # Start the window inside the prompt so the first output token decodes with its real context.
        self.ids = list(prompt_ids[-6:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.text = ""  # all output text so far (truncated at a stop string when one matched)
        self.emitted = 0  # how much of self.text has been handed out
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        if self.tok is None:  # a model folder without a tokenizer: token ids only
            return ""
        return self.tok.decode(ids, skip_special_tokens=self.skip, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Feeds one token; returns the text that is now safe to show (possibly empty)."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            start = len(self.text)
            self.text += full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            if self.stop:
                self._check_stop(max(0, start - self.hold))
        return self._take(final=self.stopped)

    def _check_stop(self, search_from: int) -> None:
        best = -1
        for s in self.stop:
            i = self.text.find(s, search_from)
            if i != -1 and (best == -1 or i < best):
                best = i
        if best != -1:
            self.text = self.text[:best]
            self.stopped = True

    def _take(self, final: bool) -> str:
        upto = len(self.text) if final else max(self.emitted, len(self.text) - self.hold)
        out = self.text[self.emitted : upto]
        self.emitted = upto
        return out

    def flush(self) -> str:
        """At the end of generation: whatever was held back, including a trailing partial character."""
        if not self.stopped and self.read_offset < len(self.ids):
            prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
            full = self._decode(self.ids[self.prefix_offset :])
            self.text += full[len(prefix) :]
            self.read_offset = len(self.ids)
        return self._take(final=True)
