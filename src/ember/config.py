"""Settings from the environment (EMBER_*) and flags.

    EMBER_HOME=/tmp/ember ember models list

EMBER_HOME (default ~/.ember) holds `ember.db` (SQLite, WAL) and `blobs/sha256-<hex>`;
EMBER_DATABASE_URL overrides the database with any SQLAlchemy URL (replicas share one, e.g. PostgreSQL);
EMBER_BLOB_URL names a shared blob store (s3://bucket/prefix or file:///folder; docs/storage.md).
"""

import os
from dataclasses import dataclass, field
from pathlib import Path


def _default_home() -> Path:
    return Path(os.environ.get("EMBER_HOME") or Path.home() / ".ember").expanduser()


@dataclass
class Settings:
    home: Path = field(default_factory=_default_home)
    database_url: str | None = field(default_factory=lambda: os.environ.get("EMBER_DATABASE_URL"))
    threads: int = field(default_factory=lambda: int(os.environ.get("EMBER_THREADS", "0")))
    blob_url: str | None = field(default_factory=lambda: os.environ.get("EMBER_BLOB_URL") or None)

    def __post_init__(self):
        self.home = Path(self.home).expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'ember.db'}"

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def cache_dir(self) -> Path:
        """Materialized versions (plain HF folders of hard links into blobs/) live here."""
        return self.home / "materialized"

    @property
    def tmp_dir(self) -> Path:
        """Staging area on the same filesystem as blobs/, so renames into place are atomic."""
        return self.home / "tmp"


def get_settings() -> Settings:
    return Settings()
