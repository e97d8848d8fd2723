"""rpm limits shared by replicas: the check and the count are one transaction, so processes admitting the same
key at the same moment never admit more than the limit between them (SQLite and PostgreSQL)."""

import time
from concurrent.futures import ThreadPoolExecutor

from ember.store import usage


def test_concurrent_admissions_never_pass_rpm(db_url):
    now = time.time()
    with ThreadPoolExecutor(8) as pool:  # eight concurrent admitters, as eight replicas would be
        results = list(pool.map(lambda _: usage.take_request("key_a", "m", 5, None, now=now), range(24)))
    assert sum(refused is None for refused, _, _ in results) == 5
    assert {refused for refused, _, _ in results} == {None, "rpm"}
    assert usage.window("key_a", now=now) == (5, 0)  # refused requests are not counted
    assert usage.take_request("key_b", "m", 5, None, now=now)[0] is None  # other keys are not affected


def test_tpm_refuses_once_spent(db_url):
    now = time.time()
    assert usage.take_request("key_t", "m", None, 100, now=now) == (None, 0, 0)
    usage.add_tokens("key_t", "m", 60, 40, now=now)
    assert usage.take_request("key_t", "m", None, 100, now=now) == ("tpm", 1, 100)
