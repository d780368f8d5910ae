"""Uploaded files: content on disk (streamed in and out), metadata in Redis, scoped to the caller who uploaded."""

import errno
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import redis
from pydantic import BaseModel

from cascade.broker import keys
from cascade.workers.errors import CascadeError, NotFoundError

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class StorageFullError(CascadeError):
    """The files folder has no space (or quota) left for an upload; the partial file was removed."""


class FileObject(BaseModel):
    """OpenAI's file object."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str


class FileStore:
    def __init__(self, client: redis.Redis, folder: str | Path, ttl: int) -> None:
        self.redis = client
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ttl = ttl

    def path(self, file_id: str) -> Path:
        return self.folder / file_id

    async def save(self, owner: str, filename: str, purpose: str, chunks: AsyncIterator[bytes]) -> FileObject:
        """Store an upload. An upload that fails or is abandoned half way leaves no file behind; a full disk is a
        ``StorageFullError``."""
        file_id = "file-" + uuid.uuid4().hex
        path = self.path(file_id)
        try:
            size = await self._write(path, chunks)
            meta = FileObject(id=file_id, bytes=size, created_at=int(time.time()), filename=filename, purpose=purpose)
            key = keys.file(file_id)
            self.redis.hset(key, mapping={"owner": owner, "meta": meta.model_dump_json()})
            self.redis.expire(key, self.ttl)
        except BaseException as e:  # a cancelled upload too: nothing may stay behind to fill the disk
            path.unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno in _NO_SPACE:
                raise StorageFullError(f"no space left to store the upload ({e.strerror}); try again later") from e
            raise
        return meta

    async def _write(self, path: Path, chunks: AsyncIterator[bytes]) -> int:
        """The chunks into ``path``, on disk (fsync'd) before it returns; their size in bytes."""
        size = 0
        with path.open("wb") as f:
            async for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        return size

    def get(self, file_id: str, owner: str) -> FileObject:
        """The file's metadata; a file of another caller is as missing as one that never was."""
        found, meta = self.redis.hmget(keys.file(file_id), ["owner", "meta"])
        if found is None or str(found) != owner or meta is None:
            raise NotFoundError(f"no file {file_id!r}")
        return FileObject.model_validate_json(str(meta))
