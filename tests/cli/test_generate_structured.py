"""`ember generate --json-schema/--regex/--choice` and `ember batch` lines with response_format and tools, on a
tiny random model (the grammar, not the model, decides the shape)."""

import json


def test_generate_constraints_and_batch_tools(run_cli, tiny_chat_dir, tmp_path):
    r = run_cli("generate", tiny_chat_dir, "Pick", "--choice", "left", "--choice", "right", "--max-tokens", 4)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("left", "right")
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}))
    r = run_cli("generate", tiny_chat_dir, "x", "--json-schema", schema, "--max-tokens", 12, "--chat")
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout)["ok"], bool)
    bad = run_cli("generate", tiny_chat_dir, "x", "--regex", "(a+)+")
    assert bad.returncode == 2 and "regex" in bad.stderr

    tool = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string", "maxLength": 6}}, "required": ["q"]}}}
    lines = [{"custom_id": "t", "body": {"messages": [{"role": "user", "content": "find"}], "tools": [tool],
                                         "tool_choice": "required", "max_tokens": 40, "seed": 1}},
             {"custom_id": "j", "body": {"messages": [{"role": "user", "content": "json"}], "max_tokens": 24,
                                         "response_format": {"type": "json_object"}, "seed": 1}}]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = run_cli("batch", tiny_chat_dir, inp, out)
    assert r.returncode == 0, r.stderr
    res = {x["custom_id"]: x["response"]["body"]["choices"][0] for x in map(json.loads, out.read_text().splitlines())}
    assert res["t"]["finish_reason"] == "tool_calls"
    call = res["t"]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "lookup" and isinstance(json.loads(call["function"]["arguments"])["q"], str)
    if res["j"]["finish_reason"] == "stop":
        assert isinstance(json.loads(res["j"]["message"]["content"]), dict)
