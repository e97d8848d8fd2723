"""Encoders (BERT family) for inference: embed, classify, tag and rerank, on the compute thread.

    enc = Encoder.load("minilm-l6-v2"); vectors = enc.embed(["a sentence", "another one"])
    ember serve --model minilm-l6-v2 --model my-clf --model my-ner --model my-reranker

One `Encoder` is one loaded model; what it can do follows from the head its folder was saved with
(config.json `architectures`):
- no head (`BertModel`, e.g. minilm-l6-v2): `embed` (equals sentence-transformers' Transformer ->
  Pooling(mean) -> Normalize: truncated to sentence_bert_config.json's max_seq_length, 256 when absent;
  token embeddings averaged over the attention mask, scaled to unit length) and `score` by cosine of the
  two embeddings (a bi-encoder).
- `*ForSequenceClassification` (`ember finetune classify`): `classify` (softmax over the labels); with one
  logit (a cross-encoder trained on scores) `score(query, documents)` is sigmoid(logit) of each pair, as
  sentence-transformers' CrossEncoder computes it.
- `*ForTokenClassification` (`ember finetune tag`): `tag_words` / `tag` (the first sub-token of each word
  carries the word's tag, as the tagger was trained; BIO tags grouped into entities by engine/bio.py).
Every model also embeds with its encoder body. The network is transformers' class for the architecture,
built from config.json and safetensors only (no remote code, no pickle); it is loaded once on the compute
thread and every batch runs there as one task, so a large request does not stall running decode streams.
"""

import json
import re
from pathlib import Path

import torch

from ember.engine import compute
from ember.engine.bio import get_entities, is_bio
from ember.errors import InvalidRequest, Unsupported
from ember.models.loading import DECODERS, load_tokenizer, read_json, resolve_folder

ENCODER_TYPES = {"bert"}  # config.json model_type values Ember loads as encoders (server/pool uses this set)
WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")  # words and single punctuation marks, like CoNLL tokens
HEADS = {"ForSequenceClassification": "classify", "ForTokenClassification": "tag"}


def kind_of(model_type: str) -> str | None:
    """What the engine does with a model_type: "generate" (Engine.load, a decoder), "embed" (Encoder.load),
    or None (neither loads it). The server's pool asks this before loading anything."""
    if model_type in DECODERS:
        return "generate"
    return "embed" if model_type in ENCODER_TYPES else None


def head_of(config: dict) -> str:
    """"embed" (no task head), "classify" or "tag", from config.json's architectures."""
    for arch in config.get("architectures") or []:
        for suffix, head in HEADS.items():
            if arch.endswith(suffix):
                return head
    return "embed"


class Encoder:
    def __init__(self, folder: Path, model, tokenizer, head: str, max_seq_length: int, batch_size: int = 32):
        self.folder, self.model, self.tokenizer, self.head = folder, model, tokenizer, head
        self.max_seq_length, self.batch_size = max_seq_length, batch_size
        self.body = model.base_model if head != "embed" else model
        self.dim = model.config.hidden_size
        self.id2label = {int(k): v for k, v in (model.config.id2label or {}).items()} if head != "embed" else {}
        self.bio = head == "tag" and is_bio(self.id2label.values())

    @classmethod
    def load(cls, ref_or_path, settings=None, batch_size: int = 32) -> "Encoder":
        from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification, BertModel

        folder = resolve_folder(ref_or_path, settings)
        cfg = read_json(folder / "config.json")
        if cfg.get("model_type") not in ENCODER_TYPES:
            raise Unsupported(f"model_type {cfg.get('model_type')!r} is not an encoder Ember can load "
                              f"(supported: {', '.join(sorted(ENCODER_TYPES))})")
        if not list(folder.glob("*.safetensors")):
            raise Unsupported(f"{folder} has no safetensors weights")
        head = head_of(cfg)
        kw = {"config": BertConfig(**cfg), "use_safetensors": True, "local_files_only": True}
        if head == "embed":
            model_cls, kw["add_pooling_layer"] = BertModel, False
        else:
            model_cls = BertForSequenceClassification if head == "classify" else BertForTokenClassification
        model = compute.run(model_cls.from_pretrained, str(folder), **kw).eval()
        tok = load_tokenizer(folder)
        if tok is None:
            raise Unsupported(f"{folder} has no tokenizer")
        max_len = 256 if head == "embed" else 512
        st = folder / "sentence_bert_config.json"
        if st.exists():
            max_len = int(json.loads(st.read_text()).get("max_seq_length", max_len))
        max_len = min(max_len, cfg.get("max_position_embeddings", max_len))
        return cls(folder, model, tok, head, max_len, batch_size)

    # ------------------------------------------------------------------------------------------- shared

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def can_score(self) -> bool:
        """Rerank / score: a bi-encoder (no head) or a one-logit cross-encoder."""
        return self.head == "embed" or (self.head == "classify" and self.num_labels == 1)

    def count_tokens(self, texts: list[str], pairs: list[str] | None = None) -> int:
        """Tokens the model actually reads (after truncation), for usage accounting."""
        enc = self.tokenizer(list(texts), pairs, truncation=True, max_length=self.max_seq_length)
        return sum(len(ids) for ids in enc["input_ids"])

    def _batches(self, n: int, key):
        """Index batches, longest first, so little padding is computed."""
        order = sorted(range(n), key=key, reverse=True)
        for start in range(0, n, self.batch_size):
            yield order[start : start + self.batch_size]

    def _run(self, fn, texts: list[str], pairs: list[str] | None = None) -> list:
        """fn(encoding) -> one result per row, over batches on the compute thread, back in input order."""
        out: list = [None] * len(texts)
        for idx in self._batches(len(texts), lambda i: len(texts[i]) + (len(pairs[i]) if pairs else 0)):
            enc = self.tokenizer([texts[i] for i in idx], [pairs[i] for i in idx] if pairs else None,
                                 padding=True, truncation=True, max_length=self.max_seq_length,
                                 return_tensors="pt")
            for i, r in zip(idx, compute.run(fn, enc)):
                out[i] = r
        return out

    # -------------------------------------------------------------------------------------------- embed

    def embed(self, texts: list[str]) -> list[list[float]]:
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise InvalidRequest("embedding input must be strings", param="input")
        return self._run(self._pooled, texts)

    @torch.inference_mode()
    def _pooled(self, enc) -> list[list[float]]:
        hidden = self.body(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).tolist()

    # ----------------------------------------------------------------------------------------- classify

    def _need(self, head: str, what: str) -> None:
        if self.head != head:
            how = "ember finetune classify" if head == "classify" else "ember finetune tag"
            raise InvalidRequest(f"{self.folder.name} has no {what} head (make one with `{how}`)",
                                 param="model", code="model_not_supported")

    def classify(self, texts: list[str], pairs: list[str] | None = None) -> list[list[dict]]:
        """Per text (or text pair): every label with its probability, best first. A one-logit model gives
        one entry, the sigmoid of its logit."""
        self._need("classify", "classification")
        return self._run(self._ranked, texts, pairs)

    @torch.inference_mode()
    def _ranked(self, enc) -> list[list[dict]]:
        logits = self.model(**enc).logits.float()
        probs = logits.sigmoid() if self.num_labels == 1 else logits.softmax(-1)
        return [[{"label": self.id2label[k], "score": p} for k, p in sorted(enumerate(row), key=lambda kv: -kv[1])]
                for row in probs.tolist()]

    # ------------------------------------------------------------------------------------ rerank, score

    def score(self, texts_1: list[str], texts_2: list[str]) -> list[float]:
        """Relevance of each pair (texts_1[i], texts_2[i]): sigmoid(logit) of the pair for a cross-encoder,
        cosine similarity of the two embeddings for a bi-encoder (each distinct text embedded once)."""
        if not self.can_score:
            raise InvalidRequest(f"{self.folder.name} cannot score text pairs: that needs an embedding model or a "
                                 "cross-encoder with one output (`ember finetune classify` on rows with 'text', "
                                 "'text_pair' and a numeric 'score')", param="model", code="model_not_supported")
        if len(texts_1) != len(texts_2):
            raise InvalidRequest(f"{len(texts_1)} first texts but {len(texts_2)} second texts")
        if self.head == "classify":
            return [r[0]["score"] for r in self._run(self._ranked, list(texts_1), list(texts_2))]
        distinct = list(dict.fromkeys([*texts_1, *texts_2]))
        vecs = dict(zip(distinct, torch.tensor(self.embed(distinct))))
        return [float(vecs[a] @ vecs[b]) for a, b in zip(texts_1, texts_2)]  # unit vectors: dot = cosine

    # ---------------------------------------------------------------------------------------------- tag

    def tag_words(self, sentences: list[list[str]]) -> list[list[dict]]:
        """Per sentence, per word: {"tag", "score"}. Words cut off by max_seq_length are tagged "O"."""
        self._need("tag", "tagging")
        return [compute.run(self._tag_one, words) if words else [] for words in sentences]

    @torch.inference_mode()
    def _tag_one(self, words: list[str]) -> list[dict]:
        enc = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.max_seq_length,
                             return_tensors="pt")
        probs = self.model(**enc).logits[0].float().softmax(-1)
        tags = [{"tag": "O", "score": 0.0} for _ in words]
        seen = set()
        for pos, w in enumerate(enc.word_ids()):
            if w is not None and w not in seen:  # the first sub-token of each word carries its tag
                seen.add(w)
                p, k = probs[pos].max(-1)
                tags[w] = {"tag": self.id2label[int(k)], "score": float(p)}
        return tags

    def tag(self, text: str) -> dict:
        """{"tokens": [{text, start, end, tag, score}], "entities": [{type, text, start, end, score}]};
        every [start, end) slices `text` to the token's or the entity's exact string."""
        spans = [(m.start(), m.end()) for m in WORD.finditer(text)]
        words = [text[a:b] for a, b in spans]
        tagged = self.tag_words([words])[0]
        tokens = [{"text": w, "start": a, "end": b, **t} for w, (a, b), t in zip(words, spans, tagged)]
        ents = []
        if self.bio:
            for typ, i, last in get_entities([t["tag"] for t in tagged]):
                j = last + 1
                a, b = spans[i][0], spans[last][1]
                ents.append({"type": typ, "text": text[a:b], "start": a, "end": b,
                             "score": sum(t["score"] for t in tagged[i:j]) / (j - i)})
        return {"tokens": tokens, "entities": ents}
