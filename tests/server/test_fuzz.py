"""Schemathesis against a live `ember serve`: every operation of the app's own OpenAPI schema, with valid and
invalid inputs, a fixed number of examples each and a small max_tokens; zero server errors, zero hangs.

    .venv/bin/python -m pytest tests/server/test_fuzz.py -q          # about a minute on 2 cores

The schema comes from `create_app(...).openapi()` (the server itself publishes none). Requests carry an
admin key so the platform routes are exercised past authentication.
"""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

EXAMPLES = {GenerationMode.POSITIVE: 8, GenerationMode.NEGATIVE: 4}
SMALL = {"max_tokens": 4, "max_completion_tokens": 4, "n": 2, "best_of": 2, "limit": 2}


@pytest.fixture(scope="module")
def fuzz_target(start_server, tmp_path_factory, tiny_chat_dir):
    from ember.config import Settings
    from ember.server.app import ServeConfig, create_app
    from ember.store import keys, registry

    home = tmp_path_factory.mktemp("fuzz-home")
    st = Settings(home=home)
    registry.register_folder(tiny_chat_dir, "tiny", settings=st)
    _, admin = keys.create("fuzz", "admin", settings=st)
    # A short context bounds what an out-of-range (negative-mode) max_tokens can cost.
    srv = start_server(home, "--model", "tiny", "--max-slots", 4, "--max-seq-len", 64, "--default-max-tokens", 8)
    schema = create_app(ServeConfig(models=["tiny"], settings=st)).openapi()
    _shrink(schema)
    return srv, schema, {"Authorization": f"Bearer {admin}"}


def _shrink(node) -> None:
    """Caps the sizes that only make generation slow (max_tokens, n, best_of, eval limits)."""
    if isinstance(node, dict):
        for name, cap in SMALL.items():
            prop = node.get("properties", {}).get(name)
            if isinstance(prop, dict):
                for variant in [prop, *prop.get("anyOf", [])]:
                    if variant.get("type") == "integer":
                        variant["maximum"] = cap
        for v in node.values():
            _shrink(v)
    elif isinstance(node, list):
        for v in node:
            _shrink(v)


def _curl(case) -> str:
    try:
        return case.as_curl_command()[:2000]
    except Exception:  # noqa: BLE001
        return repr(case)[:2000]


def test_no_server_errors_no_hangs(fuzz_target):
    import httpx

    srv, raw, headers = fuzz_target
    schema = schemathesis.openapi.from_dict(raw)
    failures = []
    for result in schema.get_all_operations():
        op = result.ok()
        for mode, n in EXAMPLES.items():

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def check(case):
                try:
                    r = case.call(base_url=srv.url, headers=headers, timeout=30)
                except Exception as e:  # noqa: BLE001 - a timeout or a dropped connection is a finding too
                    failures.append(f"{op.label} [{mode.value}]: {type(e).__name__}: {e}\n{_curl(case)}")  # noqa: B023
                    return
                if r.status_code >= 500:
                    failures.append(f"{op.label} [{mode.value}]: {r.status_code} {r.text[:200]}\n{_curl(case)}")  # noqa: B023

            try:
                check()
            except Unsatisfiable:  # no invalid input exists (an operation without parameters)
                continue
    assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
    assert not failures, "\n".join(failures[:20])
