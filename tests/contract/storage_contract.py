"""What every `UploadStorage` must do, as a mixin of tests (haystack's document-store test style).

A test class inherits `UploadStorageContract` and provides `make_storage()`, a fixture returning a
factory whose storages all share one backend (same directory, same bucket and prefix), empty when the
test starts. Files are staged the way an upload is received: under `<staging_root>/<job_id>/`, named by
`stored_name` (position and a safe form of the client's name).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import pytest

from app.services.uploads import stored_name
from app.storage import StorageError, UploadStorage

StorageFactory = Callable[[], UploadStorage]

# Client file names as uploads arrive: accents, spaces, path parts (both separators), dots, no extension.
ODD_NAMES = [
    "résumé (final) v2.pdf",
    "../../etc/passwd",
    "C:\\Users\\zoë\\report.docx",
    "漢字のファイル.txt",
    "...",
    ".hidden",
    "a b+c=d&e?f#g%h;i.txt",
    "-",
    "x" * 300 + ".md",
    "README",
]
# Over boto3's 8 MiB multipart threshold: the upload is streamed in parts, not sent in one request.
LARGE_BYTES = 12 * 1024 * 1024 + 7


def stage(storage: UploadStorage, job_id: str, files: list[tuple[str, bytes]]) -> tuple[Path, list[Path]]:
    """Write `files` (client name, bytes) as an upload received for `job_id`: its folder and paths."""
    job_dir = storage.staging_root / job_id
    job_dir.mkdir(parents=True)
    paths = []
    for index, (name, data) in enumerate(files):
        path = job_dir / stored_name(index, name)
        path.write_bytes(data)
        paths.append(path)
    return job_dir, paths


async def keep(
    storage: UploadStorage, files: list[tuple[str, bytes]], job_id: str | None = None
) -> list[str]:
    """Stage `files` for a job (a new id unless given) and keep them: their keys."""
    job_id = job_id or uuid4().hex
    job_dir, paths = stage(storage, job_id, files)
    return await storage.keep(job_id, job_dir, paths)


def read_all(storage: UploadStorage, keys: list[str]) -> list[bytes]:
    return [storage.read(key) for key in keys]


class UploadStorageContract:
    @pytest.fixture
    def storage(self, make_storage: StorageFactory) -> UploadStorage:
        return make_storage()

    def test_declares_shared_and_a_staging_root(self, storage: UploadStorage) -> None:
        assert isinstance(storage.shared, bool)
        assert isinstance(storage.staging_root, Path)

    async def test_keep_then_read_round_trips_in_order(self, storage: UploadStorage) -> None:
        job_id = uuid4().hex
        files = [("b.txt", b"second in name, first in the upload"), ("a.txt", b"\x00\xff binary \r\n")]
        job_dir, paths = stage(storage, job_id, files)
        keys = await storage.keep(job_id, job_dir, paths)
        assert all(isinstance(key, str) for key in keys) and len(set(keys)) == 2
        assert read_all(storage, keys) == [data for _, data in files]
        # The keys are in the order the files are given, not in the order of their names.
        job_id = uuid4().hex
        job_dir, paths = stage(storage, job_id, files)
        keys = await storage.keep(job_id, job_dir, list(reversed(paths)))
        assert read_all(storage, keys) == [data for _, data in reversed(files)]

    async def test_names_uploads_use_round_trip(self, storage: UploadStorage) -> None:
        files = [(name, f"{i}: {name}".encode()) for i, name in enumerate(ODD_NAMES)]
        keys = await keep(storage, files)
        assert len(set(keys)) == len(ODD_NAMES)
        assert read_all(storage, keys) == [data for _, data in files]

    async def test_large_and_empty_files_round_trip(self, storage: UploadStorage) -> None:
        large = os.urandom(LARGE_BYTES)
        keys = await keep(storage, [("big.pdf", large), ("empty.txt", b"")])
        assert read_all(storage, keys) == [large, b""]

    async def test_keeping_no_files_gives_no_keys(self, storage: UploadStorage) -> None:
        job_id = uuid4().hex
        job_dir = storage.staging_root / job_id
        job_dir.mkdir(parents=True)
        assert await storage.keep(job_id, job_dir, []) == []

    async def test_an_empty_storage_has_no_job_ids(self, storage: UploadStorage) -> None:
        assert await storage.job_ids() == {}

    async def test_job_ids_with_their_write_times(self, storage: UploadStorage) -> None:
        before = time.time()
        first, second = uuid4().hex, uuid4().hex
        await keep(storage, [("a.txt", b"a")], first)
        await keep(storage, [("b.txt", b"b"), ("c.txt", b"c")], second)
        after = time.time()
        jobs = await storage.job_ids()
        assert set(jobs) == {first, second}
        # Some backends keep whole seconds: a write may read up to a second before it happened.
        assert all(before - 2 <= written <= after + 2 for written in jobs.values()), (before, jobs)
        assert jobs[second] >= jobs[first] - 1

    async def test_delete_job_removes_that_job_only(self, storage: UploadStorage) -> None:
        job_id = uuid4().hex
        # Ids that are prefixes of each other: a job is its folder, not every name starting like it.
        deleted = await keep(storage, [("a.txt", b"gone")], job_id)
        longer = await keep(storage, [("a.txt", b"longer id")], job_id + "0")
        other = await keep(storage, [("a.txt", b"other")])
        await storage.delete_job(job_id)
        with pytest.raises(StorageError):
            storage.read(deleted[0])
        assert read_all(storage, longer + other) == [b"longer id", b"other"]
        assert job_id not in await storage.job_ids()
        assert len(await storage.job_ids()) == 2

    async def test_delete_job_is_idempotent(self, storage: UploadStorage) -> None:
        job_id = uuid4().hex
        await keep(storage, [("a.txt", b"a")], job_id)
        await storage.delete_job(job_id)
        await storage.delete_job(job_id)
        await storage.delete_job("never-seen")
        assert await storage.job_ids() == {}

    async def test_delete_job_with_many_files(self, storage: UploadStorage) -> None:
        job_id = uuid4().hex
        keys = await keep(storage, [(f"part-{i}.txt", b"%d" % i) for i in range(120)], job_id)
        assert storage.read(keys[-1]) == b"119"
        await storage.delete_job(job_id)
        assert await storage.job_ids() == {}
        for key in (keys[0], keys[-1]):
            with pytest.raises(StorageError):
                storage.read(key)

    async def test_a_missing_key_is_a_storage_error(self, storage: UploadStorage) -> None:
        job_id = uuid4().hex
        [key] = await keep(storage, [("a.txt", b"a")], job_id)
        await storage.delete_job(job_id)
        with pytest.raises(StorageError) as raised:
            storage.read(key)
        assert isinstance(raised.value, OSError)  # callers that catch OSError catch it too
        assert "cannot be read" in str(raised.value)

    async def test_shared_says_whether_reads_survive_this_machines_files(
        self, storage: UploadStorage
    ) -> None:
        job_id = uuid4().hex
        job_dir, paths = stage(storage, job_id, [("a.txt", b"kept")])
        [key] = await storage.keep(job_id, job_dir, paths)
        # What another machine has of this one's disk: nothing.
        shutil.rmtree(job_dir, ignore_errors=True)
        if storage.shared:
            assert storage.read(key) == b"kept"
        else:
            with pytest.raises(StorageError):
                storage.read(key)

    async def test_another_instance_sees_the_same_uploads(self, make_storage: StorageFactory) -> None:
        first, second = make_storage(), make_storage()
        job_id = uuid4().hex
        keys = await keep(first, [("a.txt", b"from the first")], job_id)
        assert read_all(second, keys) == [b"from the first"]
        assert set(await second.job_ids()) == {job_id}
        await second.delete_job(job_id)
        assert await first.job_ids() == {}
        with pytest.raises(StorageError):
            first.read(keys[0])

    async def test_concurrent_jobs_and_reads_from_threads(self, storage: UploadStorage) -> None:
        # Reads are blocking and run on ingestion threads; keeps run concurrently for many uploads.
        jobs = [[(f"{j}-{i}.txt", f"job {j} file {i}".encode()) for i in range(3)] for j in range(8)]
        keys = await asyncio.gather(*(keep(storage, files) for files in jobs))
        flat_keys = [key for job_keys in keys for key in job_keys]
        data = await asyncio.gather(*(asyncio.to_thread(storage.read, key) for key in flat_keys))
        assert data == [body for files in jobs for _, body in files]
        assert len(await storage.job_ids()) == 8
