"""Fine-tuning data files: format detection and line-by-line validation, before any model is loaded.

    ember finetune sft --base smollm2-135m-instruct --data train.jsonl --name my-sft
    ember finetune classify --base minilm-l6-v2 --data labeled.jsonl --name my-classifier

SFT files are JSONL in one of three formats, detected per file (the format most lines match):
  chat        {"messages": [{"role": "system"|"user"|"assistant", "content": "...", "weight": 0|1?}, ...]}
  completion  {"prompt": "...", "completion": "..."}
  alpaca      {"instruction": "...", "input": "..."?, "output": "..."}
Classification files are JSONL with {"text": "...", "text_pair": "..."?, "label": "..."}; rerank (cross-encoder)
files with {"text": QUERY, "text_pair": DOCUMENT, "score": 0..1}.

Every bad line is reported with its line number. A few bad lines are skipped (and reported) so that one
stray line does not waste a dataset; a file whose lines are mostly bad is refused, because then the
format was misunderstood and training on the remainder would be silently wrong.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ember.errors import InvalidRequest, NotFound

FORMATS = ("chat", "completion", "alpaca")
ROLES = ("system", "user", "assistant")
MAX_REPORTED = 20  # bad lines listed in an error message; the count is always complete


@dataclass
class DataFile:
    path: Path
    format: str
    records: list[dict]                                   # normalised: {"messages": [...]} or classify rows
    lines: list[int]                                      # source line number of each record
    bad: list[tuple[int, str]] = field(default_factory=list)   # (line number, reason)
    digest: str = ""

    def report(self) -> str:
        """One line per bad line (capped), for the user to fix the file."""
        shown = [f"  {self.path.name}:{n}: {why}" for n, why in self.bad[:MAX_REPORTED]]
        more = len(self.bad) - len(shown)
        return "\n".join(shown + ([f"  ... and {more} more"] if more > 0 else []))


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _text(value, what: str) -> str:
    """A string field; OpenAI-style content parts [{"type": "text", "text": ...}] are joined."""
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        value = "".join(str(p.get("text", "")) for p in value)
    if not isinstance(value, str):
        raise ValueError(f"'{what}' must be a string, got {type(value).__name__}")
    return value


def _chat(rec: dict) -> dict:
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        msg = {"role": role, "content": _text(m.get("content"), f"messages[{i}].content")}
        if role == "assistant":
            weight = m.get("weight", 1)
            if weight not in (0, 1):
                raise ValueError(f"messages[{i}].weight must be 0 or 1")
            msg["weight"] = int(weight)
        out.append(msg)
    if not any(m["role"] == "assistant" and m["weight"] and m["content"] for m in out):
        raise ValueError("no assistant message to learn from")
    return {"messages": out}


def _completion(rec: dict) -> dict:
    prompt, completion = _text(rec.get("prompt"), "prompt"), _text(rec.get("completion"), "completion")
    if not completion:
        raise ValueError("'completion' is empty")
    return {"messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": completion, "weight": 1}]}


def _alpaca(rec: dict) -> dict:
    instruction = _text(rec.get("instruction"), "instruction")
    extra = _text(rec.get("input", ""), "input")
    output = _text(rec.get("output"), "output")
    if not instruction or not output:
        raise ValueError("'instruction' and 'output' must not be empty")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": output, "weight": 1}]}


def _texts(rec: dict) -> dict:
    text = _text(rec.get("text"), "text")
    if not text.strip():
        raise ValueError("'text' is empty")
    out = {"text": text}
    if "text_pair" in rec:
        out["text_pair"] = _text(rec["text_pair"], "text_pair")
        if not out["text_pair"].strip():
            raise ValueError("'text_pair' is empty")
    return out


def _classify(rec: dict) -> dict:
    label = rec.get("label")
    if isinstance(label, bool) or not isinstance(label, (str, int)) or str(label) == "":
        raise ValueError("'label' must be a non-empty string or an integer")
    return {**_texts(rec), "label": str(label)}


def _score(rec: dict) -> dict:
    """A (text, text_pair) with a relevance score in [0, 1]: trains a one-logit cross-encoder (rerank)."""
    score = rec.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
        raise ValueError("'score' must be a number from 0 to 1")
    out = _texts(rec)
    if "text_pair" not in out:
        raise ValueError("'text_pair' is missing (a score rates a pair: 'text' is the query)")
    return {**out, "score": float(score)}


PARSERS = {"chat": _chat, "completion": _completion, "alpaca": _alpaca, "classify": _classify, "score": _score}
KEYS = {"chat": {"messages"}, "completion": {"prompt", "completion"}, "alpaca": {"instruction", "output"},
        "classify": {"text", "label"}, "score": {"text", "text_pair", "score"}}


def _guess(rec: dict, candidates: tuple[str, ...]) -> str | None:
    for fmt in candidates:
        if KEYS[fmt] <= rec.keys():
            return fmt
    return None


def read_jsonl(path: str | Path, kind: str = "sft", *, max_bad_fraction: float = 0.5) -> DataFile:
    """Parse and validate a JSONL file; `kind` is "sft" (any of FORMATS) or "classify" (labels or scores)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFound(f"data file not found: {path}", param="data")
    candidates = FORMATS if kind == "sft" else ("classify", "score")
    parsed: list[tuple[int, dict | None, str]] = []  # (line, record, error)
    votes = {f: 0 for f in candidates}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                parsed.append((n, None, f"not valid JSON ({e.msg})"))
                continue
            if not isinstance(rec, dict):
                parsed.append((n, None, "not a JSON object"))
                continue
            fmt = _guess(rec, candidates)
            if fmt:
                votes[fmt] += 1
            parsed.append((n, rec, ""))
    if not parsed:
        raise InvalidRequest(f"{path}: no records (the file is empty)", param="data")
    fmt = max(votes, key=votes.get)
    if votes[fmt] == 0:
        want = "; ".join("{" + ", ".join(f'"{k}"' for k in sorted(KEYS[f])) + "}" for f in candidates)
        raise InvalidRequest(f"{path}: no line matches a known format; expected one of: {want}", param="data")
    data = DataFile(path=path, format=fmt, records=[], lines=[])
    for n, rec, err in parsed:
        if rec is None:
            data.bad.append((n, err))
            continue
        try:
            data.records.append(PARSERS[fmt](rec))
            data.lines.append(n)
        except ValueError as e:
            data.bad.append((n, f"{e} (file format: {fmt})"))
    if not data.records or len(data.bad) > max_bad_fraction * len(parsed):
        raise InvalidRequest(f"{path}: {len(data.bad)} of {len(parsed)} lines are bad; fix the file:\n"
                             + data.report(), param="data")
    data.digest = file_digest(path)
    return data
