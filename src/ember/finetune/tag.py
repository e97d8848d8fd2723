"""Token tagging (NER, POS): an encoder with a token classification head, trained on CoNLL files.

    ember finetune tag --base minilm-l6-v2 --data train.conll [--eval-data dev.conll] --name my-ner
    torchrun --nproc-per-node 2 -m ember finetune tag --base minilm-l6-v2 --data train.conll --name n

CoNLL: one word per line, whitespace-separated columns, the word first and its tag last (so CoNLL-2003's
four columns work as they are); a blank line between sentences; `-DOCSTART-` lines are skipped. NER tags
are BIO (`B-PER`, `I-PER`, `O`); any other tag set (POS) is learned as plain labels.

Words are split into sub-tokens by the model's tokenizer; only the first sub-token of each word carries
the word's label (the rest are -100), and at prediction time the first sub-token's label is the word's.
Prediction is the engine's (`Encoder.tag_words` / `tag` in engine/encoders.py, what `POST /v1/tag` and
`ember eval` use); the validation entity F1 after training runs through it too.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ember.engine.bio import is_bio
from ember.engine.encoders import Encoder
from ember.errors import InvalidRequest, NotFound
from ember.evaluate.metrics import entity_f1
from ember.finetune import common, formats
from ember.train import checkpoint as ckpt, distributed
from ember.train.loop import train

IGNORE = -100


@dataclass
class Conll:
    path: Path
    sentences: list[tuple[list[str], list[str]]]   # (words, tags)
    bad: list[tuple[int, str]]
    digest: str


def read_conll(path: str | Path, *, max_bad_fraction: float = 0.5) -> Conll:
    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFound(f"data file not found: {path}", param="data")
    sentences, bad, words, tags, lines = [], [], [], [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            cols = line.split()
            if not cols:
                if words:
                    sentences.append((words, tags))
                words, tags = [], []
                continue
            lines += 1
            if cols[0] == "-DOCSTART-":
                continue
            if len(cols) < 2:
                bad.append((n, f"expected 'WORD TAG', got {line.strip()!r}"))
                continue
            words.append(cols[0])
            tags.append(cols[-1])
    if words:
        sentences.append((words, tags))
    report = "\n".join(f"  {path.name}:{n}: {why}" for n, why in bad[:formats.MAX_REPORTED])
    if not sentences or len(bad) > max_bad_fraction * max(lines, 1):
        raise InvalidRequest(f"{path}: {len(bad)} of {lines} lines are bad and {len(sentences)} sentences "
                             f"were read; expected CoNLL columns 'WORD ... TAG':\n{report}", param="data")
    return Conll(path, sentences, bad, formats.file_digest(path))


def align(tokenizer, words: list[str], word_labels: list[int] | None, max_length: int) -> dict:
    """Sub-token ids; the first sub-token of each word gets the word's label, the others (and the special
    tokens) -100. `word_index` maps each sub-token back to its word (None for specials)."""
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    word_ids = enc.word_ids()
    labels, seen = [], set()
    for w in word_ids:
        first = w is not None and w not in seen
        labels.append(word_labels[w] if first and word_labels is not None else IGNORE)
        if w is not None:
            seen.add(w)
    return {"input_ids": enc["input_ids"], "labels": labels, "word_index": word_ids}


def token_loss(model, batch: dict):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE)
    keep = labels != IGNORE
    accuracy = (logits.argmax(-1)[keep] == labels[keep]).float().mean() if keep.any() else torch.tensor(0.0)
    return loss, {"accuracy": accuracy}


def run(cfg: common.FinetuneConfig, *, echo=print) -> dict:
    cfg.check()

    def body(info) -> dict:
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        say = echo if info.is_main else (lambda *_: None)
        data = read_conll(cfg.data)
        if data.bad:
            say(f"warning: skipped {len(data.bad)} bad line(s) of {data.path.name}")
        tagset = sorted({t for _, tags in data.sentences for t in tags})
        if is_bio(tagset) and "O" in tagset:  # "O" first: id 0 is the natural "nothing" label
            tagset = ["O"] + [t for t in tagset if t != "O"]
        label2id = {t: i for i, t in enumerate(tagset)}
        digests = {"train": data.digest}
        dev = read_conll(cfg.eval_data) if cfg.eval_data else None
        if dev is not None:
            digests["eval"] = dev.digest
            unknown = sorted({t for _, tags in dev.sentences for t in tags} - set(tagset))
            if unknown:
                raise InvalidRequest(f"{cfg.eval_data}: tags not in the training data: {unknown}",
                                     param="eval_data")
        folder, base = common.base_folder(cfg.base)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if not getattr(tokenizer, "is_fast", False):
            raise InvalidRequest(f"{base.ref} has no fast tokenizer (tokenizer.json), which word alignment needs",
                                 param="base")

        def encode(conll):
            return [{k: v for k, v in align(tokenizer, w, [label2id[t] for t in tags], cfg.max_length).items()
                     if k != "word_index"} for w, tags in conll.sentences]

        examples = encode(data)
        eval_examples = encode(dev) if dev else []
        steps = common.plan_steps(cfg, len(examples), info.world_size)
        torch.manual_seed(cfg.seed)
        model = AutoModelForTokenClassification.from_pretrained(
            str(folder), num_labels=len(tagset), id2label=dict(enumerate(tagset)), label2id=label2id,
            dtype=torch.float32)
        model = distributed.wrap(model, info, fsdp=cfg.fsdp)
        collate = common.pad_collate(tokenizer.pad_token_id or 0)
        micro = cfg.batch_size // cfg.grad_accum
        batches = common.ExampleBatches(examples, micro, collate, cfg.seed, info.rank, info.world_size)
        say(f"tag from {base.ref}: {len(examples)} sentences, {len(tagset)} tags, {steps} steps")
        result = train(model, batches, token_loss, common.loop_settings(cfg, steps),
                       val_batches=common.val_batches_fn(eval_examples, micro, collate, info),
                       tokens_of=common.tokens_of, extra_state={"task": "tag", "base": base.ref})
        out = cfg.run_dir() / "final"
        if info.is_main:
            shutil.rmtree(out, ignore_errors=True)
        ckpt.save_hf(model, out, info, tokenizer=tokenizer)
        scores = None
        if dev is not None and info.is_main:
            tagger = Encoder.load(out)
            tagger.max_seq_length = cfg.max_length
            pred = tagger.tag_words([w for w, _ in dev.sentences])
            scores = entity_f1([[x["tag"] for x in p] for p in pred], [t for _, t in dev.sentences]) \
                if is_bio(tagset) else None
        lin = common.lineage(cfg, "tag", base.ref, digests, result, tags=tagset, sentences=len(examples),
                             final_eval_entity_f1=scores and scores["f1"])
        ref = common.register(cfg, out, kind="model", base_ref=base.ref, lineage=lin,
                              metadata={"task": "token-classification", "tags": tagset, "bio": is_bio(tagset)})
        summary = {"ref": ref, "base": base.ref, "steps": result.step, "final_train_loss": result.loss,
                   "final_eval_loss": result.val_loss, "eval_entities": scores, "tags": tagset,
                   "folder": str(out)}
        if info.is_main:
            (cfg.run_dir() / "result.json").write_text(json.dumps(summary, indent=2))
        return summary

    return common.run_distributed(body)

