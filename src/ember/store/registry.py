"""The model registry: immutable numbered versions over content-addressed blobs, aliases with history, tags,
lineage, materialization, export and verification.

    ember models list | show REF | alias NAME@ALIAS VERSION | history NAME@ALIAS | tag REF k=v | rm REF
    ember models export REF DIR | verify [REF]

References: `name` (the version behind alias `latest`), `name:3` (version 3), `name@production` (an alias).
Registration is atomic: blobs are written first (each atomically), then one database transaction makes the
version visible with its files and moves `latest`. A process killed before that commit leaves no version.
"""

import fcntl
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select

from ember.config import Settings, get_settings
from ember.errors import CorruptFile, InvalidRequest, NotFound
from ember.store import blobs, db, folder as hf_folder

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_REF = re.compile(rf"^(?P<name>{_NAME})(?::(?P<number>[0-9]{{1,9}})|@(?P<alias>{_NAME}))?$")
KINDS = ("model", "tokenizer", "adapter", "dataset")


@dataclass
class VersionInfo:
    name: str
    number: int
    kind: str
    metadata: dict
    files: dict[str, str]  # relative path -> sha256
    sizes: dict[str, int]
    aliases: list[str]
    tags: dict[str, str]
    parent: str | None
    created_at: datetime
    lineage: list[str] = field(default_factory=list)  # parent chain, nearest first

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.number}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ref"] = self.ref
        d["created_at"] = self.created_at.isoformat()
        return d


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    m = _REF.match(ref or "")
    if not m:
        raise InvalidRequest(f"invalid model reference {ref!r}: use NAME, NAME:VERSION or NAME@ALIAS")
    number = m["number"]
    return m["name"], (int(number) if number else None), m["alias"]


def _tag_value(value) -> str:
    # The column holds 1024 characters (PostgreSQL enforces it) and PostgreSQL refuses NUL in text.
    text = str(value)
    if len(text) > 1024 or "\x00" in text:
        raise InvalidRequest("a tag value must be at most 1024 characters, without NUL", param="tags")
    return text


def check_name(name: str, what: str = "name") -> str:
    if not re.fullmatch(_NAME, name or ""):
        raise InvalidRequest(f"invalid {what} {name!r}: letters, digits, '.', '_' and '-' only")
    return name


def _actor() -> str:
    # The API key id when a server request does it (audit.acting_as), else cli:<OS user>.
    from ember.store import audit

    return audit.current_actor()


@contextmanager
def gc_lock(settings: Settings, exclusive: bool):
    """Imports hold it shared from their first blob to their commit; garbage collection needs it alone."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with open(settings.home / ".gc.lock", "a") as f:
        if exclusive:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
        else:
            fcntl.flock(f, fcntl.LOCK_SH)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _info(s, v: db.Version) -> VersionInfo:
    aliases = sorted(a.alias for a in v.model.aliases if a.number == v.number)
    lineage, parent, seen = [], v.parent, set()
    while parent and parent not in seen and len(lineage) < 32:
        seen.add(parent)
        lineage.append(parent)
        pv = _lookup(s, parent, missing_ok=True)
        parent = pv.parent if pv is not None else None
    return VersionInfo(
        name=v.model.name, number=v.number, kind=v.kind, metadata=dict(v.meta or {}),
        files={f.path: f.digest for f in sorted(v.files, key=lambda f: f.path)},
        sizes={f.path: f.size for f in v.files}, aliases=aliases,
        tags={t.key: t.value for t in sorted(v.tags, key=lambda t: t.key)}, parent=v.parent,
        created_at=_aware(v.created_at), lineage=lineage)


def _aware(t: datetime) -> datetime:
    # SQLite drops the zone on the way back; every timestamp Ember writes is UTC.
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _lookup(s, ref: str, missing_ok: bool = False) -> db.Version | None:
    name, number, alias = parse_ref(ref)
    model = s.scalar(select(db.Model).where(db.Model.name == name))
    if model is None:
        if missing_ok:
            return None
        raise NotFound(f"model {name!r} not found (see `ember models list`)")
    if number is None:
        alias = alias or "latest"
        row = s.get(db.Alias, (model.id, alias))
        if row is None:
            if missing_ok:
                return None
            raise NotFound(f"alias {name}@{alias} not found")
        number = row.number
    v = s.scalar(select(db.Version).where(db.Version.model_id == model.id, db.Version.number == number))
    if v is None and not missing_ok:
        raise NotFound(f"version {name}:{number} not found")
    return v


def resolve(ref: str, settings: Settings | None = None) -> VersionInfo:
    with db.session(settings) as s:
        return _info(s, _lookup(s, ref))


def list_versions(name: str | None = None, settings: Settings | None = None) -> list[VersionInfo]:
    with db.session(settings) as s:
        q = select(db.Version).join(db.Model).order_by(db.Model.name, db.Version.number)
        if name:
            q = q.where(db.Model.name == check_name(name))
        return [_info(s, v) for v in s.scalars(q)]


def _move_alias(s, model: db.Model, alias: str, number: int, *, action: str = "move", detail=None) -> None:
    db.lock_row(s, db.Model, db.Model.id == model.id)  # one alias move per model at a time (PostgreSQL)
    row = s.get(db.Alias, (model.id, alias))
    old = row.number if row else None
    if row is None:
        s.add(db.Alias(model_id=model.id, alias=alias, number=number))
    else:
        row.number = number
    s.add(db.AliasEvent(model_name=model.name, alias=alias, from_number=old, to_number=number, action=action,
                        actor=_actor(), detail=detail or {}))
    if action != "register":  # an import moves `latest`; that is recorded as the import itself
        from ember.store import audit

        audit.add(s, f"alias.{action}", f"{model.name}@{alias}", before={"version": old}, after={"version": number},
                  detail=detail)


def register_folder(folder: Path, name: str, *, kind: str = "model", metadata: dict | None = None,
                    parent: str | None = None, tags: dict | None = None, settings: Settings | None = None,
                    dedupe_source: str | None = None, require_weights: bool | None = None) -> VersionInfo:
    """Store every safe file of `folder` as a new version `name:N` and move `latest` to it.

    dedupe_source: a source digest; if a version of `name` already has it, that version is returned instead
    (this is what makes `ember models pull` a no-op the second time, even for two concurrent pulls).
    """
    settings = settings or get_settings()
    check_name(name)
    if kind not in KINDS:
        raise InvalidRequest(f"unknown version kind {kind!r}; one of {', '.join(KINDS)}")
    folder = Path(folder)
    if require_weights is None:
        require_weights = kind == "model"
    files = hf_folder.safe_files(folder, require_weights=require_weights)
    tags = {check_name(k, "tag key"): _tag_value(val) for k, val in (tags or {}).items()}
    meta = {**hf_folder.describe(folder), **(metadata or {})}
    db.connect(settings)
    if parent:
        parent = resolve(parent, settings).ref
    with gc_lock(settings, exclusive=False):
        stored = {str(rel): blobs.put_file(folder / rel, settings) for rel in files}
        with db.session(settings) as s:
            # The model row, created if new, locked until commit: concurrent imports of one name take numbers
            # one after the other (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises them).
            db.insert_ignore(s, db.Model, name=name, created_at=db.utcnow())
            model = db.lock_row(s, db.Model, db.Model.name == name)
            if dedupe_source:
                for v in model.versions:
                    if (v.meta or {}).get("source", {}).get("digest") == dedupe_source:
                        return _info(s, v)
            number = (s.scalar(select(func.max(db.Version.number)).where(db.Version.model_id == model.id)) or 0) + 1
            v = db.Version(model=model, number=number, kind=kind, meta=meta, parent=parent)
            v.files = [db.File(path=p, digest=d, size=n) for p, (d, n) in stored.items()]
            v.tags = [db.Tag(key=k, value=val) for k, val in tags.items()]
            s.add(v)
            s.flush()
            _move_alias(s, model, "latest", number, action="register")
            from ember.store import audit

            audit.add(s, "model.import", f"{name}:{number}", after={"kind": kind, "files": len(stored),
                                                                   "parent": parent})
            s.flush()
            s.refresh(model)
            return _info(s, v)


def set_alias(name: str, alias: str, target: str | int, *, action: str = "move", detail: dict | None = None,
              settings: Settings | None = None) -> VersionInfo:
    """Point NAME@ALIAS at a version (a number or any reference to a version of NAME); the move is recorded."""
    check_name(alias, "alias")
    with db.session(settings) as s:
        ref = f"{name}:{target}" if isinstance(target, int) or str(target).isdigit() else str(target)
        v = _lookup(s, ref)
        if v.model.name != name:
            raise InvalidRequest(f"{ref} is not a version of {name}")
        _move_alias(s, v.model, alias, v.number, action=action, detail=detail)
        s.flush()
        s.refresh(v.model)
        return _info(s, v)


def record_alias_event(name: str, alias: str, *, from_number: int | None, to_number: int | None, action: str,
                       detail: dict | None = None, settings: Settings | None = None) -> None:
    """Append a decision that did not move the alias (a refused promotion) to its history."""
    with db.session(settings) as s:
        s.add(db.AliasEvent(model_name=name, alias=alias, from_number=from_number, to_number=to_number,
                            action=action, actor=_actor(), detail=detail or {}))
        from ember.store import audit

        audit.add(s, f"alias.{action}", f"{name}@{alias}", before={"version": from_number},
                  after={"version": to_number}, detail=detail)


def alias_history(name: str, alias: str, settings: Settings | None = None) -> list[dict]:
    with db.session(settings) as s:
        if s.scalar(select(db.Model).where(db.Model.name == name)) is None:
            raise NotFound(f"model {name!r} not found")
        rows = s.scalars(select(db.AliasEvent).where(db.AliasEvent.model_name == name, db.AliasEvent.alias == alias)
                         .order_by(db.AliasEvent.id))
        return [{"alias": f"{name}@{alias}", "from": r.from_number, "to": r.to_number, "action": r.action,
                 "actor": r.actor, "detail": r.detail, "at": _aware(r.created_at).isoformat()} for r in rows]


def tag(ref: str, tags: dict[str, str], settings: Settings | None = None) -> VersionInfo:
    with db.session(settings) as s:
        v = _lookup(s, ref)
        for k, val in tags.items():
            check_name(k, "tag key")
            row = s.get(db.Tag, (v.id, k))
            if row is None:
                v.tags.append(db.Tag(key=k, value=_tag_value(val)))
            else:
                row.value = _tag_value(val)
        s.flush()
        return _info(s, v)


def delete(ref: str, settings: Settings | None = None) -> VersionInfo:
    """Delete one version; aliases on it go (recorded), `latest` falls back to the newest remaining version."""
    settings = settings or get_settings()
    with db.session(settings) as s:
        v = _lookup(s, ref)
        info = _info(s, v)
        model = v.model
        for a in list(model.aliases):
            if a.number == v.number:
                s.add(db.AliasEvent(model_name=model.name, alias=a.alias, from_number=v.number, to_number=None,
                                    action="removed", actor=_actor(), detail={"reason": f"{info.ref} deleted"}))
                model.aliases.remove(a)
        from ember.store import audit

        audit.add(s, "model.delete", info.ref, before={"aliases": info.aliases, "kind": info.kind})
        s.delete(v)
        s.flush()
        rest = s.scalar(select(func.max(db.Version.number)).where(db.Version.model_id == model.id))
        if rest is None:
            s.delete(model)
        elif info.aliases and "latest" in info.aliases:
            _move_alias(s, model, "latest", rest, action="register")
    shutil.rmtree(settings.cache_dir / _cache_key(info), ignore_errors=True)
    gc(settings)
    return info


def gc(settings: Settings | None = None) -> int:
    """Delete blobs no version references; returns how many. Skipped while an import on this machine is writing
    blobs; in a shared blob store only blobs older than `blobs.GC_GRACE_S` go (other machines' imports)."""
    from ember.store import files as uploads

    settings = settings or get_settings()
    with gc_lock(settings, exclusive=True) as got:
        if not got:
            return 0
        with db.session(settings) as s:
            used = set(s.scalars(select(db.File.digest).distinct()))
            used |= {d for d in s.scalars(select(db.EvalRun.outputs_digest)) if d}
            used |= uploads.digests(s)
        return blobs.delete_unused(used, settings)


def _cache_key(info: VersionInfo) -> str:
    import hashlib

    manifest = "\n".join(f"{p} {d}" for p, d in sorted(info.files.items()))
    return f"{info.name}-{info.number}-{hashlib.sha256(manifest.encode()).hexdigest()[:12]}"


def materialize(ref: str | VersionInfo, settings: Settings | None = None) -> Path:
    """A plain HF folder of the version (hard links to verified blobs). Read-only: never write into it.

    Safe when several processes (torchrun ranks, replicas) materialize the same version at once: each builds its
    own temporary folder and renames it into place; a complete folder already there is never removed, because
    another process may be reading it."""
    settings = settings or get_settings()
    info = ref if isinstance(ref, VersionInfo) else resolve(ref, settings)
    final = settings.cache_dir / _cache_key(info)
    if _complete(final, info):
        for d in set(info.files.values()):
            blobs.verify_blob(d, settings)
        return final
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=settings.cache_dir, prefix=".tmp-"))
    try:
        for path, digest in info.files.items():
            blobs.copy_out(digest, tmp / path, settings, link=True)
        try:
            os.replace(tmp, final)  # atomic; refused when `final` is a non-empty folder
        except OSError:
            if _complete(final, info):  # another process installed it first: use theirs
                return final
            # A stale, incomplete folder (files removed by hand): move it aside atomically, then install ours.
            stale = Path(tempfile.mkdtemp(dir=settings.cache_dir, prefix=".stale-"))
            os.replace(final, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _complete(folder: Path, info: VersionInfo) -> bool:
    return folder.is_dir() and all((folder / p).exists() for p in info.files)


def export(ref: str, dest: Path, settings: Settings | None = None) -> Path:
    """Write a plain, self-contained Hugging Face folder (real copies, verified) to `dest`, atomically."""
    settings = settings or get_settings()
    info = resolve(ref, settings)
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidRequest(f"export destination {dest} exists and is not an empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        for path, digest in info.files.items():
            blobs.copy_out(digest, tmp / path, settings)
            os.chmod(tmp / path, 0o644)
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def verify(ref: str | None = None, settings: Settings | None = None) -> list[dict]:
    """Re-hash every blob of one version (or of all); returns one problem per bad file, [] when clean."""
    settings = settings or get_settings()
    versions = [resolve(ref, settings)] if ref else list_versions(settings=settings)
    checked: dict[str, str | None] = {}
    problems = []
    for info in versions:
        for path, digest in info.files.items():
            if digest not in checked:
                try:
                    blobs.verify_blob(digest, settings)
                    blobs.verify_shared(digest, settings)  # the shared store's copy too, when there is one
                    checked[digest] = None
                except (CorruptFile, NotFound) as e:
                    checked[digest] = e.message
            if checked[digest]:
                problems.append({"ref": info.ref, "path": path, "digest": digest, "error": checked[digest]})
    return problems
