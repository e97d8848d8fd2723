"""Content-addressed blob store: `blobs/sha256-<hex>`, written atomically, verified on read.

    ember models verify smollm2-135m-instruct      # re-hashes every blob of the version
    EMBER_BLOB_URL=s3://bucket/ember ember serve   # replicas share blobs through a bucket (docs/storage.md)

Where blobs live is a `BlobStore`: the local folder `EMBER_HOME/blobs` (the default, `FolderStore`), or a shared
store named by EMBER_BLOB_URL: `s3://bucket/prefix` (`store/s3blobs.py`, any S3-compatible server) or
`file:///shared/folder` (a folder every replica mounts). With a shared store, `EMBER_HOME/blobs` is this
machine's cache of it: a blob is uploaded when stored, downloaded (and verified) the first time it is read
here, and read from the cache after that, so materialized folders stay hard links into a local disk.

A blob is written to `EMBER_HOME/tmp/` while its digest is computed, fsynced, then renamed into place, so a
killed writer leaves at most a stray temp file, never a half blob under its final name. Blobs are read-only.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from ember.config import Settings, get_settings
from ember.errors import CorruptFile, InvalidRequest, NotFound

CHUNK = 4 << 20
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# gc leaves shared-store blobs younger than this: another replica may be importing them right now (its
# gc_lock is a file on its own machine), and its version row is not committed yet.
GC_GRACE_S = 3600


class BlobStore(Protocol):
    """Where blobs are kept. Implementations never hash: callers verify every blob they read."""

    location: str  # for messages: a folder or s3://bucket/prefix

    def has(self, digest: str) -> bool: ...

    def put(self, src: Path, digest: str) -> None:
        """Store the bytes of `src` (already hashed to `digest`) unless the store has them."""

    def fetch(self, digest: str, dest: Path) -> None:
        """Write the stored bytes to `dest` as they are; NotFound when missing."""

    def delete(self, digest: str) -> None: ...

    def digests(self, older_than_s: float = 0) -> set[str]:
        """Every stored digest (only those stored at least `older_than_s` seconds ago)."""


def check_digest(digest: str) -> str:
    # A digest becomes a path or a key only once it is known to be 64 hex digits (no "../" can sneak in).
    if not _DIGEST.match(digest or ""):
        raise InvalidRequest(f"invalid blob digest {digest!r}")
    return digest


class FolderStore:
    """A folder of `sha256-<hex>` files: the default store, a shared mount (file://), and the local cache."""

    def __init__(self, root: Path, tmp_dir: Path):
        self.root, self.tmp_dir, self.location = Path(root), Path(tmp_dir), str(root)

    def path(self, digest: str) -> Path:
        return self.root / f"sha256-{check_digest(digest)}"

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def adopt(self, tmp: Path, digest: str) -> None:
        """Move a finished temp file (same filesystem) into place, read-only; an existing blob is kept."""
        final = self.path(digest)
        if final.exists():
            os.unlink(tmp)
        else:
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)

    def put(self, src: Path, digest: str) -> None:
        if self.has(digest):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")  # beside its final name: an atomic rename
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                shutil.copyfileobj(f, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
            self.adopt(Path(tmp), digest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def fetch(self, digest: str, dest: Path) -> None:
        try:
            shutil.copyfile(self.path(digest), dest)
        except FileNotFoundError:
            raise NotFound(f"blob sha256-{digest} is missing from {self.location}") from None

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self, older_than_s: float = 0) -> set[str]:
        if not self.root.exists():
            return set()
        cutoff = time.time() - older_than_s
        return {p.name[len("sha256-"):] for p in self.root.iterdir()
                if p.name.startswith("sha256-") and (not older_than_s or p.stat().st_mtime <= cutoff)}


_shared: dict[str, BlobStore] = {}
_shared_lock = threading.Lock()


def shared_store(settings: Settings | None = None) -> BlobStore | None:
    """The store EMBER_BLOB_URL names (None: blobs live only in EMBER_HOME/blobs)."""
    settings = settings or get_settings()
    url = settings.blob_url
    if not url:
        return None
    with _shared_lock:
        if url not in _shared:
            if url.startswith("s3://"):
                from ember.store import s3blobs

                _shared[url] = s3blobs.S3Store.from_url(url)
            elif url.startswith("file://"):
                root = Path(url[len("file://"):]).expanduser()
                _shared[url] = FolderStore(root, root)
            else:
                raise InvalidRequest(f"EMBER_BLOB_URL {url!r}: use s3://BUCKET/PREFIX or file:///FOLDER")
        return _shared[url]


def local_store(settings: Settings | None = None) -> FolderStore:
    settings = settings or get_settings()
    return FolderStore(settings.blobs_dir, settings.tmp_dir)


def blob_path(digest: str, settings: Settings | None = None) -> Path:
    """The blob's local file (with a shared store: its place in this machine's cache; `verify_blob` fills it)."""
    return local_store(settings).path(digest)


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
        shared = shared_store(settings)
        if shared is not None and not shared.has(digest):
            shared.put(Path(tmp), digest)  # shared first: a version row never names a blob only one machine has
        local_store(settings).adopt(Path(tmp), digest)
        return digest, size
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def _fetched(shared: BlobStore, digest: str, settings: Settings, prefix: str):
    """The shared store's copy of a blob in a temp file, already hashed: CorruptFile (naming the object) when
    its bytes do not hash to its name. The file is removed on exit unless the caller moved it."""
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=settings.tmp_dir, prefix=prefix)
    os.close(fd)
    try:
        shared.fetch(digest, Path(tmp))
        actual = hash_file(Path(tmp))
        if actual != digest:
            raise CorruptFile(f"blob sha256-{digest} in {shared.location} is corrupt: its content hashes to "
                              f"sha256-{actual}; it was not used (restore it from a copy, or re-import the model)")
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download(shared: BlobStore, digest: str, settings: Settings) -> None:
    """Fetch a blob into the local cache; its bytes must hash to its name before they enter the cache."""
    settings.blobs_dir.mkdir(parents=True, exist_ok=True)
    with _fetched(shared, digest, settings, "fetch-") as tmp:
        local_store(settings).adopt(tmp, digest)


def verify_blob(digest: str, settings: Settings | None = None) -> None:
    """Raise CorruptFile (naming the digest) if the blob's bytes no longer hash to its name.
    With a shared store, a blob not yet in the local cache is downloaded and verified into it."""
    settings = settings or get_settings()
    path = blob_path(digest, settings)
    if not path.exists():
        shared = shared_store(settings)
        if shared is None:
            raise NotFound(f"blob sha256-{digest} is missing from the store")
        _download(shared, digest, settings)
        return  # hashed on the way in
    actual = hash_file(path)
    if actual != digest:
        raise CorruptFile(f"blob sha256-{digest} is corrupt: its content hashes to sha256-{actual}")


def verify_shared(digest: str, settings: Settings | None = None) -> None:
    """Re-hash the shared store's copy itself (`ember models verify`); nothing to do without one."""
    settings = settings or get_settings()
    shared = shared_store(settings)
    if shared is None:
        return
    with _fetched(shared, digest, settings, "verify-"):
        pass


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
    settings = settings or get_settings()
    local_store(settings).delete(digest)
    shared = shared_store(settings)
    if shared is not None:
        shared.delete(digest)


def all_digests(settings: Settings | None = None) -> set[str]:
    """Every local blob (with a shared store: every one cached here)."""
    return local_store(settings).digests()


def delete_unused(used: set[str], settings: Settings | None = None) -> int:
    """gc: delete the blobs outside `used`: local ones, and shared ones older than GC_GRACE_S. Returns how many."""
    settings = settings or get_settings()
    local = local_store(settings)
    gone = local.digests() - used
    for d in gone:
        local.delete(d)
    shared = shared_store(settings)
    if shared is not None:
        old = shared.digests(older_than_s=GC_GRACE_S) - used
        for d in old:
            shared.delete(d)
        gone |= old
    return len(gone)
