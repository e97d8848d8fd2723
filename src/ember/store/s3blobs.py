"""The shared blob store in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...): `PREFIX/sha256-<hex>`.

    pip install 'ember[s3]'
    EMBER_BLOB_URL=s3://models/ember EMBER_S3_ENDPOINT_URL=http://minio:9000 ember serve

Credentials and region come the way boto3 finds them (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_REGION, ~/.aws, an instance role). EMBER_S3_ENDPOINT_URL (or boto3's own AWS_ENDPOINT_URL) points at a
server other than AWS. Objects are written once and never changed (their key is their digest); store/blobs.py
hashes every object it downloads before anything uses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ember.errors import InvalidRequest, NotFound, Unsupported
from ember.store.blobs import check_digest


def _client(endpoint_url: str | None):
    try:
        import boto3
    except ImportError:
        raise Unsupported("EMBER_BLOB_URL=s3://... needs boto3: pip install 'ember[s3]'") from None
    return boto3.client("s3", endpoint_url=endpoint_url)


def _missing(err) -> bool:
    return err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


@dataclass
class S3Store:
    bucket: str
    prefix: str  # "" or "some/prefix" (no slashes at either end)
    endpoint_url: str | None = None
    client: object = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise InvalidRequest(f"EMBER_BLOB_URL {url!r}: use s3://BUCKET or s3://BUCKET/PREFIX")
        endpoint = os.environ.get("EMBER_S3_ENDPOINT_URL") or None
        return cls(bucket, prefix.strip("/"), endpoint, _client(endpoint))

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, digest: str) -> str:
        name = f"sha256-{check_digest(digest)}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def has(self, digest: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(digest))
            return True
        except ClientError as e:
            if _missing(e):
                return False
            raise

    def put(self, src: Path, digest: str) -> None:
        # upload_file switches to a multipart upload for large files; an object appears only when complete.
        self.client.upload_file(str(src), self.bucket, self.key(digest))

    def fetch(self, digest: str, dest: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(self.bucket, self.key(digest), str(dest))
        except ClientError as e:
            if _missing(e):
                raise NotFound(f"blob sha256-{digest} is missing from {self.location}") from None
            raise

    def delete(self, digest: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(digest))

    def digests(self, older_than_s: float = 0) -> set[str]:
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        start = self.key("0" * 64)[: -64]  # PREFIX/sha256-
        out = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            for obj in page.get("Contents", []):
                digest = obj["Key"][len(start):]
                if len(digest) == 64 and (not older_than_s or obj["LastModified"] <= cutoff):
                    out.add(digest)
        return out
