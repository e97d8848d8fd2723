"""BERT pretraining: BertForPreTraining with L = L_MLM + L_NSP on prepared (WordPiece) shards.

    ember train bert --config configs/bert-tiny.yaml [key=value ...]

Pairs: segment A is a run of lines ("sentences") of one document; half the time B is the lines that follow
A in the same document (NSP label 0), otherwise lines from another document (label 1). Masking: 15% of
the non-special tokens are selected; of those 80% become [MASK], 10% a random token, 10% stay. Logged:
loss, mlm_loss, nsp_loss, mlm_acc, nsp_acc (and val_* of each). Every sample is drawn from its own
generator seeded by (seed, sample number), so batches are exactly reproducible on resume and under DDP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ember.errors import InvalidRequest
from ember.train import common, distributed
from ember.train.config import TrainConfig, load_config, loop_settings
from ember.train.loop import train


@dataclass
class BertTrainConfig(TrainConfig):
    mlm_prob: float = 0.15
    weight_decay: float = 0.01
    beta2: float = 0.999


class BertPairs:
    """NSP sentence pairs with MLM masking; position = number of micro-batches drawn."""

    def __init__(self, tokens: np.ndarray, starts: np.ndarray, docs: np.ndarray, tokenizer, seq_len: int,
                 global_micro: int, seed: int, rank: int = 0, world: int = 1, mlm_prob: float = 0.15):
        self.tokens, self.starts, self.docs = tokens, starts, docs
        self.ends = np.append(starts[1:], len(tokens))
        # A pair needs at least two lines of one document after its first line.
        self.valid = np.nonzero(docs[:-1] == docs[1:])[0]
        if len(self.valid) == 0:
            raise InvalidRequest("config key 'data': no document has two lines; BERT's next-sentence pairs "
                                 "need multi-line documents", param="data")
        self.seq_len, self.global_micro, self.seed, self.rank = seq_len, global_micro, seed, rank
        self.per_rank = global_micro // world
        self.mlm_prob = mlm_prob
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.mask, self.pad = tokenizer.mask_token_id, tokenizer.pad_token_id
        if None in (self.cls, self.sep, self.mask, self.pad):
            raise InvalidRequest("config key 'tokenizer': BERT needs [CLS], [SEP], [MASK] and [PAD] tokens "
                                 "(train it with --type wordpiece)", param="tokenizer")
        self.vocab = len(tokenizer)
        self.special = np.array(sorted(set(tokenizer.all_special_ids)))
        self.ordinary = np.setdiff1d(np.arange(self.vocab), self.special)
        self.pos = 0

    def _lines(self, first: int, budget: int, doc: int) -> list[int]:
        out: list[int] = []
        i = first
        while i < len(self.starts) and self.docs[i] == doc and len(out) < budget:
            out.extend(self.tokens[self.starts[i]:self.ends[i]].tolist())
            i += 1
        return out

    def sample(self, g: int) -> dict:
        rng = np.random.default_rng([self.seed, g])
        target = self.seq_len - 3
        i = int(self.valid[rng.integers(len(self.valid))])
        doc = int(self.docs[i])
        # A: lines from i until about a random share of the budget, always leaving line(s) after it.
        a_budget = int(rng.integers(1, max(2, target)))
        a: list[int] = []
        j = i
        while True:
            a.extend(self.tokens[self.starts[j]:self.ends[j]].tolist())
            j += 1
            if len(a) >= a_budget or j >= len(self.starts) or self.docs[j] != doc:
                break
        has_next = j < len(self.starts) and self.docs[j] == doc
        if has_next and rng.random() < 0.5:
            b, label = self._lines(j, target - min(len(a), target - 1), doc), 0
        else:
            k = int(rng.integers(len(self.starts)))
            for _ in range(10):  # prefer another document; tiny corpora may only have one
                if self.docs[k] != doc:
                    break
                k = int(rng.integers(len(self.starts)))
            b, label = self._lines(k, target, int(self.docs[k])), 1
        while len(a) + len(b) > target:  # truncate the longer side (A from the front, B from the back)
            if len(a) > len(b):
                a.pop(0)
            else:
                b.pop()
        ids = np.array([self.cls, *a, self.sep, *b, self.sep], dtype=np.int64)
        types = np.zeros(self.seq_len, dtype=np.int64)
        types[len(a) + 2:len(ids)] = 1
        labels = np.full(self.seq_len, -100, dtype=np.int64)
        cand = np.nonzero(~np.isin(ids, self.special))[0]
        n = max(1, int(round(self.mlm_prob * len(cand))))
        chosen = rng.choice(cand, size=min(n, len(cand)), replace=False)
        labels[chosen] = ids[chosen]
        r = rng.random(len(chosen))
        ids[chosen[r < 0.8]] = self.mask
        rand = chosen[(r >= 0.8) & (r < 0.9)]
        ids[rand] = self.ordinary[rng.integers(len(self.ordinary), size=len(rand))]
        attn = np.zeros(self.seq_len, dtype=np.int64)
        attn[:len(ids)] = 1
        padded = np.full(self.seq_len, self.pad, dtype=np.int64)
        padded[:len(ids)] = ids
        return {"input_ids": padded, "token_type_ids": types, "attention_mask": attn, "labels": labels,
                "next_sentence_label": label}

    def batch(self, pos: int) -> dict:
        first = pos * self.global_micro + self.rank * self.per_rank
        rows = [self.sample(g) for g in range(first, first + self.per_rank)]
        return {k: torch.as_tensor(np.stack([r[k] for r in rows])) for k in rows[0]}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        b = self.batch(self.pos)
        self.pos += 1
        return b

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict):
        self.pos = int(state["pos"])


def bert_loss(model, batch: dict):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"])
    logits, nsp_logits = out.prediction_logits.float(), out.seq_relationship_logits.float()
    labels, nsp_labels = batch["labels"], batch["next_sentence_label"]
    mlm = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
    nsp = F.cross_entropy(nsp_logits, nsp_labels)
    sel = labels != -100
    mlm_acc = (logits.argmax(-1)[sel] == labels[sel]).float().mean()
    nsp_acc = (nsp_logits.argmax(-1) == nsp_labels).float().mean()
    return mlm + nsp, {"mlm_loss": mlm.detach(), "nsp_loss": nsp.detach(), "mlm_acc": mlm_acc,
                       "nsp_acc": nsp_acc}


def _tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum())


def build_model(cfg: BertTrainConfig, tokenizer):
    from transformers import BertConfig, BertForPreTraining

    if cfg.hidden_size % cfg.num_heads:
        raise InvalidRequest(f"config key 'hidden_size' ({cfg.hidden_size}) must be divisible by "
                             f"num_heads ({cfg.num_heads})", param="hidden_size")
    conf = BertConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                      max_position_embeddings=cfg.seq_len, type_vocab_size=2,
                      hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return BertForPreTraining(conf)


def run(cfg: BertTrainConfig) -> dict:
    info = distributed.setup()
    try:
        tokenizer, tok_ref, data = common.check_inputs(cfg, info.world_size)
        parent_dir, parent_ref = common.parent_folder(cfg.parent)
        torch.manual_seed(cfg.seed)
        if parent_dir is not None:
            from transformers import BertForPreTraining

            model = BertForPreTraining.from_pretrained(str(parent_dir))
        else:
            model = build_model(cfg, tokenizer)
        model = distributed.wrap(model, info, fsdp=cfg.fsdp)
        global_micro = cfg.batch_size // cfg.grad_accum

        def pairs(split: str, seed: int):
            starts, docs = data.lines(split)
            return BertPairs(data.tokens(split), starts, docs, tokenizer, cfg.seq_len, global_micro, seed,
                             info.rank, info.world_size, cfg.mlm_prob)

        batches = pairs("train", cfg.seed)
        val_src = pairs("val", 1234567)  # fixed validation pairs, the same at every evaluation

        def val():
            for p in range(cfg.eval_batches):
                yield val_src.batch(p)

        result = train(model, batches, bert_loss, loop_settings(cfg), val_batches=val, tokens_of=_tokens,
                       extra_state={"task": "bert"})
        return common.finish(cfg, model, tokenizer, tok_ref, data, result, info, parent_ref)
    finally:
        distributed.cleanup()


def main(config: str | None, overrides: list[str]) -> dict:
    return run(load_config(BertTrainConfig, config, overrides))
