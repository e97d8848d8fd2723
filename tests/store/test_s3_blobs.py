"""The shared blob store in an S3-compatible bucket, against a real S3 API server (moto's, on 127.0.0.1), and in
a shared folder (file://).

    .venv/bin/python -m pytest tests/store/test_s3_blobs.py -q

Two EMBER_HOMEs stand for two replicas: one database, one bucket, each its own local cache. A version
imported on one is materialized on the other from the bucket, verified on the way in; an object changed in
the bucket is refused with an error that names it.
"""

import json
import os

import pytest

from ember.config import Settings
from ember.errors import CorruptFile
from ember.store import blobs, db, registry

boto3 = pytest.importorskip("boto3", reason="the S3 blob store tests need boto3 (pip install 'ember[s3]')")
moto_server = pytest.importorskip("moto.server", reason="the S3 blob store tests need moto[server] (dev extra)")

BUCKET = "ember-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "EMBER_S3_ENDPOINT_URL")}
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                      EMBER_S3_ENDPOINT_URL=url)
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()
    blobs._shared.clear()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _replicas(tmp_path, prefix):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    blob_url = f"s3://{BUCKET}/{prefix}"
    return [Settings(home=tmp_path / f"replica-{i}", database_url=url, blob_url=blob_url) for i in range(3)]


def test_a_version_imported_on_one_replica_is_materialized_on_another(s3_endpoint, tmp_path, tiny_model_dir):
    a, b, _ = _replicas(tmp_path, "models")
    info = registry.register_folder(tiny_model_dir, "tiny", settings=a)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="models/")["Contents"]}
    assert keys == {f"models/sha256-{d}" for d in info.files.values()}
    assert not (b.home / "blobs").exists()
    folder = registry.materialize("tiny", b)  # b has never seen these blobs: fetched, verified, cached
    for path, digest in info.files.items():
        assert (folder / path).read_bytes() == (tiny_model_dir / path).read_bytes()
        assert blobs.hash_file(folder / path) == digest and (b.home / "blobs" / f"sha256-{digest}").exists()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    assert registry.verify(settings=b) == []
    # Deleting on one replica frees that replica's cache; the bucket keeps young objects (another replica
    # may be importing them right now), see blobs.GC_GRACE_S.
    registry.delete("tiny", a)
    assert list((a.home / "blobs").iterdir()) == []
    assert len(s3.list_objects_v2(Bucket=BUCKET, Prefix="models/")["Contents"]) == len(keys)
    db.dispose_all()


def test_a_corrupted_object_is_refused_with_a_clear_error(s3_endpoint, tmp_path, tiny_model_dir, run_cli):
    a, _, c = _replicas(tmp_path, "corrupt")
    info = registry.register_folder(tiny_model_dir, "tiny", settings=a)
    digest = info.files["config.json"]
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=BUCKET, Key=f"corrupt/sha256-{digest}",
                                                            Body=b'{"model_type": "evil"}')
    with pytest.raises(CorruptFile) as e:
        registry.materialize("tiny", c)
    assert f"sha256-{digest} in s3://{BUCKET}/corrupt is corrupt" in e.value.message
    assert not (c.home / "blobs" / f"sha256-{digest}").exists()  # never entered the cache
    assert not list((c.home / "materialized").glob("tiny-*"))
    # `ember models verify` checks the bucket's copy even where the local cache is intact (exit 4).
    env = {"EMBER_HOME": str(a.home), "EMBER_DATABASE_URL": a.database_url, "EMBER_BLOB_URL": a.blob_url}
    r = run_cli("models", "verify", "tiny", env=env)
    assert r.returncode == 4 and f"s3://{BUCKET}/corrupt" in r.stdout + r.stderr, (r.stdout, r.stderr)
    db.dispose_all()


def test_an_unknown_blob_url_is_a_clear_error(tmp_path, tiny_model_dir):
    from ember.errors import InvalidRequest

    s = Settings(home=tmp_path / "h", blob_url="ftp://host/blobs")
    with pytest.raises(InvalidRequest, match="use s3://BUCKET/PREFIX or file:///FOLDER"):
        registry.register_folder(tiny_model_dir, "tiny", settings=s)
    assert registry.list_versions(settings=s) == []  # nothing half-registered
    db.dispose_all()


def test_a_shared_folder_store(tmp_path, tiny_model_dir):
    """EMBER_BLOB_URL=file:///mount: the same cache rules over a folder every replica mounts."""
    shared = tmp_path / "mount"
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = (Settings(home=tmp_path / n, database_url=url, blob_url=f"file://{shared}") for n in "ab")
    info = registry.register_folder(tiny_model_dir, "tiny", settings=a)
    assert {p.name for p in shared.iterdir()} == {f"sha256-{d}" for d in info.files.values()}
    folder = registry.materialize("tiny", b)
    assert (folder / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
    db.dispose_all()
