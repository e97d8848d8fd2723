"""`ember keys create | list | revoke` through the real console script.

    .venv/bin/python -m pytest tests/cli/test_keys.py -q
"""

import json

from ember.errors import Forbidden, Unauthorized


def test_create_list_revoke(ember_home, run_cli):
    r = run_cli("keys", "create", "--name", "ci", "--scopes", "inference,admin", "--json")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    secret = created["key"]
    assert secret.startswith("ember-") and len(secret) > 40 and created["scopes"] == ["admin", "inference"]
    db_bytes = b"".join(p.read_bytes() for p in ember_home.glob("ember.db*"))
    assert secret.encode() not in db_bytes  # only the hash is stored
    listed = json.loads(run_cli("keys", "list", "--json").stdout)
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0] and listed[0]["active"]
    human = run_cli("keys", "list")
    assert human.returncode == 0 and "ci" in human.stdout and secret not in human.stdout
    assert run_cli("keys", "revoke", created["id"]).returncode == 0
    assert json.loads(run_cli("keys", "list", "--json").stdout)[0]["active"] is False
    missing = run_cli("keys", "revoke", "key_nope")
    assert missing.returncode == 3 and "not found" in missing.stderr
    bad = run_cli("keys", "create", "--name", "x", "--scopes", "root")
    assert bad.returncode == 2 and "scope" in bad.stderr


def test_check_scopes(db_url, ember_home):  # on SQLite and PostgreSQL
    from ember.store import keys

    info, secret = keys.create("app", "inference")
    assert keys.check(secret, "inference").id == info.id
    for wrong, exc in ((None, Unauthorized), ("ember-nope", Unauthorized)):
        try:
            keys.check(wrong, "inference")
            raise AssertionError("accepted")
        except exc:
            pass
    try:
        keys.check(secret, "admin")
        raise AssertionError("inference key passed as admin")
    except Forbidden:
        pass
    _, admin = keys.create("ops", ["admin"])
    assert keys.check(admin, "inference") and keys.check(admin, "admin")
    keys.revoke(info.id)
    try:
        keys.check(secret, "inference")
        raise AssertionError("revoked key accepted")
    except Unauthorized:
        pass
    assert keys.any_exist()
