"""Sentence embeddings from BERT-family encoders (minilm-l6-v2): mean pooling + L2 normalisation, batched.

    enc = Encoder.load("minilm-l6-v2"); vectors = enc.embed(["a sentence", "another one"])

The result equals sentence-transformers' all-MiniLM-L6-v2 pipeline (Transformer -> Pooling(mean) ->
Normalize): texts are truncated to the folder's sentence_bert_config.json max_seq_length (256 when absent),
token embeddings are averaged over the attention mask and scaled to unit length. The network is
transformers' BertModel built from config.json and the safetensors weights only (no remote code, no pickle).
Texts are sorted by length before batching so little padding is computed.
"""

import json
from pathlib import Path

import torch

from ember.engine import compute
from ember.errors import InvalidRequest, Unsupported
from ember.models.loading import load_tokenizer, read_json, resolve_folder

ENCODER_TYPES = {"bert"}


class Encoder:
    def __init__(self, folder: Path, model, tokenizer, max_seq_length: int, batch_size: int = 32):
        self.folder, self.model, self.tokenizer = folder, model, tokenizer
        self.max_seq_length, self.batch_size = max_seq_length, batch_size
        self.dim = model.config.hidden_size

    @classmethod
    def load(cls, ref_or_path, settings=None, batch_size: int = 32) -> "Encoder":
        from transformers import BertConfig, BertModel

        folder = resolve_folder(ref_or_path, settings)
        cfg = read_json(folder / "config.json")
        if cfg.get("model_type") not in ENCODER_TYPES:
            raise Unsupported(f"model_type {cfg.get('model_type')!r} is not an encoder Ember can embed with "
                              f"(supported: {', '.join(sorted(ENCODER_TYPES))})")
        if not list(folder.glob("*.safetensors")):
            raise Unsupported(f"{folder} has no safetensors weights")
        model = compute.run(BertModel.from_pretrained, str(folder), config=BertConfig(**cfg), use_safetensors=True,
                            local_files_only=True, add_pooling_layer=False).eval()
        tok = load_tokenizer(folder)
        if tok is None:
            raise Unsupported(f"{folder} has no tokenizer")
        max_len = 256
        st = folder / "sentence_bert_config.json"
        if st.exists():
            max_len = int(json.loads(st.read_text()).get("max_seq_length", max_len))
        max_len = min(max_len, cfg.get("max_position_embeddings", max_len))
        return cls(folder, model, tok, max_len, batch_size)

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model actually reads (after truncation), for usage accounting."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_seq_length)
        return sum(len(ids) for ids in enc["input_ids"])

    def embed(self, texts: list[str]) -> list[list[float]]:
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise InvalidRequest("embedding input must be strings", param="input")
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: list[list[float] | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_seq_length, return_tensors="pt")
            # One compute-thread task per batch: a large request does not stall running decode streams.
            for i, v in zip(idx, compute.run(self._pooled, enc)):
                out[i] = v
        return out

    @torch.inference_mode()
    def _pooled(self, enc) -> list[list[float]]:
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).tolist()
