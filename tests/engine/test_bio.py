"""BIO chunking (engine/bio.py), the one rule behind /v1/tag entities and entity F1.

    pytest tests/engine/test_bio.py
"""

from ember.engine.bio import get_entities, is_bio


def test_get_entities_chunks_like_conlleval():
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_entities(["I-PER", "I-PER", "B-PER"]) == [("PER", 0, 1), ("PER", 2, 2)]  # I- after O starts one
    assert get_entities(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]  # a type change splits
    assert get_entities([]) == [] and get_entities(["O", "O"]) == []


def test_is_bio():
    assert is_bio(["O", "B-PER", "I-PER"]) and not is_bio(["NOUN", "VERB"])
