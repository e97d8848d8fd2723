"""Classification, tagging and a cross-encoder on minilm-l6-v2 with small generated data sets: held-out
accuracy >= 0.9, entity-level F1 >= 0.8, relevant documents ranked first; lineage; and POST /v1/classify,
/v1/tag, /v1/rerank through the real server app (tag offsets slice the input text to the entity strings).
Predictions go through the engine's Encoder (engine/encoders.py), the one inference path for encoders."""

import time

import pytest
import torch
from ft_synth import TOPICS, ner_sentences, relevance_pairs, topic_rows, write_conll, write_jsonl

from ember.engine.encoders import Encoder
from ember.finetune import classify, common, tag


def _cfg(tmp_path, **kw):
    return common.FinetuneConfig(base="minilm-l6-v2", out=str(tmp_path / "run"), progress=False, max_length=64,
                                 batch_size=16, **kw)


@pytest.fixture(scope="module")
def classifier(ft_home, tmp_path_factory):
    import os

    from ember.store import db

    d = tmp_path_factory.mktemp("clf")
    old = os.environ.get("EMBER_HOME")
    os.environ["EMBER_HOME"] = str(ft_home)
    db.dispose_all()
    try:
        held = topic_rows(30, seed=2, held_out=True)
        summary = classify.run(_cfg(d, data=write_jsonl(d / "train.jsonl", topic_rows(90, seed=1)),
                                    eval_data=write_jsonl(d / "val.jsonl", held), name="topics",
                                    epochs=4, lr=1e-4), echo=lambda *_: None)
        ner_held = ner_sentences(40, seed=2)
        ner = tag.run(_cfg(d / "ner", data=write_conll(d / "train.conll", ner_sentences(120, seed=1)),
                           eval_data=write_conll(d / "dev.conll", ner_held), name="ner", epochs=4, lr=2e-4),
                      echo=lambda *_: None)
        pairs, pairs_val = relevance_pairs(90, seed=1), relevance_pairs(12, seed=2, held_out=True)
        ranker = classify.run(_cfg(d / "rank", data=write_jsonl(d / "pairs.jsonl", pairs),
                                   eval_data=write_jsonl(d / "pairs-val.jsonl", pairs_val), name="ranker",
                                   epochs=4, lr=1e-4), echo=lambda *_: None)
    finally:
        if old is None:
            os.environ.pop("EMBER_HOME", None)
        else:
            os.environ["EMBER_HOME"] = old
        db.dispose_all()
    return {"clf": summary, "held": held, "ner": ner, "ner_held": ner_held, "ranker": ranker}


def test_classification_accuracy_and_lineage(classifier, use_ft_home):
    from ember.store import registry

    clf = Encoder.load(classifier["clf"]["ref"])
    held = classifier["held"]
    pred = clf.classify([r["text"] for r in held])
    accuracy = sum(p[0]["label"] == r["label"] for p, r in zip(pred, held)) / len(held)
    print(f"\nclassification accuracy on {len(held)} held-out sentences: {accuracy:.3f}")
    assert accuracy >= 0.9
    assert abs(sum(x["score"] for x in pred[0]) - 1) < 1e-4
    v = registry.resolve(classifier["clf"]["ref"])
    assert v.kind == "model" and v.parent == registry.resolve("minilm-l6-v2").ref
    assert v.metadata["labels"] == ["food", "sports", "weather"]
    lin = v.metadata["lineage"]
    assert lin["task"] == "classify" and set(lin["data_digests"]) == {"train", "eval"}
    assert lin["final_eval_loss"] is not None and lin["config"]["lr"] == 1e-4


def test_tagging_entity_f1(classifier, use_ft_home):
    from ember.store import registry

    tagger = Encoder.load(classifier["ner"]["ref"])
    held = classifier["ner_held"]
    pred = tagger.tag_words([w for w, _ in held])
    from ember.evaluate.metrics import entity_f1

    scores = entity_f1([[x["tag"] for x in p] for p in pred], [t for _, t in held])
    print(f"\nentity-level F1 on {len(held)} held-out sentences: {scores['f1']:.3f} "
          f"(P {scores['precision']:.3f}, R {scores['recall']:.3f})")
    assert scores["f1"] >= 0.8
    v = registry.resolve(classifier["ner"]["ref"])
    assert v.metadata["lineage"]["task"] == "tag" and v.metadata["tags"][0] == "O"
    assert v.metadata["lineage"]["final_eval_entity_f1"] == pytest.approx(scores["f1"])


def test_classify_and_tag_routes(classifier, use_ft_home):
    from fastapi.testclient import TestClient

    from ember.server.app import ServeConfig, create_app

    clf_ref, ner_ref = classifier["clf"]["ref"], classifier["ner"]["ref"]
    rank_ref = classifier["ranker"]["ref"]
    app = create_app(ServeConfig(models=[clf_ref, ner_ref, rank_ref]))
    with TestClient(app, base_url="http://localhost") as client:  # a loopback Host (server/hosts.py)
        deadline = time.monotonic() + 300
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.5)
        r = client.post("/v1/classify", json={"model": clf_ref, "input": ["heavy snow is expected tonight",
                                                                           "the goalkeeper saved a penalty"]})
        assert r.status_code == 200, r.text
        assert [d["label"] for d in r.json()["data"]] == ["weather", "sports"]
        text = "Yesterday  Maria Lopez met Kofi at the Vandelay Industries building in New York."
        r = client.post("/v1/tag", json={"model": ner_ref, "input": text})
        assert r.status_code == 200, r.text
        data = r.json()["data"][0]
        for t in data["tokens"]:
            assert text[t["start"]:t["end"]] == t["text"]
        ents = {(e["type"], e["text"]) for e in data["entities"]}
        for e in data["entities"]:
            assert text[e["start"]:e["end"]] == e["text"]
        assert ("PER", "Maria Lopez") in ents and ("LOC", "New York") in ents
        assert client.post("/v1/tag", json={"model": clf_ref, "input": "x"}).status_code == 400
        assert client.post("/v1/classify", json={"model": clf_ref, "input": [""]}).status_code == 400

        docs = [TOPICS["food"][8], TOPICS["weather"][9], TOPICS["sports"][7]]
        r = client.post("/v1/rerank", json={"model": rank_ref, "query": "will it rain", "documents": docs})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert results[0]["index"] == 1 and results[0]["document"] == {"text": docs[1]}
        scores = [x["relevance_score"] for x in results]
        assert scores == sorted(scores, reverse=True) and all(0 < x < 1 for x in scores)
        assert client.post("/v1/rerank", json={"model": clf_ref, "query": "q", "documents": ["d"]}).status_code == 400


def test_cross_encoder_ranks_unseen_relevant_sentences_first(classifier, use_ft_home):
    """`ember finetune classify` on (query, sentence, score) rows gives a one-logit cross-encoder whose
    scores are sigmoid(logit) of transformers' own forward on the same pair."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ember.store import registry

    ref = classifier["ranker"]["ref"]
    v = registry.resolve(ref)
    assert v.metadata["task"] == "text-ranking" and v.metadata["labels"] == ["score"]
    ranker = Encoder.load(ref)
    assert ranker.can_score
    hits = 0
    for topic, queries in (("sports", "who won the match"), ("food", "what to cook tonight"),
                           ("weather", "the weather forecast")):
        docs = [TOPICS[t][7 + i] for t in sorted(TOPICS) for i in range(3)]  # 9 unseen sentences
        scores = ranker.score([queries] * len(docs), docs)
        top3 = sorted(range(len(docs)), key=lambda i: -scores[i])[:3]
        hits += sum(docs[i] in TOPICS[topic] for i in top3)
    print(f"\nrelevant sentences in the top 3, over 3 queries: {hits}/9")
    assert hits >= 8

    folder = registry.materialize(ref)
    tok = AutoTokenizer.from_pretrained(str(folder))
    hf = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    pairs = [("will it rain", TOPICS["weather"][8]), ("will it rain", TOPICS["food"][9])]
    with torch.no_grad():
        ref_scores = [hf(**tok(q, d, return_tensors="pt")).logits[0, 0].sigmoid().item() for q, d in pairs]
    assert ranker.score([q for q, _ in pairs], [d for _, d in pairs]) == pytest.approx(ref_scores, abs=1e-5)
    assert ref_scores[0] > ref_scores[1]
