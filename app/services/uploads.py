"""Receiving an upload: files streamed from the request body straight into the job's upload folder,
with every limit enforced as the bytes arrive.

The API turns a multipart body into part events (`PartStart`, `PartData`, `PartEnd`, see
`app/api/documents/multipart.py`); `receive_upload` consumes them and

- refuses (413, the message naming the setting) as soon as a file passes `server.max_upload_mb`, the
  request passes `limits.max_request_mb` or the files `limits.max_files`;
- refuses (415) a file whose first bytes do not match its type, before writing it;
- refuses (400) metadata that is not acceptable (`ingest.safety.check_metadata`) as soon as its part
  ends, before anything further is stored;
- writes each file through a `.part` file, fsynced and renamed, then fsyncs the folder and its parent,
  so a file whose job record survives a crash is on disk.

Memory holds one network chunk, a file's first bytes (for the type check) and a 1 MB write buffer. On
any refusal the caller deletes the folder, so nothing partial stays behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from app.services.errors import InvalidInput, PayloadTooLarge
from ingest.chunking import USER_RESERVED_KEYS
from ingest.errors import DomainError
from ingest.loaders import LoadError, sniff_kind
from ingest.safety import InvalidMetadata, check_metadata, display_filename

MB = 1024 * 1024
# How much of a file is looked at before it is written (the type check needs the first 8 KB).
SNIFF_BYTES = 8192
WRITE_BUFFER = 1 * MB
FILES_FIELD = "files"
METADATA_FIELD = "metadata"
# Form fields other than `metadata` are ignored, up to this size each.
MAX_OTHER_FIELD_BYTES = 64 * 1024


@dataclass(frozen=True)
class PartStart:
    """A multipart part begins: `filename` is None for a plain form field."""

    name: str
    filename: str | None
    content_type: str | None


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


PartEvent = PartStart | PartData | PartEnd


class UnsupportedUpload(DomainError, ValueError):
    """An upload whose type is unsupported or does not match its content (HTTP 415)."""

    kind, code = "unsupported", "unsupported_media_type"


class UploadTooLarge(PayloadTooLarge):
    """A file or request over an upload limit (HTTP 413, code `upload_too_large`)."""

    code = "upload_too_large"


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int
    max_request_bytes: int
    max_files: int
    max_metadata_keys: int
    max_metadata_bytes: int
    max_filename_chars: int

    @classmethod
    def from_settings(cls, settings: Any) -> UploadLimits:
        limits = settings.limits
        return cls(
            max_file_bytes=int(settings.server.max_upload_mb * MB),
            max_request_bytes=int(limits.max_request_mb * MB),
            max_files=limits.max_files,
            max_metadata_keys=limits.max_metadata_keys,
            max_metadata_bytes=limits.max_metadata_bytes,
            max_filename_chars=limits.max_filename_chars,
        )

    def file_too_large(self, name: str) -> UploadTooLarge:
        return UploadTooLarge(
            f"{name}: over the {self.max_file_bytes / MB:g} MB limit per file (server.max_upload_mb)"
        )

    def request_too_large(self) -> UploadTooLarge:
        return UploadTooLarge(
            f"the upload is over the {self.max_request_bytes / MB:g} MB limit per request "
            "(limits.max_request_mb)"
        )


@dataclass
class StagedFile:
    """One file written into the upload folder."""

    original_filename: str
    filename: str  # as shown: cleaned, capped
    path: Path
    size: int = 0


@dataclass
class ReceivedUpload:
    files: list[StagedFile] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def parse_metadata(raw: bytes | str | None, limits: UploadLimits) -> dict[str, Any]:
    """The `metadata` form field as a checked dict; InvalidInput (code invalid_metadata) otherwise."""
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise InvalidInput(f"metadata is not valid JSON: {message}", code="invalid_metadata") from exc
    try:
        return check_metadata(
            value,
            reserved=USER_RESERVED_KEYS,
            max_keys=limits.max_metadata_keys,
            max_bytes=limits.max_metadata_bytes,
        )
    except InvalidMetadata as exc:
        raise InvalidInput(str(exc), code="invalid_metadata") from exc


def stored_name(index: int, filename: str) -> str:
    """The file's name inside the upload folder: its position and a safe form of its name."""
    name = Path(filename.replace("\\", "/")).name
    return f"{index:04d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[:120] or 'upload'}"


class _FileWriter:
    """One file being received: the first bytes held for the type check, then buffered writes in a
    worker thread (the event loop never waits on the disk)."""

    def __init__(self, staged: StagedFile, limits: UploadLimits):
        self.staged = staged
        self.limits = limits
        self.buffer = bytearray()
        self.handle: IO[bytes] | None = None
        self.checked = False

    @property
    def part_path(self) -> Path:
        return self.staged.path.with_name(self.staged.path.name + ".part")

    async def write(self, data: bytes) -> None:
        self.staged.size += len(data)
        if self.staged.size > self.limits.max_file_bytes:
            raise self.limits.file_too_large(self.staged.filename)
        self.buffer += data
        if not self.checked and len(self.buffer) >= SNIFF_BYTES:
            self.check_type()
        if self.checked and len(self.buffer) >= WRITE_BUFFER:
            await self.flush()

    def check_type(self) -> None:
        head = bytes(self.buffer[:SNIFF_BYTES])
        try:
            kind = sniff_kind(head, self.staged.filename)
        except LoadError as exc:
            raise UnsupportedUpload(f"{self.staged.filename}: {exc}") from exc
        if kind == "jsonl":
            raise UnsupportedUpload(
                f"{self.staged.filename}: .jsonl corpora are ingested with the CLI (`ragserver ingest`)"
            )
        self.checked = True

    async def flush(self) -> None:
        data, self.buffer = bytes(self.buffer), bytearray()
        await asyncio.to_thread(self._write_sync, data)

    def _write_sync(self, data: bytes) -> None:
        if self.handle is None:
            self.handle = open(self.part_path, "wb")  # noqa: SIM115 - closed in finish/close
        self.handle.write(data)

    async def finish(self) -> None:
        if not self.checked:
            self.check_type()
        await self.flush()
        await asyncio.to_thread(self._finish_sync)

    def _finish_sync(self) -> None:
        if self.handle is None:
            self.handle = open(self.part_path, "wb")  # noqa: SIM115 - an empty file
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        self.handle = None
        os.replace(self.part_path, self.staged.path)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


async def receive_upload(
    events: AsyncIterable[PartEvent], job_dir: Path, limits: UploadLimits
) -> ReceivedUpload:
    """Receive an upload's parts into `job_dir` (created here). Raises UploadTooLarge (413),
    UnsupportedUpload (415) or InvalidInput (400) as soon as a limit is passed; the caller deletes
    `job_dir` then. Returns the files written (fsynced, the folder too) and the checked metadata."""
    await asyncio.to_thread(job_dir.mkdir, parents=True, exist_ok=True)
    received = ReceivedUpload()
    total = 0
    writer: _FileWriter | None = None
    field_name: str | None = None  # the plain field being read
    field_value = bytearray()
    in_part = False
    try:
        async for event in events:
            if isinstance(event, PartStart):
                in_part = True
                if event.filename is not None and event.name == FILES_FIELD:
                    if len(received.files) >= limits.max_files:
                        raise UploadTooLarge(
                            f"more than {limits.max_files} files in one upload (limits.max_files)"
                        )
                    name = display_filename(event.filename, limits.max_filename_chars)
                    staged = StagedFile(
                        original_filename=event.filename,
                        filename=name,
                        path=job_dir / stored_name(len(received.files), name),
                    )
                    writer = _FileWriter(staged, limits)
                else:
                    field_name, field_value = event.name, bytearray()
            elif isinstance(event, PartData):
                total += len(event.data)
                if total > limits.max_request_bytes:
                    raise limits.request_too_large()
                if writer is not None:
                    await writer.write(event.data)
                elif field_name is not None:
                    field_value += event.data
                    cap = (
                        2 * limits.max_metadata_bytes + 1024
                        if field_name == METADATA_FIELD
                        else MAX_OTHER_FIELD_BYTES
                    )
                    if len(field_value) > cap:
                        if field_name == METADATA_FIELD:
                            raise InvalidInput(
                                f"metadata is over {limits.max_metadata_bytes} bytes "
                                "(limits.max_metadata_bytes)",
                                code="invalid_metadata",
                            )
                        raise InvalidInput(f"form field {field_name!r} is over {cap} bytes")
            else:  # PartEnd
                in_part = False
                if writer is not None:
                    await writer.finish()
                    received.files.append(writer.staged)
                    writer = None
                elif field_name == METADATA_FIELD:
                    received.metadata = parse_metadata(bytes(field_value), limits)
                field_name = None
        if in_part:
            raise InvalidInput("the multipart body ended in the middle of a part")
        if not received.files:
            raise InvalidInput(f"upload at least one file in the {FILES_FIELD!r} field", code="no_files")
        await asyncio.to_thread(_fsync_dirs, job_dir, job_dir.parent)
        return received
    finally:
        if writer is not None:
            writer.close()


def _fsync_dirs(*dirs: Path) -> None:
    """fsync directories, so the names of the files just written in them survive a crash."""
    for path in dirs:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
