"""Two stateless `ember serve` replicas on one PostgreSQL and a shared blob folder, behind a real nginx
(tests/deploy/conftest.py starts all of it on loopback): what a user of the balancer notices. Keys, limits and
aliases are shared through the database; a replica that dies loses only its own in-flight requests."""

import threading
import time

import httpx


def _complete(url: str, secret: str, max_tokens: int = 4, **extra) -> httpx.Response:
    return httpx.post(url + "/v1/completions", headers={"Authorization": f"Bearer {secret}"}, timeout=120,
                      json={"model": "tiny@prod", "prompt": "Hello", "max_tokens": max_tokens, **extra})


def test_key_created_on_one_replica_works_on_the_other(cluster):
    a, b = cluster.replicas
    r = httpx.post(a.url + "/api/keys", headers=cluster.headers(), json={"name": "team-a"}, timeout=60)
    assert r.status_code == 201, r.text
    secret, key_id = r.json()["secret"], r.json()["id"]
    r = _complete(b.url, secret)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    # ... and a revocation on the other replica reaches the first within a few seconds.
    assert httpx.post(b.url + f"/api/keys/{key_id}/revoke", headers=cluster.headers(), timeout=30).status_code == 200
    deadline = time.monotonic() + 30
    while _complete(a.url, secret).status_code != 401:
        assert time.monotonic() < deadline, "a key revoked on one replica still works on the other"
        time.sleep(0.5)


def test_rpm_limit_holds_across_both_replicas(cluster):
    r = httpx.post(cluster.replicas[1].url + "/api/keys", headers=cluster.headers(),
                   json={"name": "limited", "rpm": 4}, timeout=60)
    secret = r.json()["secret"]
    if time.time() % 60 > 50:  # all eight requests in one rate window
        time.sleep(61 - time.time() % 60)
    answers = [_complete(cluster.nginx, secret, max_tokens=1) for _ in range(8)]
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 4 and statuses.count(429) == 4, statuses
    served_by = {a.headers["x-upstream"] for a in answers}
    assert len(served_by) == 2  # both replicas took requests, and together they admitted four


def test_promotion_is_served_by_both_within_10s(cluster):
    from ember.store import registry

    v2 = registry.register_folder(registry.materialize("tiny:1", cluster.settings), "tiny",
                                  metadata={"note": "candidate"}, settings=cluster.settings)
    assert v2.ref == "tiny:2"
    for r in cluster.replicas:  # the version that answered is in every response (issue 15)
        assert _complete(r.url, cluster.admin, max_tokens=1).headers["x-ember-model-version"] == "tiny:1"
    registry.set_alias("tiny", "prod", 2, settings=cluster.settings)
    t0 = time.monotonic()
    pending = {r.url for r in cluster.replicas}
    while pending and time.monotonic() - t0 < 10:
        for url in list(pending):
            r = _complete(url, cluster.admin, max_tokens=1)
            if r.status_code == 200 and r.headers.get("x-ember-model-version") == "tiny:2":
                pending.discard(url)
        time.sleep(0.2)
    assert not pending, f"not serving tiny:2 within 10 s: {pending}"


def test_killing_a_replica_loses_only_its_in_flight_requests(cluster):
    a, b = cluster.replicas
    streams = []  # one dict per stream: upstream, chunks, done, error
    started = threading.Barrier(9)

    def stream():
        rec = {"upstream": None, "chunks": 0, "done": False, "error": None}
        streams.append(rec)
        first = True
        try:
            with httpx.stream("POST", cluster.nginx + "/v1/completions", headers=cluster.headers(), timeout=300,
                              json={"model": "tiny@prod", "prompt": "Hello", "max_tokens": 800, "ignore_eos": True,
                                    "stream": True}) as r:
                rec["upstream"] = r.headers.get("x-upstream")
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        rec["chunks"] += 1
                        if first:
                            first = False
                            started.wait(120)
                        if line == "data: [DONE]":
                            rec["done"] = True
        except Exception as e:  # noqa: BLE001 - a broken stream is what the test looks for
            rec["error"] = type(e).__name__
            if first:
                started.abort()

    threads = [threading.Thread(target=stream) for _ in range(8)]
    for t in threads:
        t.start()
    started.wait(120)  # every stream has its first tokens: all eight are in flight
    b.kill()
    for t in threads:
        t.join(300)
    on_b = [s for s in streams if s["upstream"] == f"127.0.0.1:{b.port}"]
    on_a = [s for s in streams if s["upstream"] == f"127.0.0.1:{a.port}"]
    assert on_a and on_b and len(on_a) + len(on_b) == 8
    assert all(s["done"] and s["error"] is None for s in on_a), on_a  # the survivor's requests finish
    assert all(not s["done"] for s in on_b), on_b  # only the killed replica's requests are lost
    # New traffic goes to the survivor: nginx tries the dead one once (connection refused -> next upstream,
    # the client sees nothing of it: X-Upstream lists both), then leaves it out (max_fails=1).
    after = [_complete(cluster.nginx, cluster.admin, max_tokens=2) for _ in range(6)]
    assert [r.status_code for r in after] == [200] * 6
    assert {r.headers["x-upstream"].split(", ")[-1] for r in after} == {f"127.0.0.1:{a.port}"}
