"""Prepared token shards: tokenize text/JSONL into memory-mapped arrays with a train/validation split.

    ember data prepare corpus/*.py --tokenizer stdlib-bpe --out data/stdlib

The output folder holds, per split (`train`, `val`):
  `<split>.bin`   all token ids, uint16 (uint32 when the vocabulary needs it), read with np.memmap;
  `<split>.idx`   int64 start offset of every line ("sentence") in `<split>.bin`, for BERT's NSP pairs;
  `<split>.doc`   int64 document number of every line, so NSP never pairs across a document boundary;
and `manifest.json`: sha256 + size of every input, the tokenizer, token counts and a `digest` of it all.

Inputs stream in chunks of lines (a file is never read whole). Every `val_every`-th chunk goes to
validation, so even a corpus of a few files gets validation text spread over all of it. Each document
(a text file, or a JSONL record's `text`) ends with the tokenizer's EOS token when it has one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ember.errors import InvalidRequest, NotFound

SPLITS = ("train", "val")


def _iter_documents(path: Path, chunk_lines: int) -> Iterator[tuple[bool, list[str]]]:
    """Yield (starts_new_document, lines) chunks of one input file, streaming."""
    if path.suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InvalidRequest(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    raise InvalidRequest(f"{path}:{n}: record needs a string 'text' field", param="text")
                lines = rec["text"].splitlines(keepends=True)
                for i in range(0, max(len(lines), 1), chunk_lines):
                    yield i == 0, lines[i:i + chunk_lines]
        return
    first = True
    buf: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            buf.append(line)
            if len(buf) >= chunk_lines:
                yield first, buf
                first, buf = False, []
    if buf or first:
        yield first, buf


def _file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


class _SplitWriter:
    def __init__(self, folder: Path, split: str, dtype):
        self.dtype = dtype
        self.bin = open(folder / f"{split}.bin", "wb")
        self.idx = open(folder / f"{split}.idx", "wb")
        self.doc = open(folder / f"{split}.doc", "wb")
        self.tokens = 0
        self.lines = 0
        self.docs = -1

    def write(self, line_ids: list[list[int]], new_doc: bool):
        if new_doc:
            self.docs += 1
        starts = []
        flat: list[int] = []
        for ids in line_ids:
            if not ids:
                continue
            starts.append(self.tokens + len(flat))
            flat.extend(ids)
        self.bin.write(np.asarray(flat, dtype=self.dtype).tobytes())
        self.idx.write(np.asarray(starts, dtype=np.int64).tobytes())
        self.doc.write(np.full(len(starts), max(self.docs, 0), dtype=np.int64).tobytes())
        self.tokens += len(flat)
        self.lines += len(starts)

    def close(self):
        for fh in (self.bin, self.idx, self.doc):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()


def prepare(files: list[Path | str], tokenizer, out_dir: Path | str, *, tokenizer_ref: str = "",
            val_every: int = 10, chunk_lines: int = 64) -> dict:
    """Tokenize `files` into `out_dir` (see the module docstring). Returns the manifest dict."""
    if not files:
        raise InvalidRequest("no input files given", param="files")
    if val_every < 2:
        raise InvalidRequest("val_every must be at least 2", param="val_every")
    paths = [Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise NotFound(f"input file '{p}' not found")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = len(tokenizer)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    writers = {s: _SplitWriter(out, s, dtype) for s in SPLITS}
    eos = tokenizer.eos_token_id
    chunk_no = 0
    inputs = []
    touched: set[str] = set()  # splits that got tokens from the current document

    def end_document():
        # EOS closes a document in every split that holds part of it, so GPT sees document ends.
        if eos is not None:
            for s in touched:
                writers[s].write([[eos]], False)
        touched.clear()

    try:
        for path in paths:
            digest, size = _file_digest(path)
            inputs.append({"path": str(path), "sha256": digest, "bytes": size})
            for new_doc, lines in _iter_documents(path, chunk_lines):
                if new_doc:
                    end_document()
                    # A new document opens in both splits, so NSP pairs stay inside one document.
                    for w in writers.values():
                        w.docs += 1
                # Tokenize line by line so BERT knows sentence boundaries; BPE keeps "\n" in the line.
                ids = tokenizer(lines, add_special_tokens=False)["input_ids"] if lines else []
                split = "val" if chunk_no % val_every == val_every - 1 else "train"
                chunk_no += 1
                before = writers[split].tokens
                writers[split].write(ids, False)
                if writers[split].tokens > before:
                    touched.add(split)
        end_document()
    finally:
        for w in writers.values():
            w.close()
    counts = {s: {"tokens": w.tokens, "lines": w.lines} for s, w in writers.items()}
    if counts["train"]["tokens"] == 0 or counts["val"]["tokens"] == 0:
        raise InvalidRequest("the inputs are too small for a train/validation split "
                             f"(train {counts['train']['tokens']} tokens, val {counts['val']['tokens']})")
    body = {"inputs": inputs, "tokenizer": tokenizer_ref, "vocab_size": vocab,
            "dtype": np.dtype(dtype).name, "val_every": val_every, "chunk_lines": chunk_lines,
            "eos_token_id": eos, "splits": counts}
    body["digest"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(body, indent=2))
    os.replace(tmp, out / "manifest.json")
    return body


@dataclass
class Prepared:
    """A prepared dataset opened read-only: tokens, line starts and document ids per split."""

    folder: Path
    manifest: dict

    @classmethod
    def open(cls, folder: Path | str) -> "Prepared":
        folder = Path(folder)
        mf = folder / "manifest.json"
        if not mf.is_file():
            raise NotFound(f"'{folder}' is not a prepared dataset (no manifest.json); "
                           "run `ember data prepare` first", param="data")
        return cls(folder, json.loads(mf.read_text()))

    def tokens(self, split: str) -> np.ndarray:
        return np.memmap(self.folder / f"{split}.bin", dtype=np.dtype(self.manifest["dtype"]), mode="r")

    def lines(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        starts = np.fromfile(self.folder / f"{split}.idx", dtype=np.int64)
        docs = np.fromfile(self.folder / f"{split}.doc", dtype=np.int64)
        return starts, docs

    @property
    def digest(self) -> str:
        return self.manifest["digest"]
