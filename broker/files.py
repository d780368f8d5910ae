"""Uploaded files: content on disk (streamed in and out), metadata in Redis, scoped to the caller who uploaded."""

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import redis
from pydantic import BaseModel

from cascade.broker import keys
from cascade.workers.errors import NotFoundError


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
        file_id = "file-" + uuid.uuid4().hex
        size = 0
        with self.path(file_id).open("wb") as f:
            async for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
        meta = FileObject(id=file_id, bytes=size, created_at=int(time.time()), filename=filename, purpose=purpose)
        key = keys.file(file_id)
        self.redis.hset(key, mapping={"owner": owner, "meta": meta.model_dump_json()})
        self.redis.expire(key, self.ttl)
        return meta

    def get(self, file_id: str, owner: str) -> FileObject:
        """The file's metadata; a file of another caller is as missing as one that never was."""
        found, meta = self.redis.hmget(keys.file(file_id), ["owner", "meta"])
        if found is None or str(found) != owner or meta is None:
            raise NotFoundError(f"no file {file_id!r}")
        return FileObject.model_validate_json(str(meta))
