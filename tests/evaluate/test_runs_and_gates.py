"""Runs stored per version, gated promotion, and the platform API, on a fresh EMBER_HOME with a tiny model."""

import pytest
from fastapi.testclient import TestClient

from ember.errors import InvalidRequest, NotFound
from ember.evaluate import gates, runner
from ember.evaluate.tasks import load_task
from ember.store import evals, registry


def _record(ref, **metrics):
    return evals.record(ref, "generate", task_digest="a" * 64, data_digest="b" * 64, settings_used={},
                        metrics=metrics, outputs=[{"index": 0, "output": "x"}])


def test_generate_task_runs_through_the_engine_and_is_stored(tiny_model):
    task = load_task("builtin:generate")
    task.max_tokens = 4
    seen = []
    r = runner.run("tiny:1", task, limit=3, on_progress=lambda d, n: seen.append((d, n)))
    assert set(r["metrics"]) >= {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match"}
    assert seen[-1] == (3, 3) and r["settings"]["examples"] == 3
    outs = evals.outputs(r)
    assert len(outs) == 3 and all("output" in o and "reference" in o for o in outs)
    assert evals.summary("tiny:1")[0]["metrics"] == r["metrics"]
    assert evals.summary("tiny:2") == []
    # Greedy decoding: the same run gives the same numbers.
    assert runner.run("tiny:1", task, limit=3, store=False)["metrics"] == r["metrics"]


@pytest.mark.parametrize("name", ["perplexity", "classify", "tag"])
def test_other_builtin_tasks_run(tiny_model, name):
    task = load_task(f"builtin:{name}")
    task.max_tokens = 4
    r = runner.run("tiny", task, limit=2)
    wanted = {"perplexity": "perplexity", "classify": "macro_f1", "tag": "entity_f1"}[name]
    assert wanted in r["metrics"] and r["ref"] == "tiny:2"


def test_multiple_choice_runs_are_stored_and_gate_a_promotion(tiny_model):
    """builtin:choice scores every choice through the engine; acc and acc_norm are stored per version and a
    promotion can be gated on them."""
    task = load_task("builtin:choice")
    one = runner.run("tiny:1", task, limit=6)
    two = runner.run("tiny:2", task, limit=6)  # the same weights: the same numbers
    assert set(one["metrics"]) == {"acc", "acc_norm"} and one["metrics"] == two["metrics"]
    outs = evals.outputs(evals.get(one["id"]))
    assert len(outs) == 6 and all(len(o["loglikelihoods"]) == 4 and o["prediction"] in range(4) for o in outs)
    assert all(o["acc"] == float(o["prediction"] == o["gold"]) for o in outs)
    registry.set_alias("tiny", "production", 1)
    d = gates.promote("tiny", "production", 2, ["acc>=current", "choice.acc_norm>=current"])
    assert d.moved and registry.resolve("tiny@production").number == 2


def test_multiple_choice_metrics_are_lm_evals():
    from ember.evaluate.choice import example_scores

    # acc: the highest log-likelihood; acc_norm: per character of the choice; acc_bytes: per UTF-8 byte.
    s = example_scores([-4.0, -6.0], ["ab", "abcdef"], 1)
    assert s == {"acc": 0.0, "acc_norm": 1.0, "acc_bytes": 1.0}
    s = example_scores([-3.0, -3.3], ["é", "ee"], 1)
    assert s == {"acc": 0.0, "acc_norm": 1.0, "acc_bytes": 0.0}


def test_parse_gate_forms_and_refusals():
    g = gates.parse_gate("perplexity<=current*1.02")
    assert (g.metric, g.op, g.relative, g.k, g.task) == ("perplexity", "<=", "*", 1.02, None)
    assert gates.parse_gate("generate.bleu >= current - 0.5").threshold(10.0) == 9.5
    assert gates.parse_gate("bleu>=0.98*current").threshold(10.0) == pytest.approx(9.8)
    assert gates.parse_gate("exact_match>0.5").threshold(None) == 0.5
    for bad in ["bleu", "bleu>=__import__('os')", "bleu>=current*", "bleu=>1", "bleu>=current**2"]:
        with pytest.raises(InvalidRequest):
            gates.parse_gate(bad)


def test_failing_gate_leaves_alias_and_reports(tiny_model):
    _record("tiny:1", bleu=20.0, perplexity=10.0)
    _record("tiny:2", bleu=18.5, perplexity=10.1)
    registry.set_alias("tiny", "production", 1)
    d = gates.promote("tiny", "production", 2, ["bleu>=current", "perplexity<=current*1.02"])
    assert not d.moved and [g.gate for g in d.failed] == ["bleu>=current"]
    assert "off by 1.5" in d.failed[0].message and "bleu 18.5" in d.failed[0].message
    assert registry.resolve("tiny@production").number == 1
    last = registry.alias_history("tiny", "production")[-1]
    assert last["action"] == "promote_refused" and last["detail"]["failed"] == ["bleu>=current"]

    d = gates.promote("tiny", "production", 2, ["perplexity<=current*1.02"])
    assert d.moved and registry.resolve("tiny@production").number == 2
    last = registry.alias_history("tiny", "production")[-1]
    assert (last["action"], last["from"], last["to"]) == ("promote", 1, 2)


def test_gate_without_comparable_results_fails(tiny_model):
    _record("tiny:2", bleu=30.0)
    registry.set_alias("tiny", "production", 1)
    d = gates.promote("tiny", "production", 2, ["bleu>=current"])
    assert not d.moved and "no bleu" in d.failed[0].message
    d = gates.promote("tiny", "production", 2, ["chrf>=10"])
    assert not d.moved and "no stored chrf" in d.failed[0].message
    with pytest.raises(NotFound):
        gates.promote("tiny", "production", 9, ["bleu>=current"])


def test_platform_api_survives_restart(tiny_model):
    from ember.server.app import ServeConfig, create_app
    from ember.store import keys

    run = _record("tiny:1", bleu=20.0)
    _record("tiny:2", bleu=21.0)
    registry.set_alias("tiny", "production", 1)
    _, admin = keys.create("admin", "admin")
    _, user = keys.create("user", "inference")
    for _restart in range(2):  # a new app over the same home sees the same runs
        # no lifespan: nothing is loaded; Host localhost: the server only answers loopback names by default
        client = TestClient(create_app(ServeConfig(models=["tiny"])), base_url="http://localhost")
        h = {"Authorization": f"Bearer {admin}"}
        assert client.get("/api/evals", params={"ref": "tiny:1"}).status_code == 401
        assert client.get("/api/evals", params={"ref": "tiny:1"},
                          headers={"Authorization": f"Bearer {user}"}).status_code == 403
        data = client.get("/api/evals", params={"ref": "tiny:1"}, headers=h).json()["data"]
        assert [r["id"] for r in data] == [run["id"]]
        assert client.get("/api/models/tiny:1", headers=h).json()["evals"][0]["metrics"] == {"bleu": 20.0}
        assert client.get(f"/api/evals/{run['id']}", params={"outputs": True}, headers=h).json()["outputs"]
        rows = client.get("/api/evals/compare", params={"a": "tiny:1", "b": "tiny:2"}, headers=h).json()["rows"]
        assert rows[0]["diff"] == 1.0 and rows[0]["better"] == "b"
    r = client.post("/api/models/tiny/aliases/production/promote", headers=h,
                    json={"version": 2, "gates": ["bleu>=current+5"]})
    assert r.status_code == 409 and r.json()["decision"]["failed"] == ["bleu>=current+5"]
    assert r.json()["error"]["type"] == "conflict_error" and "stays at tiny:1" in r.json()["error"]["message"]
    r = client.post("/api/models/tiny/aliases/production/promote", headers=h,
                    json={"version": 2, "gates": ["bleu>=current"]})
    assert r.status_code == 200 and registry.resolve("tiny@production").number == 2
    assert client.post("/api/evals", headers=h, json={"ref": "tiny", "task": "/etc/passwd"}).status_code == 400
