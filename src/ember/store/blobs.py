"""Content-addressed blob store: `EMBER_HOME/blobs/sha256-<hex>`, written atomically, verified on read.

    ember models verify smollm2-135m-instruct      # re-hashes every blob of the version

A blob is written to `EMBER_HOME/tmp/` while its digest is computed, fsynced, then renamed into place, so a
killed writer leaves at most a stray temp file, never a half blob under its final name. Blobs are read-only.
"""

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from ember.config import Settings, get_settings
from ember.errors import CorruptFile, InvalidRequest, NotFound

CHUNK = 4 << 20
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def blob_path(digest: str, settings: Settings | None = None) -> Path:
    # A digest becomes a path only once it is known to be 64 hex digits (no "../" can sneak in).
    if not _DIGEST.match(digest or ""):
        raise InvalidRequest(f"invalid blob digest {digest!r}")
    return (settings or get_settings()).blobs_dir / f"sha256-{digest}"


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def put_file(src: Path, settings: Settings | None = None) -> tuple[str, int]:
    """Copy `src` into the store; returns (digest, size). Idempotent: an existing blob is kept as it is."""
    settings = settings or get_settings()
    settings.blobs_dir.mkdir(parents=True, exist_ok=True)
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=settings.tmp_dir, prefix="blob-")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        size = os.path.getsize(tmp)
        final = blob_path(digest, settings)
        if final.exists():
            os.unlink(tmp)
        else:
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
        return digest, size
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def verify_blob(digest: str, settings: Settings | None = None) -> None:
    """Raise CorruptFile (naming the digest) if the blob's bytes no longer hash to its name."""
    path = blob_path(digest, settings)
    if not path.exists():
        raise NotFound(f"blob sha256-{digest} is missing from the store")
    actual = hash_file(path)
    if actual != digest:
        raise CorruptFile(f"blob sha256-{digest} is corrupt: its content hashes to sha256-{actual}")


def copy_out(digest: str, dest: Path, settings: Settings | None = None, *, link: bool = False) -> None:
    """Write a verified copy (or hard link) of a blob to `dest`."""
    verify_blob(digest, settings)
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = blob_path(digest, settings)
    if link:
        try:
            os.link(src, dest)
            return
        except OSError:
            pass  # another filesystem: fall back to a copy
    shutil.copyfile(src, dest)


def delete(digest: str, settings: Settings | None = None) -> None:
    path = blob_path(digest, settings)
    if path.exists():
        path.unlink()


def all_digests(settings: Settings | None = None) -> set[str]:
    d = (settings or get_settings()).blobs_dir
    if not d.exists():
        return set()
    return {p.name[len("sha256-"):] for p in d.iterdir() if p.name.startswith("sha256-")}
