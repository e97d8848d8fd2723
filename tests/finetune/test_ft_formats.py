"""Data checks that run before any model is loaded: format detection, bad-line reports, loss masking,
CoNLL parsing, sub-token alignment and entity-level F1."""

import json

import pytest

from ember.errors import InvalidRequest
from ember.finetune import formats, sft, tag


def _write(path, lines):
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return path


@pytest.mark.parametrize("record,fmt", [
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}, "chat"),
    ({"prompt": "2+2=", "completion": "4"}, "completion"),
    ({"instruction": "Add.", "input": "2 2", "output": "4"}, "alpaca"),
])
def test_formats_are_detected_and_normalised(tmp_path, record, fmt):
    data = formats.read_jsonl(_write(tmp_path / "d.jsonl", [record] * 3))
    assert data.format == fmt and not data.bad and len(data.records) == 3
    msgs = data.records[0]["messages"]
    assert msgs[-1]["role"] == "assistant" and msgs[-1]["content"] in ("hello", "4")
    if fmt == "alpaca":
        assert msgs[0]["content"] == "Add.\n\n2 2"
    assert len(data.digest) == 64


def test_bad_lines_are_reported_with_line_numbers(tmp_path):
    good = {"prompt": "a", "completion": "b"}
    path = _write(tmp_path / "d.jsonl", [good, "{not json", good, {"prompt": "a"}, good, good, "[1, 2]", good])
    data = formats.read_jsonl(path)
    assert [n for n, _ in data.bad] == [2, 4, 7]
    assert "not valid JSON" in dict(data.bad)[2] and "completion" in dict(data.bad)[4]
    assert len(data.records) == 5 and data.lines == [1, 3, 5, 6, 8]


def test_a_mostly_bad_file_fails_naming_the_lines(tmp_path):
    good = {"prompt": "a", "completion": "b"}
    path = _write(tmp_path / "d.jsonl", [good, {"prompt": 1, "completion": "x"}, {"prompt": "a"}, "oops"])
    with pytest.raises(InvalidRequest) as e:
        formats.read_jsonl(path)
    assert "3 of 4 lines are bad" in e.value.message
    assert "d.jsonl:2:" in e.value.message and "d.jsonl:4:" in e.value.message


def test_classify_rows_with_pairs_and_scores(tmp_path):
    """Labelled rows (optionally pairs) train a classifier; (text, text_pair, score) rows a cross-encoder."""
    labelled = formats.read_jsonl(_write(tmp_path / "l.jsonl", [{"text": "a", "text_pair": "b", "label": 1}] * 2),
                                  "classify")
    assert labelled.format == "classify" and labelled.records[0] == {"text": "a", "text_pair": "b", "label": "1"}
    good = {"text": "capital of France", "text_pair": "Paris is the capital.", "score": 1}
    rows = [good, {**good, "score": 0.25}, {**good, "score": 2}, {"text": "q", "text_pair": "", "score": 0},
            {"text": "q", "score": 1, "label": "x"}, {**good, "score": True}, good, good]
    data = formats.read_jsonl(_write(tmp_path / "s.jsonl", rows), "classify")
    assert data.format == "score" and [r["score"] for r in data.records] == [1.0, 0.25, 1.0, 1.0]
    bad = dict(data.bad)
    assert [n for n, _ in data.bad] == [3, 4, 5, 6]
    assert "from 0 to 1" in bad[3] and "'text_pair' is empty" in bad[4] and "'score'" in bad[6]


def test_unknown_format_and_empty_file(tmp_path):
    with pytest.raises(InvalidRequest, match="no line matches"):
        formats.read_jsonl(_write(tmp_path / "a.jsonl", [{"question": "q", "answer": "a"}]))
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(InvalidRequest, match="empty"):
        formats.read_jsonl(tmp_path / "e.jsonl")


def test_chat_validation(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 3 + [
        {"messages": [{"role": "robot", "content": "q"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]},
    ]
    data = formats.read_jsonl(_write(tmp_path / "c.jsonl", rows))
    assert [n for n, _ in data.bad] == [4, 5, 6]
    assert "role" in data.bad[0][1] and "no assistant message" in data.bad[1][1] and "weight" in data.bad[2][1]


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir))


def _learned(tok, ex) -> str:
    return tok.decode([t for t in ex["labels"] if t != sft.IGNORE])


def test_loss_only_on_assistant_tokens(smol_tokenizer):
    tok = smol_tokenizer
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Item: pear, qty: 7"},
            {"role": "assistant", "content": "ITEM=pear;QTY=7", "weight": 1}]
    ex = sft.encode(tok, msgs, 512)
    assert ex["input_ids"] == tok(tok.apply_chat_template(msgs[:3], tokenize=False),
                                  add_special_tokens=False)["input_ids"]
    assert _learned(tok, ex) == "ITEM=pear;QTY=7<|im_end|>\n"
    first = ex["labels"].index(next(t for t in ex["labels"] if t != sft.IGNORE))
    # everything before the answer (system, user, the assistant header) is masked; the answer is contiguous
    assert tok.decode(ex["input_ids"][:first]).endswith("<|im_start|>assistant\n")
    assert all(t == sft.IGNORE for t in ex["labels"][:first])
    assert all(t != sft.IGNORE for t in ex["labels"][first:])


def test_multi_turn_and_weight_zero(smol_tokenizer):
    tok = smol_tokenizer
    msgs = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "FIRST", "weight": 0},
            {"role": "user", "content": "two"}, {"role": "assistant", "content": "SECOND", "weight": 1}]
    assert _learned(tok, sft.encode(tok, msgs, 512)) == "SECOND<|im_end|>\n"
    msgs[1]["weight"] = 1
    assert _learned(tok, sft.encode(tok, msgs, 512)) == "FIRST<|im_end|>\nSECOND<|im_end|>\n"
    # cut before any answer: nothing to learn, the example is dropped (and reported by load_examples)
    assert sft.encode(tok, msgs, 8) is None


def test_conll_parsing_and_bad_lines(tmp_path):
    p = tmp_path / "t.conll"
    p.write_text("-DOCSTART- -X- O O\n\nJohn NNP B-NP B-PER\nSmith B-x I-PER\nruns O\n\nbroken\nParis B-LOC\n")
    data = tag.read_conll(p)
    assert data.sentences == [(["John", "Smith", "runs"], ["B-PER", "I-PER", "O"]), (["Paris"], ["B-LOC"])]
    assert [n for n, _ in data.bad] == [7]
    p.write_text("a\nb\nc O\n")
    with pytest.raises(InvalidRequest, match="2 of 3 lines are bad"):
        tag.read_conll(p)


def test_first_subtoken_alignment(minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    words = ["Vandelay", "hired", "Kofi", "."]
    enc = tag.align(tok, words, [1, 0, 2, 0], 64)
    assert len(enc["input_ids"]) > len(words) + 2  # "Vandelay" and "Kofi" split into several pieces
    firsts = {}
    for pos, w in enumerate(enc["word_index"]):
        if w is not None and w not in firsts:
            firsts[w] = pos
    assert [enc["labels"][firsts[w]] for w in range(len(words))] == [1, 0, 2, 0]
    others = [lab for pos, lab in enumerate(enc["labels"]) if pos not in firsts.values()]
    assert others and all(lab == tag.IGNORE for lab in others)


def test_entities_and_f1():
    # The tagger and the evaluation metrics read entities with one seqeval-style chunker (inclusive last word).
    from ember.engine.bio import get_entities
    from ember.evaluate.metrics import entity_f1

    assert get_entities(["B-PER", "I-PER", "O", "I-LOC", "B-ORG", "B-ORG", "I-PER"]) == [
        ("PER", 0, 1), ("LOC", 3, 3), ("ORG", 4, 4), ("ORG", 5, 5), ("PER", 6, 6)]
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    assert entity_f1(gold, gold)["f1"] == 1.0
    half = entity_f1([["B-PER", "O", "O", "B-LOC"]], gold)  # a partial span is a miss
    assert half["precision"] == 0.5 and half["recall"] == 0.5
