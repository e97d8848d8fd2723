"""The top-level Python API (docs/python-api.md): `from ember import Engine, SamplingParams, resolve, ...`.

    .venv/bin/python -m pytest tests/test_python_api.py -q
"""

import subprocess
import sys

import ember


def test_import_is_light_and_names_come_on_first_use():
    code = ("import sys, ember; assert 'torch' not in sys.modules, 'import ember loaded torch'\n"
            "from ember import Engine, SamplingParams\n"
            "print(Engine.__name__, SamplingParams.__name__)")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["Engine", "SamplingParams"]


def test_every_public_name_resolves():
    for name in ember.__all__:
        assert getattr(ember, name) is not None, name
    try:
        ember.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_register_resolve_generate_through_the_top_level(tiny_chat_dir, ember_home):
    from ember import (
        Engine,
        NotFound,
        SamplingParams,
        list_versions,
        register_folder,
        resolve,
        set_alias,
    )

    v = register_folder(tiny_chat_dir, "tiny")
    set_alias("tiny", "prod", v.number)
    assert resolve("tiny@prod").ref == "tiny:1" and [x.ref for x in list_versions("tiny")] == ["tiny:1"]
    try:
        resolve("tiny:9")
    except NotFound:
        pass
    else:
        raise AssertionError("expected NotFound")
    engine = Engine.load("tiny@prod", max_slots=2, max_seq_len=128)
    try:
        out = engine.generate(["Hello"], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    finally:
        engine.close()
    assert len(out[0].choices[0].token_ids) == 4 and out[0].usage.completion_tokens == 4
