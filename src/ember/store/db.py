"""Registry database: SQLAlchemy 2 schema and sessions. SQLite in WAL mode by default; PostgreSQL for replicas.

    EMBER_HOME=/tmp/e ember models list        # creates /tmp/e/ember.db and migrates it to the newest schema
    EMBER_DATABASE_URL=postgresql+psycopg://ember@db/ember ember serve     # pip install 'ember[postgres]'

The schema is versioned with Alembic (`store/migrations/`); `connect()` upgrades an older database in place,
under a file lock on SQLite and a PostgreSQL advisory lock on PostgreSQL, so replicas starting together
migrate once. Several processes may use one database at once (CLI, server replicas, training ranks): SQLite
writers are serialised with BEGIN IMMEDIATE plus a busy timeout, so a second writer waits instead of failing
or corrupting; on PostgreSQL the writes that race (first insert of a counter row, a model's next version
number) are upserts or take a row lock (`insert_ignore`, `upsert_add`, `lock_row`).
"""

import fcntl
import json
import math
import os
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from ember.config import Settings, get_settings


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Sizes and token counts pass 2**31 (a 3 GB weights file, a year of tokens): 64-bit on PostgreSQL
# (migration 0018); SQLite's INTEGER is 64-bit already.
Big = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, datetime: DateTime(timezone=True)}


class Model(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    versions: Mapped[list["Version"]] = relationship(back_populates="model", cascade="all, delete-orphan")
    aliases: Mapped[list["Alias"]] = relationship(back_populates="model", cascade="all, delete-orphan")


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32), default="model")
    meta: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    parent: Mapped[str | None] = mapped_column(String(160), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    model: Mapped[Model] = relationship(back_populates="versions")
    files: Mapped[list["File"]] = relationship(back_populates="version", cascade="all, delete-orphan")
    tags: Mapped[list["Tag"]] = relationship(back_populates="version", cascade="all, delete-orphan")


class File(Base):
    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("version_id", "path"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(512))
    digest: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(Big)
    version: Mapped[Version] = relationship(back_populates="files")


class Tag(Base):
    __tablename__ = "tags"
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(1024))
    version: Mapped[Version] = relationship(back_populates="tags")


class Alias(Base):
    __tablename__ = "aliases"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(128), primary_key=True)
    number: Mapped[int] = mapped_column(Integer)
    model: Mapped[Model] = relationship(back_populates="aliases")


class AliasEvent(Base):
    """Append-only history of alias moves (and refused promotions); never updated or deleted with a version."""

    __tablename__ = "alias_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    alias: Mapped[str] = mapped_column(String(128))
    from_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    action: Mapped[str] = mapped_column(String(32), default="move")
    actor: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    scopes: Mapped[str] = mapped_column(String(256), default="inference")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # Limits (None: unlimited); see store/keys.py and server/limits.py.
    rpm: Mapped[int | None] = mapped_column(Big, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Big, nullable=True)
    max_parallel: Mapped[int | None] = mapped_column(Big, nullable=True)
    budget_tokens: Mapped[int | None] = mapped_column(Big, nullable=True)
    budget_period: Mapped[str | None] = mapped_column(String(16), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    models: Mapped[list | None] = mapped_column(JSON, nullable=True)


class EvalRun(Base):
    __tablename__ = "eval_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    task: Mapped[str] = mapped_column(String(256))
    task_digest: Mapped[str] = mapped_column(String(64))
    data_digest: Mapped[str] = mapped_column(String(64))
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    outputs_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsageDaily(Base):
    """Tokens and requests per key, model and UTC day (store/usage.py); key_id "-" when keys are off."""

    __tablename__ = "usage_daily"
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    requests: Mapped[int] = mapped_column(Big, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Big, default=0)
    completion_tokens: Mapped[int] = mapped_column(Big, default=0)


class RateWindow(Base):
    """Requests and tokens of one key in one minute (rpm/tpm), shared by every replica on this database."""

    __tablename__ = "rate_windows"
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    minute: Mapped[int] = mapped_column(Integer, primary_key=True)  # unix time // 60
    requests: Mapped[int] = mapped_column(Big, default=0)
    tokens: Mapped[int] = mapped_column(Big, default=0)


class AuditEntry(Base):
    """Append-only: who did what, before and after (store/audit.py)."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(160))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256), default="")
    before: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


_engines: dict[str, tuple] = {}
_lock = threading.Lock()


def _finite(obj):
    """JSON with NaN/Infinity replaced by null: PostgreSQL's json type rejects them (a diverged loss, say)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _pg_json(obj) -> str:
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(obj))


def _make_engine(url: str):
    for plain in ("postgresql://", "postgres://"):  # libpq-style URLs mean psycopg 3 here (not psycopg2)
        if url.startswith(plain):
            url = "postgresql+psycopg://" + url[len(plain):]
    if url.startswith("postgresql"):
        # Timestamps come back in UTC whatever the server's TimeZone, as they do from SQLite.
        return create_engine(url, pool_pre_ping=True, json_serializer=_pg_json,
                             connect_args={"options": "-c timezone=UTC"})
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # let SQLAlchemy (below) issue BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # IMMEDIATE takes the write lock up front: two writers queue instead of deadlocking on upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


MIGRATE_LOCK_KEY = 0x656D626572  # "ember": the advisory lock id migrations hold on PostgreSQL


def _migrate(engine, settings: Settings) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection_engine"] = engine
    settings.home.mkdir(parents=True, exist_ok=True)
    if engine.dialect.name == "postgresql":
        # Replicas on other machines share no file: a session-level advisory lock serialises them instead.
        # The second one waits, then finds the schema at head and does nothing.
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATE_LOCK_KEY})
            try:
                command.upgrade(cfg, "head")
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATE_LOCK_KEY})
        return
    # Two processes starting on a new home must not both create tables: serialise migrations on a file lock.
    with open(settings.home / ".migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        command.upgrade(cfg, "head")


def _restrict(url: str) -> None:
    """The database holds key hashes, usage and the audit log: readable by its owner only (0600)."""
    if not url.startswith("sqlite:///"):
        return
    path = Path(url[len("sqlite:///"):])
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if p.exists() and p.stat().st_uid == os.getuid():
                p.chmod(0o600)
        except OSError:
            pass


def connect(settings: Settings | None = None) -> sessionmaker:
    """Session factory for this settings' database, created and migrated on first use in this process."""
    settings = settings or get_settings()
    url = settings.database_url
    with _lock:
        if url not in _engines:
            settings.home.mkdir(parents=True, exist_ok=True)
            engine = _make_engine(url)
            _migrate(engine, settings)
            _restrict(url)
            _engines[url] = (engine, sessionmaker(engine, expire_on_commit=False))
        return _engines[url][1]


@contextmanager
def session(settings: Settings | None = None):
    """One transaction: committed on success, rolled back on any error (nothing half-written)."""
    with connect(settings)() as s:
        with s.begin():
            yield s


def dispose_all() -> None:
    """Forget cached engines (tests that delete their EMBER_HOME call this)."""
    with _lock:
        for engine, _ in _engines.values():
            engine.dispose()
        _engines.clear()


def _dialect_insert(s, model):
    if s.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(model)


def insert_ignore(s, model, **values) -> None:
    """INSERT that does nothing when the primary key or a unique column already exists (both dialects)."""
    s.execute(_dialect_insert(s, model).values(**values).on_conflict_do_nothing())


def upsert_add(s, model, keys: dict, **inc):
    """Add `inc` to a counter row, creating it at `inc` if missing: one atomic statement, no lost first insert
    when two replicas count the same key at once. Returns the row's counters after the addition (RETURNING:
    PostgreSQL, SQLite >= 3.35), in the order of `inc`."""
    ins = _dialect_insert(s, model).values(**keys, **inc)
    q = ins.on_conflict_do_update(index_elements=list(keys),
                                  set_={k: getattr(model, k) + ins.excluded[k] for k in inc})
    return s.execute(q.returning(*(getattr(model, k) for k in inc))).one()


def lock_row(s, model, *where):
    """SELECT ... FOR UPDATE on PostgreSQL (writers of the row queue until we commit); SQLite's BEGIN IMMEDIATE
    already holds the database's write lock, and SQLAlchemy renders no FOR UPDATE there."""
    return s.scalar(select(model).where(*where).with_for_update())
