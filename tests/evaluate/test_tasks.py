"""Task files: parsing, checks that name the bad key, safe templates, builtins."""

import json

import pytest

from ember.errors import InvalidRequest, NotFound
from ember.evaluate.tasks import builtin_names, load_examples, load_task, render


def write_task(tmp_path, text: str, rows=({"q": "2+2?", "a": "4"},)):
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = tmp_path / "task.yaml"
    p.write_text(text)
    return p


def test_builtins_load():
    assert set(builtin_names()) >= {"perplexity", "generate", "classify", "tag", "choice"}
    for name in builtin_names():
        t = load_task(f"builtin:{name}")
        assert t.type == {"choice": "multiple_choice"}.get(name, name) and load_examples(t)
        assert len(t.digest) == 64 and len(t.data_digest()) == 64


def test_task_keys_and_digests(tmp_path):
    p = write_task(tmp_path, "data: data.jsonl\nprompt: 'Q: {q}\\nA:'\nreference: a\nmetrics: [exact_match, bleu]\n"
                             "max_tokens: 8\nchat: true\n")
    t = load_task(p)
    assert (t.type, t.chat, t.max_tokens) == ("generate", True, 8)
    assert [m["name"] for m in t.metrics] == ["exact_match", "bleu"]
    assert t.data == tmp_path / "data.jsonl"
    digest, data_digest = t.digest, t.data_digest()
    p.write_text(p.read_text().replace("max_tokens: 8", "max_tokens: 9"))
    assert load_task(p).digest != digest and load_task(p).data_digest() == data_digest
    assert t.data_digest(limit=1) != data_digest


@pytest.mark.parametrize("text,key", [
    ("data: data.jsonl\nprompt: '{q}'\nreference: a\nmax_token: 3\n", "max_token"),
    ("prompt: '{q}'\nreference: a\n", "data"),
    ("data: nope.jsonl\nprompt: '{q}'\nreference: a\n", "data"),
    ("data: data.jsonl\nprompt: '{q}'\n", "reference"),
    ("data: data.jsonl\nprompt: '{q}'\nreference: a\nmetrics: [perplexity]\n", "metrics"),
    ("data: data.jsonl\nprompt: '{q}'\nreference: a\nmax_tokens: -1\n", "max_tokens"),
    ("data: data.jsonl\nprompt: '{q.__class__}'\nreference: a\n", "prompt"),
    ("data: data.jsonl\nprompt: '{q}'\nreference: a\nchat: maybe\n", "chat"),
    ("type: translate\ndata: data.jsonl\nprompt: '{q}'\nreference: a\n", "type"),
    ("data: data.jsonl\nprompt: '{q}'\nreference: a\nchoices: opts\n", "choices"),
    ("type: multiple_choice\ndata: data.jsonl\nprompt: '{q}'\nreference: a\nmetrics: [bleu]\n", "metrics"),
    ("type: multiple_choice\ndata: data.jsonl\nprompt: '{q}'\nreference: a\nchat: true\n", "chat"),
    ("name: " + "n" * 300 + "\ndata: data.jsonl\nprompt: '{q}'\nreference: a\n", "name"),
])
def test_bad_task_files_name_the_key(tmp_path, text, key):
    with pytest.raises(InvalidRequest) as e:
        load_task(write_task(tmp_path, text))
    assert repr(key) in e.value.message


def test_missing_reference_field_in_data_names_line(tmp_path):
    t = load_task(write_task(tmp_path, "data: data.jsonl\nprompt: '{q}'\nreference: answer\n"))
    with pytest.raises(InvalidRequest, match="data.jsonl:1"):
        load_examples(t)


def test_missing_task_and_builtin():
    with pytest.raises(NotFound):
        load_task("/nonexistent/task.yaml")
    with pytest.raises(NotFound, match="builtin"):
        load_task("builtin:nope")


def test_render_is_plain_substitution():
    assert render("Q: {q} {{literal}} {words}", {"q": "x", "words": ["a", "b"]}) == "Q: x {literal} a b"
    with pytest.raises(InvalidRequest, match="missing|no field"):
        render("{nope}", {"q": 1})
    with pytest.raises(InvalidRequest):
        render("{q.__class__}", {"q": 1})
