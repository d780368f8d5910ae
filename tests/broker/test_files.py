"""The file store when a write fails, and how long it keeps an upload. The disk-full fault is injected here (a store
whose write raises ENOSPC after writing part of the file), so this runs anywhere; tests/broker/test_api.py fills a
real tmpfs instead."""

import asyncio
import errno
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from cascade.broker import blobs, keys
from cascade.broker.celery_app import CascadeCelery, configure
from cascade.broker.files import FileStore, StorageFullError
from cascade.broker.keys import JobKeys
from cascade.broker.reaper import Reaper
from cascade.broker.results import open_parts
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.jobs import JobStatus
from tests.broker.test_results import s3_settings
from tests.conftest import S3Server
from tests.workers.store_contract import SPEC, running_job


async def blocks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class FullDisk(FileStore):
    """Fault injection: the disk fills up after the first block of every upload."""

    async def _write(self, path: str, chunks: AsyncIterator[bytes]) -> int:
        async for chunk in chunks:
            Path(path).write_bytes(chunk)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return 0


def test_a_full_disk_fault_injected_leaves_no_partial_file_and_names_the_reason(
    settings: Settings, redis_db: redis.Redis, tmp_path: Path
) -> None:
    full = FullDisk(redis_db, tmp_path, settings.job_ttl)
    with pytest.raises(StorageFullError, match="no space left") as raised:
        asyncio.run(full.save("team-a", "in.jsonl", "batch", blocks(b"a" * 10, b"b" * 10)))
    assert str(tmp_path) not in str(raised.value)  # the server's paths stay on the server
    assert list(tmp_path.iterdir()) == []
    assert redis_db.keys("*") == []
    saved = asyncio.run(
        FileStore(redis_db, tmp_path, settings.job_ttl).save("team-a", "in.jsonl", "batch", blocks(b"ok\n"))
    )
    assert [p.name for p in tmp_path.iterdir()] == [saved.id]
    assert saved.bytes == 3


def test_an_upload_that_breaks_off_leaves_no_partial_file(
    settings: Settings, redis_db: redis.Redis, tmp_path: Path
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"part"
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        asyncio.run(FileStore(redis_db, tmp_path, settings.job_ttl).save("team-a", "in.jsonl", "batch", broken()))
    assert list(tmp_path.iterdir()) == []


def _saved(files: FileStore, retention: int | None = None) -> str:
    return asyncio.run(files.save("team-a", "in.jsonl", "batch", blocks(b"{}\n"), retention=retention)).id


def _gone(files: FileStore, file_id: str) -> bool:
    return not files.exists(file_id) and not files.redis.exists(keys.file(file_id))


def test_an_unused_upload_is_deleted_after_its_retention(redis_db: redis.Redis, tmp_path: Path) -> None:
    files = FileStore(redis_db, tmp_path, ttl=3600)
    kept, short = _saved(files), _saved(files, retention=600)
    shorter_than_asked = _saved(FileStore(redis_db, tmp_path, ttl=300), retention=600)  # the store's is the bound
    now = time.time()
    assert files.expire(recheck=60, now=now + 100) == []
    assert sorted(files.expire(recheck=60, now=now + 700)) == sorted([short, shorter_than_asked])
    assert _gone(files, short)
    assert _gone(files, shorter_than_asked)
    assert files.get(kept, "team-a").id == kept
    assert files.expire(recheck=60, now=now + 3700) == [kept]
    assert list(tmp_path.iterdir()) == []
    assert redis_db.keys("*") == []


def test_an_upload_is_kept_while_its_batch_runs_and_for_the_retention_after(
    store: RedisJobStore, redis_db: redis.Redis, tmp_path: Path
) -> None:
    files = FileStore(redis_db, tmp_path, ttl=600)
    file_id = _saved(files)
    job = running_job(store, 1)
    files.use(file_id, job)
    now = time.time()
    assert files.expire(recheck=60, now=now + 1000) == []  # the batch still runs: looked at again in a minute
    assert redis_db.zscore(keys.FILES, file_id) == pytest.approx(now + 1060)
    store.end(job, JobStatus.CANCELLED)
    ended = now + 5000
    redis_db.hset(JobKeys(job).job, "finished_at", repr(ended))  # as if it had run 5000 s
    assert files.expire(recheck=60, now=now + 1060) == []  # looked at again: kept for the retention after the end
    assert files.expire(recheck=60, now=ended + 500) == []
    assert files.expire(recheck=60, now=ended + 601) == [file_id]
    assert _gone(files, file_id)


def test_an_upload_of_a_batch_whose_keys_expired_goes(
    store: RedisJobStore, redis_db: redis.Redis, tmp_path: Path
) -> None:
    files = FileStore(redis_db, tmp_path, ttl=600)
    file_id = _saved(files)
    job = running_job(store, 1)
    files.use(file_id, job)
    redis_db.delete(JobKeys(job).job)  # as when the batch's keys expire
    assert files.expire(recheck=60, now=time.time() + 601) == [file_id]


def test_the_reaper_trims_the_indexes_and_deletes_expired_uploads(
    settings: Settings, redis_db: redis.Redis, tmp_path: Path
) -> None:
    short = settings.model_copy(update={"files_dir": str(tmp_path), "file_retention": 1})
    store = RedisJobStore(redis_db, job_ttl=1, parts=open_parts(short))
    reaper = Reaper(store, configure(CascadeCelery("reaper-test"), short), short)
    file_id = _saved(reaper.files)
    job = reaper.store.create(SPEC, owner="team-a")
    time.sleep(2.1)  # the job's keys expire; the upload's retention passes
    reaper.once()
    assert _gone(reaper.files, file_id)
    assert redis_db.zcard(keys.JOBS) == 0
    assert redis_db.zscore(keys.owner("team-a"), job) is None
    assert not redis_db.exists(keys.REAPER_LOCK) or redis_db.get(keys.REAPER_LOCK) == reaper.token


def test_uploads_in_an_object_store_round_trip_and_expire(
    settings: Settings, redis_db: redis.Redis, s3: S3Server, s3_bucket: str
) -> None:
    """CASCADE_FILES_DIR as an S3 URL: the real S3 server (SeaweedFS) holds the uploads."""
    url = f"s3://{s3_bucket}/files"
    files = FileStore(redis_db, url, ttl=600, storage_options=blobs.options(s3_settings(settings, s3, s3_bucket), url))
    file_id = _saved(files)
    assert files.exists(file_id)
    assert b"".join(files.content(file_id)) == b"{}\n"
    assert files.expire(recheck=60, now=time.time() + 601) == [file_id]
    assert _gone(files, file_id)
