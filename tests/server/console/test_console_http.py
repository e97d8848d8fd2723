"""The web console over plain HTTP (no browser): sign-in, the session cookie, CSRF, scopes, first run.

    .venv/bin/python -m pytest tests/server/console -q

A real `ember serve` with a tiny random chat model in a home of its own (keys are written there).
"""

import re

import httpx
import pytest

EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def console(tmp_path_factory, tiny_chat_dir, start_server):
    from ember.config import Settings
    from ember.store import db, keys, registry

    home = tmp_path_factory.mktemp("console-home")
    st = Settings(home=home)
    registry.register_folder(tiny_chat_dir, "tiny", settings=st)
    registry.register_folder(tiny_chat_dir, "tiny", settings=st)
    _, admin = keys.create("alice", "admin", st)
    _, infer = keys.create("app", "inference", st)
    db.dispose_all()
    srv = start_server(home, "--model", "tiny")
    return srv, admin, infer


def sign_in(url: str, key: str) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=60)
    page = c.get("/ui/signin")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = c.post("/ui/signin", files={"csrf_token": (None, token), "key": (None, key), "next": (None, "/ui/chat")})
    assert r.status_code == 303 and r.headers["location"] == "/ui/chat", r.text
    return c


def csrf(c: httpx.Client, path: str = "/ui/chat") -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', c.get(path).text).group(1)


def test_signin_sets_a_strict_httponly_session_cookie(console):
    srv, admin, _ = console
    c = httpx.Client(base_url=srv.url, timeout=60)
    assert c.get("/").headers["location"] == "/ui"
    assert c.get("/ui/models").headers["location"].startswith("/ui/signin?next=")
    page = c.get("/ui/signin")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = c.post("/ui/signin", files={"csrf_token": (None, token), "key": (None, admin)})
    cookie = r.headers["set-cookie"]
    assert "ember_session=" in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert admin not in cookie and admin not in r.headers.get("location", "")
    models = c.get("/ui/models")
    assert models.status_code == 200 and "tiny" in models.text and admin not in models.text


def test_wrong_key_says_what_to_do(console):
    srv, _, _ = console
    c = httpx.Client(base_url=srv.url, timeout=60)
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/ui/signin").text).group(1)
    r = c.post("/ui/signin", files={"csrf_token": (None, token), "key": (None, "ember-nope")})
    assert r.status_code == 401 and "ember keys create" in r.text
    assert "ember_session" not in r.headers.get("set-cookie", "")


def _history(srv, admin, alias="production") -> list:
    r = httpx.get(srv.url + f"/api/models/tiny/aliases/{alias}/history", headers={"Authorization": f"Bearer {admin}"})
    return r.json()["data"] if r.status_code == 200 else []


def test_csrf_another_origin_cannot_act_through_a_session(console):
    srv, admin, _ = console
    c = sign_in(srv.url, admin)
    before = len(_history(srv, admin))
    # A cross-site form post: the browser would send the cookie (were it not SameSite) but no valid token.
    for files, headers in [({"alias": (None, "production")}, {"Origin": EVIL}),
                           ({"alias": (None, "production"), "csrf_token": (None, "guess")}, {}),
                           ({"alias": (None, "production"), "csrf_token": (None, csrf(c))}, {"Origin": EVIL}),
                           ({"alias": (None, "production"), "csrf_token": (None, csrf(c))},
                            {"Sec-Fetch-Site": "cross-site"})]:
        r = c.post("/ui/models/tiny/2/alias", files=files, headers=headers)
        # Refused by the server's Origin guard (403) or by the console's own check (the "not allowed" page).
        refused = r.status_code == 403 or (r.status_code == 303 and r.headers["location"].startswith("/ui/forbidden"))
        assert refused, (headers, r.status_code, r.text)
    assert len(_history(srv, admin)) == before
    # The streaming proxy too: no token, a wrong one, or the right one from another origin.
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for headers in [{}, {"X-CSRF-Token": "guess"}, {"X-CSRF-Token": csrf(c), "Origin": EVIL}]:
        r = c.post("/ui/proxy/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] in ("csrf_failed", "origin_not_allowed")
    r = c.post("/ui/proxy/v1/chat/completions", json=body, headers={"X-CSRF-Token": csrf(c)})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    # The same form with its token, from this origin, acts.
    r = c.post("/ui/models/tiny/2/alias", files={"alias": (None, "production"), "csrf_token": (None, csrf(c))},
               headers={"Origin": srv.url})
    assert r.headers["location"] == "/ui/models/tiny/2"
    assert len(_history(srv, admin)) == before + 1


def test_signed_out_session_is_dead(console):
    srv, admin, _ = console
    c = sign_in(srv.url, admin)
    token = csrf(c)
    sid = c.cookies.get("ember_session")
    assert c.post("/ui/signout", files={"csrf_token": (None, token)}).headers["location"] == "/ui/signin"
    replay = httpx.Client(base_url=srv.url, cookies={"ember_session": sid})
    assert replay.get("/ui/chat").headers["location"].startswith("/ui/signin")
    assert replay.post("/ui/proxy/v1/models", headers={"X-CSRF-Token": token}).status_code == 401


def test_inference_key_does_not_see_admin_pages(console):
    srv, _, infer = console
    c = sign_in(srv.url, infer)
    chat = c.get("/ui/chat")
    assert chat.status_code == 200 and 'href="/ui/models"' not in chat.text and 'href="/ui/keys"' not in chat.text
    for page in ("/ui/models", "/ui/models/tiny/1", "/ui/evals", "/ui/jobs", "/ui/keys"):
        r = c.get(page)
        assert r.status_code == 303 and r.headers["location"] == "/ui/forbidden", page
    assert "admin" in c.get("/ui/forbidden").text
    # Nor through the proxy: the API itself refuses an inference key on /api.
    r = c.get("/ui/proxy/api/keys", headers={"X-CSRF-Token": csrf(c)})
    assert r.status_code == 403
    assert c.get("/ui/server").status_code == 200


def test_pages_without_jobs_usage_audit_say_so(console):
    srv, admin, _ = console
    c = sign_in(srv.url, admin)
    jobs = c.get("/ui/jobs")
    if "jobs-unavailable" in jobs.text:
        assert "not available on this server" in jobs.text
    keys = c.get("/ui/keys")
    assert keys.status_code == 200 and "alice" in keys.text
    for marker in ("usage-unavailable", "audit-unavailable"):
        if marker in keys.text:
            assert "not available on this server" in keys.text


def test_created_key_secret_is_shown_once(console):
    srv, admin, _ = console
    c = sign_in(srv.url, admin)
    r = c.post("/ui/keys", files={"csrf_token": (None, csrf(c, "/ui/keys")), "name": (None, "ci-bot"),
                                  "scopes": (None, "inference")})
    assert r.headers["location"] == "/ui/keys"
    first = c.get("/ui/keys").text
    secret = re.search(r'id="secret-value">(ember-[^<]+)<', first).group(1)
    assert httpx.get(srv.v1 + "/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert secret not in c.get("/ui/keys").text


def test_first_run_page_when_no_key_exists(tmp_path_factory, tiny_chat_dir, start_server):
    from ember.config import Settings
    from ember.store import db, registry

    home = tmp_path_factory.mktemp("console-firstrun")
    registry.register_folder(tiny_chat_dir, "tiny", settings=Settings(home=home))
    db.dispose_all()
    srv = start_server(home, "--model", "tiny")
    r = httpx.get(srv.url + "/ui/signin")
    assert r.status_code == 200 and "ember keys create --name me --scopes admin" in r.text
