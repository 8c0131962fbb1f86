"""Where uploads wait for their ingestion job: a local directory, or an S3 bucket every replica shares.

An upload is always received into a local folder first (every limit is checked as the bytes arrive,
`app.services.uploads`). `UploadStorage.keep` then makes the job's files readable by whichever process
runs the job, and returns, for each file, the key that process reads it back with:

- `LocalStorage` (the default, `<data_dir>/uploads`): the files stay where they were received and the
  key is their path. Only processes on this machine can run the job.
- `S3Storage` (`storage.url = s3://bucket/prefix`, `storage.endpoint_url` for MinIO or any S3-compatible
  store, credentials from the standard `AWS_*` variables, through boto3): the files are copied to
  `prefix/<job_id>/<name>` and the local copies deleted, so any worker on any machine can run it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

if TYPE_CHECKING:
    from app.settings import Settings


log = logging.getLogger(__name__)


class StorageError(OSError):
    """A stored upload cannot be written, read or deleted."""


class UploadStorage(Protocol):
    shared: bool  # readable from other machines (no job needs to stay with the replica that took it)
    staging_root: Path  # uploads are received into <staging_root>/<job_id>/ first

    async def keep(self, job_id: str, job_dir: Path, files: list[Path]) -> list[str]:
        """Make `files` (received under `job_dir`) readable by any job runner; their keys, in order."""
        ...

    def read(self, key: str) -> bytes:
        """A stored file's bytes (blocking; called from the ingestion thread); StorageError if gone."""
        ...

    async def delete_job(self, job_id: str) -> None:
        """Delete what is stored for a job (nothing stored: nothing to do)."""
        ...

    async def job_ids(self) -> dict[str, float]:
        """Job ids with stored files, and when each was last written (Unix time): the orphan sweep."""
        ...


class LocalStorage:
    """Uploads stay under a local directory; the key is the file's path."""

    shared = False

    def __init__(self, root: Path):
        self.root = self.staging_root = Path(root)

    async def keep(self, job_id: str, job_dir: Path, files: list[Path]) -> list[str]:
        return [str(path) for path in files]

    def read(self, key: str) -> bytes:
        try:
            return Path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"the stored upload cannot be read: {exc.strerror or exc}") from exc

    async def delete_job(self, job_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.root / job_id, True)

    async def job_ids(self) -> dict[str, float]:
        def _scan() -> dict[str, float]:
            if not self.root.is_dir():
                return {}
            return {p.name: p.stat().st_mtime for p in self.root.iterdir() if p.is_dir()}

        return await asyncio.to_thread(_scan)


class S3Storage:
    """Uploads in `s3://bucket/prefix/<job_id>/<name>` (boto3; one client, thread-safe)."""

    shared = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        staging_root: Path,
        endpoint_url: str | None = None,
        client: Any = None,
    ):
        import boto3

        self.staging_root = Path(staging_root)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    async def keep(self, job_id: str, job_dir: Path, files: list[Path]) -> list[str]:
        def _upload() -> list[str]:
            keys = []
            for path in files:
                key = self._key(job_id, path.name)
                self.client.upload_file(str(path), self.bucket, key)
                keys.append(f"s3://{self.bucket}/{key}")
            return keys

        try:
            keys = await asyncio.to_thread(_upload)
        except Exception as exc:
            try:  # what did arrive goes; a store that fails the upload may well fail this too
                await self.delete_job(job_id)
            except Exception:
                log.warning("could not remove the partial upload %s from s3://%s", job_id, self.bucket)
            raise StorageError(f"the upload could not be stored in s3://{self.bucket}: {exc}") from exc
        await asyncio.to_thread(shutil.rmtree, job_dir, True)
        return keys

    def read(self, key: str) -> bytes:
        parsed = urlparse(key)
        try:
            body = self.client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"]
            return bytes(body.read())
        except Exception as exc:
            raise StorageError(f"the stored upload cannot be read: {exc}") from exc

    def _objects(self, prefix: str) -> list[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        found: list[dict[str, Any]] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            found.extend(page.get("Contents", []))
        return found

    async def delete_job(self, job_id: str) -> None:
        def _delete() -> None:
            keys = [o["Key"] for o in self._objects(self._key(job_id) + "/")]
            for start in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[start : start + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

        await asyncio.to_thread(_delete)

    async def job_ids(self) -> dict[str, float]:
        def _scan() -> dict[str, float]:
            root = self._key() + "/" if self.prefix else ""
            jobs: dict[str, float] = {}
            for obj in self._objects(root):
                job_id = obj["Key"][len(root) :].split("/", 1)[0]
                written = obj["LastModified"].timestamp() if obj.get("LastModified") else time.time()
                jobs[job_id] = max(jobs.get(job_id, 0.0), written)
            return jobs

        return await asyncio.to_thread(_scan)


def build_storage(settings: Settings) -> UploadStorage:
    """`storage.url`: unset (the data dir's uploads folder), a local path, or s3://bucket/prefix."""
    url = settings.storage.url
    if not url:
        return LocalStorage(settings.uploads_dir)
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"storage.url {url!r} names no bucket (s3://bucket/prefix)")
        return S3Storage(
            parsed.netloc,
            parsed.path,
            staging_root=settings.uploads_dir,
            endpoint_url=settings.storage.endpoint_url,
        )
    if parsed.scheme in ("", "file"):
        return LocalStorage(Path(parsed.path if parsed.scheme else url))
    raise ValueError(f"storage.url {url!r}: expected a directory or s3://bucket/prefix")
