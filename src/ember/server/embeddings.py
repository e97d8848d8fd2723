"""/v1/embeddings over the engine's encoder (`ember.engine.embed.Encoder`: mean pooling + L2 normalisation).

    curl localhost:8000/v1/embeddings --json '{"model": "minilm-l6-v2", "input": ["a", "b"]}'

`embed(texts_or_ids) -> (vectors, token_counts)` is what the server calls, from a worker thread.
"""


class ServedEncoder:
    """Adapts ember.engine.embed.Encoder to the (vectors, token_counts) shape the server uses; token-id
    inputs (OpenAI allows them) are decoded to text first."""

    def __init__(self, enc):
        self.enc = enc
        self.tokenizer = enc.tokenizer
        self.max_length = int(getattr(enc, "max_seq_length", 256))

    def embed(self, inputs: list):
        # Usage counts the tokens the model reads: inputs are truncated to max_length, so is their count.
        counts = [min(len(x), self.max_length) if isinstance(x, list) else
                  len(self.tokenizer(x, truncation=True, max_length=self.max_length)["input_ids"]) for x in inputs]
        texts = [self.tokenizer.decode(x, skip_special_tokens=True) if isinstance(x, list) else x for x in inputs]
        vecs = self.enc.embed(texts)
        return [list(map(float, v)) for v in (vecs.tolist() if hasattr(vecs, "tolist") else vecs)], counts


def load_encoder(ref: str, settings=None) -> ServedEncoder:
    from ember.engine.embed import Encoder

    return ServedEncoder(Encoder.load(ref, settings))
