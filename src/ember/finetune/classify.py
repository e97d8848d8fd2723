"""Sequence classification: an encoder (BERT family) with a classification head, from labelled JSONL.

    ember finetune classify --base minilm-l6-v2 --data labeled.jsonl [--eval-data val.jsonl] --name my-clf
    torchrun --nproc-per-node 2 -m ember finetune classify --base minilm-l6-v2 --data labeled.jsonl --name c

Data: one {"text": "...", "label": "..."} per line. The result is a full model version
(`AutoModelForSequenceClassification`, `id2label` in its config.json) whose parent is the base version;
`predict` is what `POST /v1/classify` serves.
"""

from __future__ import annotations

import json
import shutil

import torch
import torch.nn.functional as F

from ember.errors import InvalidRequest
from ember.finetune import common, formats
from ember.train import checkpoint as ckpt
from ember.train import distributed
from ember.train.loop import train


def encode(tokenizer, rows: list[dict], label2id: dict[str, int], max_length: int) -> list[dict]:
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)
    return [{"input_ids": ids, "labels": label2id[r["label"]]} for ids, r in zip(enc["input_ids"], rows)]


def classification_loss(model, batch: dict):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = F.cross_entropy(logits.float(), batch["labels"])
    accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
    return loss, {"accuracy": accuracy}


def run(cfg: common.FinetuneConfig, *, echo=print) -> dict:
    cfg.check()

    def body(info) -> dict:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        say = echo if info.is_main else (lambda *_: None)
        data = formats.read_jsonl(cfg.data, "classify")
        if data.bad:
            say(f"warning: skipped {len(data.bad)} bad line(s) of {data.path.name}:\n{data.report()}")
        labels = sorted({r["label"] for r in data.records})
        if len(labels) < 2:
            raise InvalidRequest(f"{cfg.data}: classification needs at least 2 labels, found {labels}",
                                 param="data")
        label2id = {label: i for i, label in enumerate(labels)}
        digests = {"train": data.digest}
        eval_rows = []
        if cfg.eval_data:
            ev = formats.read_jsonl(cfg.eval_data, "classify")
            unknown = sorted({r["label"] for r in ev.records} - set(labels))
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
            str(folder), num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id,
            dtype=torch.float32)
        model = distributed.wrap(model, info, fsdp=cfg.fsdp)
        collate = common.pad_collate(tokenizer.pad_token_id or 0)
        micro = cfg.batch_size // cfg.grad_accum
        batches = common.ExampleBatches(examples, micro, collate, cfg.seed, info.rank, info.world_size)
        say(f"classify from {base.ref}: {len(examples)} examples, {len(labels)} labels, {steps} steps")
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
                              metadata={"task": "text-classification", "labels": labels})
        summary = {"ref": ref, "base": base.ref, "steps": result.step, "final_train_loss": result.loss,
                   "final_eval_loss": result.val_loss, "final_eval_accuracy": val_acc, "labels": labels,
                   "folder": str(out)}
        if info.is_main:
            (cfg.run_dir() / "result.json").write_text(json.dumps(summary, indent=2))
        return summary

    return common.run_distributed(body)


class Classifier:
    """A loaded classification model: `predict(texts)` -> per text, labels with scores (best first)."""

    def __init__(self, folder, max_length: int = 512):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
        self.id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        self.max_length = max_length

    @classmethod
    def load(cls, ref_or_path, settings=None) -> "Classifier":
        from ember.models.loading import resolve_folder

        return cls(resolve_folder(ref_or_path, settings))

    @torch.inference_mode()
    def predict(self, texts: list[str], batch_size: int = 32) -> list[list[dict]]:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[i:i + batch_size], truncation=True, max_length=self.max_length,
                                 padding=True, return_tensors="pt")
            probs = self.model(**enc).logits.float().softmax(-1)
            for row in probs.tolist():
                ranked = sorted(enumerate(row), key=lambda kv: -kv[1])
                out.append([{"label": self.id2label[k], "score": p} for k, p in ranked])
        return out
