"""Encoders for /v1/embeddings: the engine's `ember.engine.embed.Encoder` when it is installed, else a small
sentence-transformers-style encoder over transformers' BertModel (mean pooling, L2 normalisation as the
folder's modules.json asks).

    curl localhost:8000/v1/embeddings -d '{"model": "minilm-l6-v2", "input": ["a", "b"]}'

`embed(texts_or_ids) -> (vectors, token_counts)` is what the server calls, from a worker thread.
"""

import json
from pathlib import Path


class FallbackEncoder:
    def __init__(self, folder: Path):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False,
                                               dtype=torch.float32).eval()
        cfg = json.loads((folder / "config.json").read_text())
        st = folder / "sentence_bert_config.json"
        limit = json.loads(st.read_text()).get("max_seq_length") if st.exists() else None
        self.max_length = int(limit or cfg.get("max_position_embeddings", 512))
        modules = folder / "modules.json"
        kinds = [m.get("type", "") for m in json.loads(modules.read_text())] if modules.exists() else []
        self.normalize = any(k.endswith("Normalize") for k in kinds) or not kinds
        pool_cfg = folder / "1_Pooling" / "config.json"
        pool = json.loads(pool_cfg.read_text()) if pool_cfg.exists() else {}
        self.cls_pooling = bool(pool.get("pooling_mode_cls_token")) and not pool.get("pooling_mode_mean_tokens")
        self.dim = int(cfg.get("hidden_size", 0))

    def embed(self, inputs: list) -> tuple[list[list[float]], list[int]]:
        import torch

        ids = [x if isinstance(x, list) else self.tokenizer(x, truncation=True, max_length=self.max_length)["input_ids"]
               for x in inputs]
        ids = [x[: self.max_length] for x in ids]
        out: list[list[float]] = []
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for start in range(0, len(ids), 32):
                chunk = ids[start : start + 32]
                n = max(len(x) for x in chunk)
                t = torch.full((len(chunk), n), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), n), dtype=torch.long)
                for i, x in enumerate(chunk):
                    t[i, : len(x)] = torch.tensor(x)
                    mask[i, : len(x)] = 1
                h = self.model(input_ids=t, attention_mask=mask).last_hidden_state
                if self.cls_pooling:
                    v = h[:, 0]
                else:
                    m = mask.unsqueeze(-1).to(h.dtype)
                    v = (h * m).sum(1) / m.sum(1).clamp(min=1)
                if self.normalize:
                    v = torch.nn.functional.normalize(v, dim=-1)
                out.extend(v.tolist())
        return out, [len(x) for x in ids]


class _EngineEncoder:
    """Adapts ember.engine.embed.Encoder to the (vectors, token_counts) shape the server uses."""

    def __init__(self, enc):
        self.enc = enc
        self.tokenizer = enc.tokenizer
        self.max_length = int(getattr(enc, "max_seq_length", 256))

    def embed(self, inputs: list):
        counts = [len(x) if isinstance(x, list) else
                  len(self.tokenizer(x, truncation=True, max_length=self.max_length)["input_ids"]) for x in inputs]
        texts = [self.tokenizer.decode(x, skip_special_tokens=True) if isinstance(x, list) else x for x in inputs]
        vecs = self.enc.embed(texts)
        return [list(map(float, v)) for v in (vecs.tolist() if hasattr(vecs, "tolist") else vecs)], counts


def load_encoder(ref: str, settings=None):
    try:
        from ember.engine.embed import Encoder
    except ImportError:
        Encoder = None
    if Encoder is not None:
        return _EngineEncoder(Encoder.load(ref, settings))
    from ember.models.loading import resolve_folder

    return FallbackEncoder(resolve_folder(ref, settings))
