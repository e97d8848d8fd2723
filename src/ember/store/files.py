"""Uploaded files (`/v1/files`): rows naming a blob of the content-addressed store, with owner and purpose.

    curl -F purpose=fine-tune -F file=@train.jsonl localhost:8000/v1/files
    ember jobs list                     # jobs name their input files by these ids

The bytes live in `blobs/sha256-<hex>` like model files (two uploads of one file share a blob); a row adds
the id clients use (`file-<hex>`), the filename, purpose, size and owner (an API key id; `local` when keys
are off). A key sees only its own files. Deleting a row leaves the blob to `ember models gc`, which keeps
every blob a row still names.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import JSON, String, select
from sqlalchemy.orm import Mapped, mapped_column

from ember.config import Settings, get_settings
from ember.errors import NotFound
from ember.store import blobs, db

LOCAL_OWNER = "local"


class UploadedFile(db.Base):
    __tablename__ = "uploaded_files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(256))
    purpose: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(db.Big)
    meta: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=db.utcnow)


def db_aware(d: datetime) -> datetime:
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d


def to_dict(f: UploadedFile) -> dict:
    """OpenAI's file object."""
    return {"id": f.id, "object": "file", "bytes": f.size, "created_at": int(db_aware(f.created_at).timestamp()),
            "filename": f.filename, "purpose": f.purpose, "status": "processed", "expires_at": None,
            "status_details": None, "sha256": f.digest, "metadata": f.meta or {}}


def add(src: Path, *, filename: str, purpose: str, owner: str = LOCAL_OWNER, meta: dict | None = None,
        settings: Settings | None = None) -> dict:
    """Store `src` as a blob and record it; returns the file object."""
    from ember.store.registry import gc_lock

    settings = settings or get_settings()
    with gc_lock(settings, exclusive=False):  # gc must not take the blob before the row exists
        digest, size = blobs.put_file(src, settings)
        with db.session(settings) as s:
            row = UploadedFile(id="file-" + secrets.token_hex(12), owner=owner, filename=filename[:256],
                               purpose=purpose, digest=digest, size=size, meta=meta or {})
            s.add(row)
            s.flush()
            return to_dict(row)


def _row(s, file_id: str, owner: str | None) -> UploadedFile:
    row = s.get(UploadedFile, file_id)
    if row is None or (owner is not None and row.owner != owner):
        raise NotFound(f"no file with id {file_id!r}", param="file_id")
    return row


def get(file_id: str, owner: str | None = None, settings: Settings | None = None) -> dict:
    """The file object; `owner=None` sees every owner's files (admins, workers)."""
    with db.session(settings) as s:
        return to_dict(_row(s, file_id, owner))


def list_files(owner: str | None = None, purpose: str | None = None, limit: int = 10000,
               settings: Settings | None = None) -> list[dict]:
    with db.session(settings) as s:
        q = select(UploadedFile).order_by(UploadedFile.created_at.desc(), UploadedFile.id)
        if owner is not None:
            q = q.where(UploadedFile.owner == owner)
        if purpose:
            q = q.where(UploadedFile.purpose == purpose)
        return [to_dict(f) for f in s.scalars(q.limit(limit))]


def path(file_id: str, owner: str | None = None, settings: Settings | None = None) -> Path:
    """The verified blob holding the file's bytes (read-only)."""
    settings = settings or get_settings()
    f = get(file_id, owner, settings)
    blobs.verify_blob(f["sha256"], settings)
    return blobs.blob_path(f["sha256"], settings)


def copy_to(file_id: str, dest: Path, owner: str | None = None, settings: Settings | None = None) -> Path:
    f = get(file_id, owner, settings)
    blobs.copy_out(f["sha256"], dest, settings)
    return dest


def delete(file_id: str, owner: str | None = None, settings: Settings | None = None) -> dict:
    with db.session(settings) as s:
        s.delete(_row(s, file_id, owner))
    return {"id": file_id, "object": "file", "deleted": True}


def digests(s) -> set[str]:
    """Blobs still named by an uploaded file (registry.gc keeps them)."""
    return set(s.scalars(select(UploadedFile.digest).distinct()))
