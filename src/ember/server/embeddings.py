"""/v1/embeddings over the engine's encoder (`ember.engine.encoders.Encoder`: mean pooling + L2 normalisation).

    curl localhost:8000/v1/embeddings --json '{"model": "minilm-l6-v2", "input": ["a", "b"]}'

`embed(texts_or_ids) -> (vectors, token_counts)` is what the server calls, from a worker thread.
"""

from ember.engine.encoders import Encoder


class ServedEncoder:
    """Adapts the engine's Encoder to the (vectors, token_counts) shape the server uses; token-id inputs
    (OpenAI allows them) are decoded to text first. `enc` serves /v1/classify, /v1/tag, /v1/rerank, /score."""

    def __init__(self, enc: Encoder):
        self.enc = enc
        self.tokenizer = enc.tokenizer
        self.max_length = int(enc.max_seq_length)

    def embed(self, inputs: list):
        # Usage counts the tokens the model reads: inputs are truncated to max_length, so is their count.
        counts = [min(len(x), self.max_length) if isinstance(x, list) else
                  len(self.tokenizer(x, truncation=True, max_length=self.max_length)["input_ids"]) for x in inputs]
        texts = [self.tokenizer.decode(x, skip_special_tokens=True) if isinstance(x, list) else x for x in inputs]
        return self.enc.embed(texts), counts


def load_encoder(ref: str, settings=None) -> ServedEncoder:
    return ServedEncoder(Encoder.load(ref, settings))
