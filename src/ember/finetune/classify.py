"""Sequence classification: an encoder (BERT family) with a classification head, from labelled JSONL.

    ember finetune classify --base minilm-l6-v2 --data labeled.jsonl [--eval-data val.jsonl] --name my-clf
    ember finetune classify --base minilm-l6-v2 --data pairs.jsonl --name my-reranker    # rows with "score"
    torchrun --nproc-per-node 2 -m ember finetune classify --base minilm-l6-v2 --data labeled.jsonl --name c

Data: one {"text": "...", "label": "..."} per line (an optional "text_pair" makes the input a pair, as for
NLI), trained with cross-entropy over the labels; or one {"text": QUERY, "text_pair": DOCUMENT, "score": 0..1}
per line, which trains a cross-encoder with one logit and binary cross-entropy, as sentence-transformers'
CrossEncoder does for num_labels=1. The result is a full model version (`AutoModelForSequenceClassification`,
`id2label` in its config.json) whose parent is the base version; the engine's Encoder (engine/encoders.py)
serves it: `POST /v1/classify` for labels (metadata task "text-classification"), `POST /v1/rerank` and
`/score` for a cross-encoder ("text-ranking").
"""

from __future__ import annotations

import json
import shutil

import torch
import torch.nn.functional as F

from ember.errors import InvalidRequest
from ember.finetune import common, formats
from ember.train import checkpoint as ckpt, distributed
from ember.train.loop import train


def encode(tokenizer, rows: list[dict], label2id: dict[str, int] | None, max_length: int) -> list[dict]:
    """Token ids (+ token_type_ids for pairs) and the label id, or the float score when label2id is None."""
    pairs = [r["text_pair"] for r in rows] if rows and "text_pair" in rows[0] else None
    enc = tokenizer([r["text"] for r in rows], pairs, truncation=True, max_length=max_length)
    out = []
    for i, r in enumerate(rows):
        ex = {"input_ids": enc["input_ids"][i], "labels": label2id[r["label"]] if label2id else r["score"]}
        if pairs is not None and "token_type_ids" in enc:
            ex["token_type_ids"] = enc["token_type_ids"][i]
        out.append(ex)
    return out


def classification_loss(model, batch: dict):
    pair = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **pair).logits.float()
    labels = batch["labels"]
    if labels.is_floating_point():  # one-logit cross-encoder: a relevance score in [0, 1]
        loss = F.binary_cross_entropy_with_logits(logits[:, 0], labels)
        accuracy = ((logits[:, 0] > 0) == (labels > 0.5)).float().mean()
    else:
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(-1) == labels).float().mean()
    return loss, {"accuracy": accuracy}


def run(cfg: common.FinetuneConfig, *, echo=print) -> dict:
    cfg.check()

    def body(info) -> dict:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        say = echo if info.is_main else (lambda *_: None)
        data = formats.read_jsonl(cfg.data, "classify")
        if data.bad:
            say(f"warning: skipped {len(data.bad)} bad line(s) of {data.path.name}:\n{data.report()}")
        ranking = data.format == "score"
        labels = ["score"] if ranking else sorted({r["label"] for r in data.records})
        if not ranking and len(labels) < 2:
            raise InvalidRequest(f"{cfg.data}: classification needs at least 2 labels, found {labels}",
                                 param="data")
        if not ranking and len({"text_pair" in r for r in data.records}) > 1:
            raise InvalidRequest(f"{cfg.data}: either every row has a 'text_pair' or none does", param="data")
        label2id = None if ranking else {label: i for i, label in enumerate(labels)}
        digests = {"train": data.digest}
        eval_rows = []
        if cfg.eval_data:
            ev = formats.read_jsonl(cfg.eval_data, "classify")
            if ev.format != data.format:
                raise InvalidRequest(f"{cfg.eval_data} has {ev.format} rows but {cfg.data} has {data.format} rows",
                                     param="eval_data")
            unknown = [] if ranking else sorted({r["label"] for r in ev.records} - set(labels))
            if unknown:
                raise InvalidRequest(f"{cfg.eval_data}: labels not in the training data: {unknown}",
                                     param="eval_data")
            eval_rows, digests["eval"] = ev.records, ev.digest
        folder, base = common.base_folder(cfg.base)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        examples = encode(tokenizer, data.records, label2id, cfg.max_length)
        eval_examples = encode(tokenizer, eval_rows, label2id, cfg.max_length) if eval_rows else []
        steps = common.plan_steps(cfg, len(examples), info.world_size)
        torch.manual_seed(cfg.seed)  # the new head starts identical on every rank
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)}, dtype=torch.float32)
        model = distributed.wrap(model, info, fsdp=cfg.fsdp)
        collate = common.pad_collate(tokenizer.pad_token_id or 0)
        micro = cfg.batch_size // cfg.grad_accum
        batches = common.ExampleBatches(examples, micro, collate, cfg.seed, info.rank, info.world_size)
        what = "a relevance score" if ranking else f"{len(labels)} labels"
        say(f"classify from {base.ref}: {len(examples)} examples, {what}, {steps} steps")
        result = train(model, batches, classification_loss, common.loop_settings(cfg, steps),
                       val_batches=common.val_batches_fn(eval_examples, micro, collate, info),
                       tokens_of=common.tokens_of, extra_state={"task": "classify", "base": base.ref})
        out = cfg.run_dir() / "final"
        if info.is_main:
            shutil.rmtree(out, ignore_errors=True)
        ckpt.save_hf(model, out, info, tokenizer=tokenizer)
        val_acc = next((h["val_accuracy"] for h in reversed(result.history) if "val_accuracy" in h), None)
        lin = common.lineage(cfg, "classify", base.ref, digests, result, labels=labels,
                             examples=len(examples), final_eval_accuracy=val_acc)
        ref = common.register(cfg, out, kind="model", base_ref=base.ref, lineage=lin,
                              metadata={"task": "text-ranking" if ranking else "text-classification",
                                        "labels": labels})
        summary = {"ref": ref, "base": base.ref, "steps": result.step, "final_train_loss": result.loss,
                   "final_eval_loss": result.val_loss, "final_eval_accuracy": val_acc, "labels": labels,
                   "folder": str(out)}
        if info.is_main:
            (cfg.run_dir() / "result.json").write_text(json.dumps(summary, indent=2))
        return summary

    return common.run_distributed(body)

