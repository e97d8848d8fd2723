"""POST /v1/rerank (Cohere / Jina shape) and POST /score (vLLM's shape) against a real `ember serve`, with a
bi-encoder (minilm-l6-v2, cosine) and a tiny cross-encoder (one logit, sigmoid); scores equal a direct
transformers computation on the same weights, and bad input is a clear 4xx before any work.

    pytest tests/server/test_rerank.py
"""

import httpx
import pytest
import torch

EMBED, RANKER, CLF, DECODER = "minilm-l6-v2", "tiny-ranker", "tiny-clf", "tiny"
QUERY = "capital of France"
DOCS = ["Bananas are a good source of potassium.", "Paris is the capital and largest city of France.",
        "The stock market fell sharply on Monday.", "Berlin is the capital of Germany."]


@pytest.fixture(scope="module")
def served(start_server, tmp_path_factory, tiny_bert_dirs, tiny_chat_dir):
    from ember.config import Settings
    from ember.store import importers, registry

    home = tmp_path_factory.mktemp("rerank-home")
    settings = Settings(home=home)
    importers.pull(EMBED, settings)
    registry.register_folder(tiny_bert_dirs["rerank"], RANKER, metadata={"task": "text-ranking"}, settings=settings)
    registry.register_folder(tiny_bert_dirs["classify"], CLF, metadata={"task": "text-classification"},
                             settings=settings)
    registry.register_folder(tiny_chat_dir, DECODER, settings=settings)
    srv = start_server(home, "--model", EMBED, "--model", RANKER, "--model", CLF, "--model", DECODER)
    srv.folders = {name: registry.materialize(name, settings) for name in (EMBED, RANKER)}
    return srv


def _post(srv, path, body):
    return httpx.post(srv.url + path, json=body, timeout=120)


def _bi_encoder(folder, query, docs):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BertModel -> mean pooling -> normalize; cosine."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(str(folder)), AutoModel.from_pretrained(str(folder)).eval()
    enc = tok([query, *docs], padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)
    return (v[1:] @ v[0]).tolist()


def _cross_encoder(folder, query, docs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return [model(**tok(query, d, return_tensors="pt")).logits[0, 0].sigmoid().item() for d in docs]


def test_rerank_orders_by_relevance_and_equals_transformers(served):
    r = _post(served, "/v1/rerank", {"model": EMBED, "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == EMBED and body["usage"]["total_tokens"] > 0
    results = body["results"]
    assert [x["index"] for x in results][:2] == [1, 3]  # Paris first, then the other capital
    assert results[-1]["index"] in (0, 2)
    assert all(x["document"] == {"text": DOCS[x["index"]]} for x in results)
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    ref = _bi_encoder(served.folders[EMBED], QUERY, DOCS)
    assert {x["index"]: x["relevance_score"] for x in results} == pytest.approx(dict(enumerate(ref)), abs=1e-5)


def test_rerank_top_n_without_documents_and_object_documents(served):
    r = _post(served, "/v1/rerank", {"model": EMBED, "query": QUERY, "top_n": 2, "return_documents": False,
                                     "documents": [{"text": d} for d in DOCS]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [1, 3] and all("document" not in x for x in results)


def test_cross_encoder_scores_are_sigmoid_logits(served):
    ref = _cross_encoder(served.folders[RANKER], QUERY, DOCS)
    r = _post(served, "/v1/rerank", {"model": RANKER, "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    assert got == pytest.approx(dict(enumerate(ref)), abs=1e-5)
    assert [x["index"] for x in r.json()["results"]] == sorted(range(len(DOCS)), key=lambda i: -ref[i])

    r = _post(served, "/score", {"model": RANKER, "text_1": QUERY, "text_2": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == RANKER
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert [d["score"] for d in body["data"]] == pytest.approx(ref, abs=1e-5)


def test_score_pairs_lists_like_vllm(served):
    r = _post(served, "/v1/score", {"model": EMBED, "text_1": [QUERY, "fruit"], "text_2": [DOCS[1], DOCS[0]]})
    assert r.status_code == 200, r.text
    scores = [d["score"] for d in r.json()["data"]]
    assert scores == pytest.approx([_bi_encoder(served.folders[EMBED], QUERY, [DOCS[1]])[0],
                                    _bi_encoder(served.folders[EMBED], "fruit", [DOCS[0]])[0]], abs=1e-5)
    assert r.json()["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("path,body,status,param", [
    ("/v1/rerank", {"model": EMBED, "query": QUERY, "documents": []}, 400, "documents"),
    ("/v1/rerank", {"model": EMBED, "query": QUERY, "documents": ["x"] * 1001}, 400, "documents"),
    ("/v1/rerank", {"model": EMBED, "query": QUERY, "documents": ["x" * 40_000]}, 400, "documents"),
    ("/v1/rerank", {"model": EMBED, "query": "", "documents": ["x"]}, 400, "query"),
    ("/v1/rerank", {"model": EMBED, "query": QUERY, "documents": ["x"], "top_n": 0}, 400, "top_n"),
    ("/v1/rerank", {"model": EMBED, "query": QUERY, "documents": [{"txt": "x"}]}, 400, "documents"),
    ("/v1/rerank", {"model": EMBED, "query": QUERY, "documents": ["x"], "rank_fields": ["t"]}, 400, "rank_fields"),
    ("/v1/rerank", {"model": "no-such-model", "query": QUERY, "documents": ["x"]}, 404, "model"),
    ("/v1/rerank", {"model": DECODER, "query": QUERY, "documents": ["x"]}, 400, "model"),
    ("/v1/rerank", {"model": CLF, "query": QUERY, "documents": ["x"]}, 400, "model"),
    ("/v1/rerank", {"query": QUERY, "documents": ["x"]}, 400, "model"),
    ("/score", {"model": EMBED, "text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, 400, "text_2"),
    ("/score", {"model": EMBED, "text_1": "a", "text_2": []}, 400, "text_2"),
    ("/score", {"model": DECODER, "text_1": "a", "text_2": "b"}, 400, "model"),
])
def test_bad_input_is_a_clear_4xx(served, path, body, status, param):
    r = _post(served, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]
