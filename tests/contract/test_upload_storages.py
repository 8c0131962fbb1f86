"""The `UploadStorage` contract against a local directory and an S3 bucket (moto's server on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from app.storage import LocalStorage, S3Storage, StorageError, UploadStorage
from tests.conftest_services import moto_s3
from tests.contract.storage_contract import StorageFactory, UploadStorageContract, keep, stage

pytestmark = pytest.mark.integration

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class TestLocalStorage(UploadStorageContract):
    @pytest.fixture
    def make_storage(self, tmp_path: Path) -> StorageFactory:
        return lambda: LocalStorage(tmp_path / "data" / "uploads")

    async def test_keys_are_the_received_files(self, storage: UploadStorage) -> None:
        job_id = uuid4().hex
        job_dir, paths = stage(storage, job_id, [("a.txt", b"a")])
        assert await storage.keep(job_id, job_dir, paths) == [str(paths[0])]
        assert paths[0].read_bytes() == b"a" and storage.staging_root == paths[0].parents[1]

    async def test_a_root_not_created_yet_has_no_job_ids(self, tmp_path: Path) -> None:
        storage = LocalStorage(tmp_path / "not" / "yet")
        assert await storage.job_ids() == {}
        await storage.delete_job("never-seen")
        assert not storage.staging_root.exists()

    async def test_a_staged_upload_is_listed_before_it_is_kept(self, storage: UploadStorage) -> None:
        # The staging root is the storage: the orphan sweep sees uploads still being received (and
        # skips them by the ids it is receiving), which an S3 bucket never lists.
        job_id = uuid4().hex
        stage(storage, job_id, [("a.txt", b"a")])
        assert set(await storage.job_ids()) == {job_id}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as url:
        yield url


@pytest.fixture
def s3_client(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A boto3 client of the moto server, with the test credentials in the environment (as the storage
    reads them)."""
    import boto3

    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def bucket(s3_client: Any) -> str:
    name = f"uploads-{uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


def stored_keys(s3_client: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]


class TestS3Storage(UploadStorageContract):
    prefix = "ragserver/uploads"

    @pytest.fixture
    def make_storage(self, s3_endpoint: str, bucket: str, tmp_path: Path) -> StorageFactory:
        # Each instance stands for a replica: its own staging folder, the same bucket and prefix.
        def factory() -> UploadStorage:
            staging = tmp_path / uuid4().hex / "uploads"
            return S3Storage(bucket, self.prefix, staging_root=staging, endpoint_url=s3_endpoint)

        return factory

    def key_of(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    async def test_keys_name_the_object_and_the_staged_copies_go(
        self, storage: UploadStorage, bucket: str, s3_client: Any
    ) -> None:
        job_id = uuid4().hex
        job_dir, paths = stage(storage, job_id, [("a.txt", b"a"), ("b.txt", b"b")])
        keys = await storage.keep(job_id, job_dir, paths)
        objects = [self.key_of(job_id, "0000_a.txt"), self.key_of(job_id, "0001_b.txt")]
        assert keys == [f"s3://{bucket}/{key}" for key in objects]
        assert stored_keys(s3_client, bucket) == objects
        assert not job_dir.exists()

    async def test_prefixes_in_one_bucket_keep_apart(
        self, s3_endpoint: str, bucket: str, tmp_path: Path
    ) -> None:
        blue, green = (
            S3Storage(bucket, prefix, staging_root=tmp_path / prefix, endpoint_url=s3_endpoint)
            for prefix in (f"{self.prefix}/blue", f"{self.prefix}/blue-green")
        )
        job_id = uuid4().hex
        [blue_key] = await keep(blue, [("a.txt", b"blue")], job_id)
        [green_key] = await keep(green, [("a.txt", b"green")], job_id)
        other = await keep(green, [("b.txt", b"green only")])
        assert set(await blue.job_ids()) == {job_id}
        assert len(await green.job_ids()) == 2
        await blue.delete_job(job_id)
        assert green.read(green_key) == b"green" and green.read(other[0]) == b"green only"
        with pytest.raises(StorageError):
            blue.read(blue_key)

    async def test_a_failed_keep_leaves_nothing_stored(
        self, storage: UploadStorage, bucket: str, s3_client: Any
    ) -> None:
        job_id = uuid4().hex
        job_dir, paths = stage(storage, job_id, [("a.txt", b"a")])
        with pytest.raises(StorageError, match=f"s3://{bucket}"):
            await storage.keep(job_id, job_dir, [*paths, job_dir / "0001_vanished.txt"])
        assert stored_keys(s3_client, bucket) == []
        assert await storage.job_ids() == {}

    def test_reading_from_a_missing_bucket_is_a_storage_error(self, s3_client: Any) -> None:
        with pytest.raises(StorageError):
            S3Storage("no-such-bucket", self.prefix, staging_root=Path("unused"), client=s3_client).read(
                f"s3://no-such-bucket/{self.key_of(uuid4().hex, '0000_a.txt')}"
            )

    async def test_keeping_into_a_missing_bucket_is_a_storage_error(
        self, s3_endpoint: str, tmp_path: Path
    ) -> None:
        storage = S3Storage("no-such-bucket", self.prefix, staging_root=tmp_path, endpoint_url=s3_endpoint)
        job_id = uuid4().hex
        job_dir, paths = stage(storage, job_id, [("a.txt", b"a")])
        with pytest.raises(StorageError):
            await storage.keep(job_id, job_dir, paths)


class TestS3StorageAtTheBucketRoot(TestS3Storage):
    prefix = ""
