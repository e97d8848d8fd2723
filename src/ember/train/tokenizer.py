"""Train tokenizers (Hugging Face `tokenizers`) and store them in the registry as their own versions.

    ember tokenizer train corpus/*.py --type bpe --vocab-size 2048 --name stdlib-bpe
    ember tokenizer train corpus/*.txt --type wordpiece --vocab-size 4096 --name wiki-wp

`bpe` is byte-level BPE for GPT-style models (special token `<|endoftext|>` is BOS, EOS and padding);
`wordpiece` is BERT's WordPiece with [PAD] [UNK] [CLS] [SEP] [MASK]. The result is a plain folder with
`tokenizer.json` + `tokenizer_config.json` that `PreTrainedTokenizerFast.from_pretrained` loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from ember.errors import InvalidRequest, NotFound

BPE_SPECIALS = ["<|endoftext|>"]
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TYPES = ("bpe", "wordpiece")


def iter_text(files: Iterable[Path | str], chunk_lines: int = 256) -> Iterator[str]:
    """Yield chunks of lines from text or JSONL (`text` field) files, streaming: never a whole file."""
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise NotFound(f"input file '{path}' not found")
        jsonl = path.suffix in (".jsonl", ".ndjson")
        buf: list[str] = []
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if jsonl:
                    if line.strip():
                        yield _jsonl_text(line, path)
                    continue
                buf.append(line)
                if len(buf) >= chunk_lines:
                    yield "".join(buf)
                    buf = []
        if buf:
            yield "".join(buf)


def _jsonl_text(line: str, path: Path) -> str:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"{path}: not valid JSONL ({e.msg})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise InvalidRequest(f"{path}: every JSONL record needs a string 'text' field", param="text")
    return rec["text"]


def train_tokenizer(files: list[Path | str], kind: str, vocab_size: int, out_dir: Path | str,
                    *, min_frequency: int = 2, model_max_length: int = 2048) -> Path:
    """Train a tokenizer on `files` and save it as a Hugging Face folder in `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in TYPES:
        raise InvalidRequest(f"tokenizer type must be one of {TYPES}, got '{kind}'", param="type")
    if vocab_size < 64:
        raise InvalidRequest("vocab size must be at least 64", param="vocab_size")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                      special_tokens=BPE_SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(iter_text(files), trainer=trainer)
        eot = BPE_SPECIALS[0]
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, pad_token=eot,
                                       unk_token=eot, model_max_length=model_max_length)
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                            special_tokens=WORDPIECE_SPECIALS)
        tok.train_from_iterator(iter_text(files), trainer=trainer)
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        # BERT's pair template, so the saved tokenizer encodes pairs exactly as pretraining built them.
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                       model_max_length=model_max_length)
    fast.save_pretrained(str(out))
    return out


def load_tokenizer(ref: str | Path, settings=None):
    """Load a tokenizer from a folder path or a registry reference; returns (tokenizer, resolved ref)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(ref)
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise NotFound(f"'{path}' holds no tokenizer.json")
        return PreTrainedTokenizerFast.from_pretrained(str(path)), str(path.resolve())
    from ember.store import registry

    version = registry.resolve(str(ref), settings)
    if version.kind != "tokenizer" and not (registry.materialize(version, settings) / "tokenizer.json").is_file():
        raise InvalidRequest(f"'{ref}' is a {version.kind} without a tokenizer.json", param="tokenizer")
    folder = registry.materialize(version, settings)
    return PreTrainedTokenizerFast.from_pretrained(str(folder)), version.ref


def train_and_register(files: list[Path | str], kind: str, vocab_size: int, name: str, settings=None):
    """Train, then store the folder in the registry as `name:N` (kind "tokenizer"). Returns the Version."""
    import tempfile

    from ember.config import get_settings
    from ember.store import registry

    settings = settings or get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tok-", dir=settings.home) as tmp:
        folder = train_tokenizer(files, kind, vocab_size, Path(tmp) / "tok")
        tok_json = json.loads((folder / "tokenizer.json").read_text())
        meta = {"tokenizer": {"type": kind, "vocab_size": len(tok_json["model"]["vocab"]),
                              "requested_vocab_size": vocab_size,
                              "inputs": [str(Path(f)) for f in files]}}
        return registry.register_folder(folder, name, kind="tokenizer", metadata=meta, settings=settings)
