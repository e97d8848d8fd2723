import os

import pytest

from ember.config import Settings
from ember.errors import CorruptFile, InvalidRequest, NotFound
from ember.store import blobs


def test_put_is_content_addressed_idempotent_and_read_only(tmp_path):
    s = Settings(home=tmp_path / "home")
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello ember")
    d1, n1 = blobs.put_file(src, s)
    d2, _ = blobs.put_file(src, s)
    assert d1 == d2 == blobs.hash_file(src) and n1 == 11
    path = blobs.blob_path(d1, s)
    assert path.name == f"sha256-{d1}" and path.read_bytes() == b"hello ember"
    assert not os.access(path, os.W_OK) or os.geteuid() == 0  # 0444 (root ignores modes)
    assert oct(path.stat().st_mode & 0o777) == "0o444"
    assert list((s.tmp_dir).iterdir()) == []  # no temp file left behind


def test_corrupted_blob_is_reported_by_digest_not_served(tmp_path):
    s = Settings(home=tmp_path / "home")
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(4096))
    digest, _ = blobs.put_file(src, s)
    path = blobs.blob_path(digest, s)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match=digest):
        blobs.verify_blob(digest, s)
    with pytest.raises(CorruptFile):
        blobs.copy_out(digest, tmp_path / "out.bin", s)
    assert not (tmp_path / "out.bin").exists()


def test_digest_is_validated_before_it_becomes_a_path(tmp_path):
    s = Settings(home=tmp_path / "home")
    for bad in ["../../etc/passwd", "abc", "A" * 64, ""]:
        with pytest.raises(InvalidRequest):
            blobs.blob_path(bad, s)
    with pytest.raises(NotFound):
        blobs.verify_blob("0" * 64, s)
