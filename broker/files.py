"""Uploaded files: content in a folder or an object store (``CASCADE_FILES_DIR``, a folder or any fsspec URL;
streamed in and out), metadata in Redis, scoped to the caller who uploaded.

Nothing stays forever: each upload has a retention (``CASCADE_FILE_RETENTION``, shorter per file with OpenAI's
``expires_after``), and the reaper deletes a file, content and metadata, once its retention has passed both since
its upload and since the end of every batch that reads it (``expire``); ``keys.FILES`` says when to look again.
"""

import contextlib
import errno
import io
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import redis
from pydantic import BaseModel

from cascade.broker import blobs, keys
from cascade.broker.keys import JobKeys
from cascade.workers.errors import CascadeError, NotFoundError
from cascade.workers.jobs import JobStatus

if TYPE_CHECKING:
    from cascade.broker.settings import Settings

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


_BATCH = "batch:"
"""Prefix of the metadata fields that name the batches reading a file."""


def open_files(client: redis.Redis, settings: "Settings") -> "FileStore":
    """The uploads the settings name: ``CASCADE_FILES_DIR`` (a folder or an fsspec URL), kept
    ``CASCADE_FILE_RETENTION``."""
    url = settings.files_dir
    return FileStore(client, url, settings.file_retention_seconds(), blobs.options(settings, url))


class FileStore:
    def __init__(
        self, client: redis.Redis, location: str | Path, ttl: int, storage_options: dict[str, object] | None = None
    ) -> None:
        """``location``: a folder or an fsspec URL (``blobs.options`` gives its ``storage_options``); ``ttl``: the
        retention of an upload, in seconds (``Settings.file_retention_seconds``)."""
        self.redis = client
        self.fs, self.root = blobs.filesystem(str(location), storage_options)
        self.ttl = ttl

    def path(self, file_id: str) -> str:
        return f"{self.root}/{file_id}"

    def exists(self, file_id: str) -> bool:
        return bool(self.fs.isfile(self.path(file_id)))

    def open(self, file_id: str) -> IO[bytes]:
        """The upload's content, to read (``FileNotFoundError`` when it is gone), buffered as a local file is
        (an object store's file object has no ``readline(size)``, which the intake's line limit needs)."""
        return io.BufferedReader(self.fs.open(self.path(file_id), "rb"), buffer_size=1024 * 1024)

    def content(self, file_id: str, block: int = 1024 * 1024) -> Iterator[bytes]:
        with self.open(file_id) as f:
            while data := f.read(block):
                yield data

    def _remove(self, file_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(file_id))

    async def save(
        self, owner: str, filename: str, purpose: str, chunks: AsyncIterator[bytes], retention: int | None = None
    ) -> FileObject:
        """Store an upload, kept ``retention`` seconds (at most the store's) after it and after the end of every
        batch that reads it. An upload that fails or is abandoned half way leaves no file behind; a full disk is a
        ``StorageFullError``."""
        keep = self.ttl if retention is None else min(retention, self.ttl)
        file_id = "file-" + uuid.uuid4().hex
        path = self.path(file_id)
        try:
            size = await self._write(path, chunks)
            meta = FileObject(id=file_id, bytes=size, created_at=int(time.time()), filename=filename, purpose=purpose)
            with self.redis.pipeline() as pipe:
                meta_json = meta.model_dump_json()
                pipe.hset(keys.file(file_id), mapping={"owner": owner, "meta": meta_json, "retention": str(keep)})
                pipe.zadd(keys.FILES, {file_id: meta.created_at + keep})
                pipe.execute()
        except BaseException as e:  # a cancelled upload too: nothing may stay behind to fill the disk
            self._remove(file_id)
            if isinstance(e, OSError) and e.errno in _NO_SPACE:
                raise StorageFullError(f"no space left to store the upload ({e.strerror}); try again later") from e
            raise
        return meta

    async def _write(self, path: str, chunks: AsyncIterator[bytes]) -> int:
        """The chunks into ``path``, stored (on a disk: fsync'd; in an object store: the upload completed) before
        it returns; their size in bytes."""
        size = 0
        with self.fs.open(path, "wb") as f:
            async for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
            f.flush()
            if blobs.is_local(self.fs):
                with contextlib.suppress(AttributeError, io.UnsupportedOperation):
                    os.fsync(f.fileno())
        return size

    def get(self, file_id: str, owner: str) -> FileObject:
        """The file's metadata; a file of another caller is as missing as one that never was."""
        found, meta = self.redis.hmget(keys.file(file_id), ["owner", "meta"])
        if found is None or str(found) != owner or meta is None:
            raise NotFoundError(f"no file {file_id!r}")
        return FileObject.model_validate_json(str(meta))

    def use(self, file_id: str, job_id: str) -> None:
        """A batch reads the file: it is kept until the retention has passed since the batch's end."""
        self.redis.hset(keys.file(file_id), _BATCH + job_id, "1")

    def owned(self, owner: str, batch: int = 1000) -> list[FileObject]:
        """The owner's uploads still kept, found in the index of every upload (``keys.FILES``): the cost grows with
        the uploads kept, every caller's (bounded by their retention), and no other index has to be kept right."""
        ids = [str(f) for f in self.redis.zrange(keys.FILES, 0, -1)]
        found: list[FileObject] = []
        for start in range(0, len(ids), batch):
            with self.redis.pipeline(transaction=False) as pipe:
                for file_id in ids[start : start + batch]:
                    pipe.hmget(keys.file(file_id), ["owner", "meta"])
                rows = pipe.execute()
            found += [FileObject.model_validate_json(str(m)) for who, m in rows if str(who) == owner and m is not None]
        return found

    def expires_at(self, file_id: str, now: float | None = None) -> int:
        """When the reaper may delete the file: its retention after its upload and after the end of each batch that
        reads it; a batch still running holds it at least one retention from now (so the time can move later)."""
        retention = self.redis.hget(keys.file(file_id), "retention")
        keep = float(retention) if retention is not None else float(self.ttl)
        return int(self._kept_until(file_id, time.time() if now is None else now, keep))

    def readers(self, file_id: str) -> list[str]:
        """The ids of the batches that read the file (``use``), ended or not."""
        names = [str(k) for k in self.redis.hkeys(keys.file(file_id))]
        return [n.removeprefix(_BATCH) for n in names if n.startswith(_BATCH)]

    def delete(self, file_id: str) -> None:
        """Delete the file, content then metadata, now (its owner asked). The content goes first: should that fail,
        the metadata still leads the reaper to it."""
        self._remove(file_id)
        with self.redis.pipeline() as pipe:
            pipe.delete(keys.file(file_id))
            pipe.zrem(keys.FILES, file_id)
            pipe.execute()

    def expire(self, recheck: float, now: float | None = None, batch: int = 100, rounds: int = 20) -> list[str]:
        """Delete, content and metadata, the files whose time has come (run by the reaper): up to ``batch`` files
        looked at per round. A file still read by a running batch is looked at again ``recheck`` seconds later.
        Returns the ids deleted."""
        now = time.time() if now is None else now
        deleted: list[str] = []
        for _ in range(rounds):
            due = [str(f) for f in self.redis.zrangebyscore(keys.FILES, "-inf", now, start=0, num=batch)]
            for file_id in due:
                until = self._kept_until(file_id, now, recheck)
                if until > now:
                    self.redis.zadd(keys.FILES, {file_id: until})
                    continue
                self._remove(file_id)
                with self.redis.pipeline() as pipe:
                    pipe.delete(keys.file(file_id))
                    pipe.zrem(keys.FILES, file_id)
                    pipe.execute()
                deleted.append(file_id)
            if len(due) < batch:
                break
        return deleted

    def _kept_until(self, file_id: str, now: float, recheck: float) -> float:
        """When the file may go: its retention after its upload and after each of its batches' end."""
        fields = {str(k): str(v) for k, v in self.redis.hgetall(keys.file(file_id)).items()}
        if "meta" not in fields:  # its metadata is gone (expired, from before retention was kept): so is the file
            return now
        retention = float(fields.get("retention", self.ttl))
        until = FileObject.model_validate_json(fields["meta"]).created_at + retention
        for name in fields:
            if not name.startswith(_BATCH):
                continue
            status, finished = self.redis.hmget(JobKeys(name.removeprefix(_BATCH)).job, ["status", "finished_at"])
            if status is None:  # the batch's keys have expired: it ended long ago
                continue
            if not JobStatus(str(status)).is_final or finished is None:
                until = max(until, now + recheck)
            else:
                until = max(until, float(finished) + retention)
        return until
