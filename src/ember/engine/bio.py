"""BIO/IOBES tag sequences -> entity spans: the one chunking rule the tagger's entities, the training run's
validation F1 and `ember eval` entity F1 all use.

    ember eval my-ner --task builtin:tag        # entity_f1 compares get_entities(pred) with get_entities(gold)
    curl localhost:8000/v1/tag -d '{"model": "my-ner", "input": "Maria Lopez flew to New York."}'

Chunked exactly as seqeval's default mode (and conlleval): an I- after O or after another type starts an
entity.
"""


def is_bio(labels) -> bool:
    return all(t == "O" or t[:2] in ("B-", "I-") for t in labels)


def _split_tag(tag: str) -> tuple[str, str]:
    tag = tag or "O"
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _chunk_end(prev_tag, tag, prev_type, type_) -> bool:
    return (prev_tag in ("E", "S") or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _chunk_start(prev_tag, tag, prev_type, type_) -> bool:
    return (tag in ("B", "S") or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def get_entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) spans of a BIO/IOBES sequence."""
    chunks, prev_tag, prev_type, begin = [], "O", "", 0
    for i, t in enumerate([*tags, "O"]):
        tag, type_ = _split_tag(t)
        if _chunk_end(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _chunk_start(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks
