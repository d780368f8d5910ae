"""The file store when a write fails. The disk-full fault is injected here (a store whose write raises ENOSPC
after writing part of the file), so this runs anywhere; tests/broker/test_api.py fills a real tmpfs instead."""

import asyncio
import errno
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from cascade.broker.files import FileStore, StorageFullError
from cascade.broker.settings import Settings


async def blocks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class FullDisk(FileStore):
    """Fault injection: the disk fills up after the first block of every upload."""

    async def _write(self, path: Path, chunks: AsyncIterator[bytes]) -> int:
        async for chunk in chunks:
            path.write_bytes(chunk)
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
