"""OpenAI's File objects: an upload's, and those of a batch's output and error files (``file-out-ID``,
``file-err-ID``), which are not stored as files but rendered from the job's records whenever they are read.

A batch's files appear when it ends (their ``created_at``, OpenAI's anchor for ``output_expires_after``) and
expire at the earlier of that anchor plus the batch's ``output_expires_after`` and the end of the job's own keys
(``CASCADE_JOB_TTL`` after the batch's creation, when its records go). An expired file, or one its owner deleted,
is answered 404 like one that never was; deleting one hides it at once, while its records stay in the store until the
job's keys expire (the CLI and ``cascade learn`` read them, and nothing else deletes a job early).

What only a full pass over the records can count (each file's bytes, the LLM's input and output tokens for
``batch.usage``) is counted the first time it is asked for after the end, when nothing changes any more, and kept
in the job's hash, so that polling a large batch reads its records once.
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from cascade.broker import keys
from cascade.broker.batches import (
    ERRORS_PREFIX,
    OUTPUT_PREFIX,
    Answerers,
    Usage,
    error_line,
    file_ids,
    output_line,
)
from cascade.broker.files import FileObject, FileStore
from cascade.broker.keys import JobKeys
from cascade.broker.store import RedisJobStore
from cascade.workers.errors import NotFoundError
from cascade.workers.jobs import JobStatus

BATCH_OUTPUT: Literal["batch_output"] = "batch_output"
"""OpenAI's purpose of a batch's output and error files."""
OUTPUT_EXPIRES_AFTER = "output_expires_after"
"""Job hash field: the seconds of the batch's ``output_expires_after``, set at its creation."""
_RENDERED = "files_rendered"
"""Job hash field: ``Rendered`` JSON, once counted."""
_DELETED = "deleted:"
"""Prefix of the job hash fields that mark one of its files deleted by its owner (the time, as the value)."""
_SET_IF_KEPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return -1
"""
"""A field written into a job's hash only while the hash exists: a new hash would have no TTL and stay forever."""


class File(BaseModel):
    """OpenAI's File object, as every Files call answers it."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["processed"] = "processed"
    """Deprecated by OpenAI but required by its type: an upload is processed once stored, an output once rendered."""
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(BaseModel):
    """OpenAI's answer to a file's deletion."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


def upload_object(meta: FileObject, expires_at: int) -> File:
    return File(**meta.model_dump(exclude={"object"}), expires_at=expires_at)


def is_batch_file(file_id: str) -> bool:
    return file_id.startswith((OUTPUT_PREFIX, ERRORS_PREFIX))


class Rendered(BaseModel):
    """What a full pass over an ended batch's records counts."""

    output_bytes: int
    error_bytes: int
    input_tokens: int
    output_tokens: int


def output_lines(store: RedisJobStore, job_id: str) -> Iterator[str]:
    job = store.get(job_id)
    created, answerers = int(job.finished_at or job.created_at), Answerers.of(job.spec)
    for r in store.iter_results(job_id):
        yield json.dumps(output_line(job_id, answerers, created, r)) + "\n"


def error_lines(store: RedisJobStore, job_id: str) -> Iterator[str]:
    for e in store.iter_errors(job_id):
        yield json.dumps(error_line(job_id, e)) + "\n"


def rendered(store: RedisJobStore, job_id: str) -> Rendered:
    """Counted once, for a batch that has ended (``StorageError`` when the result store fails it), and kept."""
    key = JobKeys(job_id).job
    if (kept := store.redis.hget(key, _RENDERED)) is not None:
        return Rendered.model_validate_json(str(kept))
    job = store.get(job_id)
    created, answerers = int(job.finished_at or job.created_at), Answerers.of(job.spec)
    output_bytes = input_tokens = output_tokens = 0
    for r in store.iter_results(job_id):
        output_bytes += len((json.dumps(output_line(job_id, answerers, created, r)) + "\n").encode())
        input_tokens += r.llm_prompt_tokens or 0
        output_tokens += r.llm_completion_tokens or 0
    error_bytes = sum(len(line.encode()) for line in error_lines(store, job_id))
    counted = Rendered(
        output_bytes=output_bytes, error_bytes=error_bytes, input_tokens=input_tokens, output_tokens=output_tokens
    )
    store.redis.register_script(_SET_IF_KEPT)(keys=[key], args=[_RENDERED, counted.model_dump_json()])
    return counted


def usage(store: RedisJobStore, job_id: str) -> Usage:
    """The LLM's tokens over an ended batch, from its records (the store counts only their sum, ``llm_tokens``)."""
    counted = rendered(store, job_id)
    total = counted.input_tokens + counted.output_tokens
    return Usage(input_tokens=counted.input_tokens, output_tokens=counted.output_tokens, total_tokens=total)


_FIELDS = ("owner", "status", "created_at", "finished_at", "n_results", "n_errors", OUTPUT_EXPIRES_AFTER)


@dataclass(frozen=True)
class _Ended:
    """An ended batch, as far as its files are concerned."""

    job_id: str
    owner: str
    created_at: float
    finished_at: float
    keep: int | None
    """Its ``output_expires_after`` seconds, if it had one."""
    files: tuple[str, ...]
    """Its output and error files that exist and were not deleted."""

    def expires_at(self, job_ttl: int) -> int:
        end_of_job = self.created_at + job_ttl
        return int(end_of_job if self.keep is None else min(self.finished_at + self.keep, end_of_job))


def _read(store: RedisJobStore, job_ids: list[str]) -> dict[str, _Ended]:
    """The ended ones of these batches, read in one round trip."""
    with store.redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            k = JobKeys(job_id)
            pipe.hmget(k.job, [*_FIELDS, _DELETED + OUTPUT_PREFIX + job_id, _DELETED + ERRORS_PREFIX + job_id])
            pipe.hlen(k.invalid)
        replies = pipe.execute()
    ended: dict[str, _Ended] = {}
    for job_id, fields, invalid in zip(job_ids, replies[::2], replies[1::2], strict=True):
        owner, status, created, finished, results, errors, keep, *deleted = fields
        if status is None or finished is None or not JobStatus(str(status)).is_final:
            continue
        failed = int(errors or 0) + int(invalid)
        ids = file_ids(job_id, JobStatus(str(status)), int(results or 0), failed)
        files = tuple(f for f, gone in zip(ids, deleted, strict=True) if f is not None and gone is None)
        keep_seconds = int(keep) if keep else None
        ended[job_id] = _Ended(job_id, str(owner), float(created), float(finished), keep_seconds, files)
    return ended


def _visible(store: RedisJobStore, file_id: str, owner: str, now: float) -> _Ended:
    """The batch of a file its owner may read now; ``NotFoundError`` otherwise, saying why when it is the owner's."""
    job_id = file_id.removeprefix(OUTPUT_PREFIX).removeprefix(ERRORS_PREFIX)
    (found,) = store.fields(job_id, "owner")
    if found is None or found != owner:
        raise NotFoundError(f"no file {file_id!r}")
    ended = _read(store, [job_id]).get(job_id)
    if ended is None:
        raise NotFoundError(f"no file {file_id!r} yet: the batch has not ended")
    if file_id not in ended.files:
        raise NotFoundError(f"no file {file_id!r}: the batch has no such file, or it was deleted")
    if now >= ended.expires_at(store.job_ttl):
        raise NotFoundError(f"no file {file_id!r}: it expired (output_expires_after, or the batch's own lifetime)")
    return ended


def batch_file(store: RedisJobStore, file_id: str, owner: str, now: float | None = None) -> File:
    ended = _visible(store, file_id, owner, time.time() if now is None else now)
    counted = rendered(store, ended.job_id)
    is_output = file_id.startswith(OUTPUT_PREFIX)
    return File(
        id=file_id,
        bytes=counted.output_bytes if is_output else counted.error_bytes,
        created_at=int(ended.finished_at),
        filename=f"{ended.job_id}_{'output' if is_output else 'error'}.jsonl",
        purpose=BATCH_OUTPUT,
        expires_at=ended.expires_at(store.job_ttl),
    )


def batch_file_lines(store: RedisJobStore, file_id: str, owner: str) -> Iterator[str]:
    """The file's lines; ``NotFoundError`` (before the first line) when its owner may not read it now."""
    ended = _visible(store, file_id, owner, time.time())
    if file_id.startswith(OUTPUT_PREFIX):
        return output_lines(store, ended.job_id)
    return error_lines(store, ended.job_id)


def delete_batch_file(store: RedisJobStore, file_id: str, owner: str) -> None:
    """Hide the file from now on (its records go with the job's keys)."""
    ended = _visible(store, file_id, owner, now := time.time())
    mark = store.redis.register_script(_SET_IF_KEPT)
    if mark(keys=[JobKeys(ended.job_id).job], args=[_DELETED + file_id, repr(now)]) == -1:
        raise NotFoundError(f"no file {file_id!r}")


@dataclass(frozen=True)
class Listed:
    """One of a caller's files, as a listing orders and filters it."""

    id: str
    created_at: int
    purpose: str


def listing(files: FileStore, store: RedisJobStore, owner: str, newest_first: bool) -> list[Listed]:
    """Every file of the owner's that can be read now, uploads and batch files, by ``created_at`` then id."""
    every = [Listed(f.id, f.created_at, f.purpose) for f in files.owned(owner)] + _batch_files(store, owner)
    return sorted(every, key=lambda f: (f.created_at, f.id), reverse=newest_first)


def still_reading(files: FileStore, store: RedisJobStore, file_id: str) -> list[str]:
    """The batches that may still read the upload: not ended, and their intake has not finished (no ``total``)."""
    reading = []
    for job_id in files.readers(file_id):
        status, total = store.fields(job_id, "status", "total")
        if status is not None and not JobStatus(status).is_final and total is None:
            reading.append(job_id)
    return reading


def _batch_files(store: RedisJobStore, owner: str) -> list[Listed]:
    """The owner's batches' output and error files that can be read now (the owner's batches, one round trip)."""
    now = time.time()
    job_ids = [str(i) for i in store.redis.zrange(keys.owner(owner), 0, -1)]
    return [
        Listed(file_id, int(e.finished_at), BATCH_OUTPUT)
        for e in _read(store, job_ids).values()
        if e.owner == owner and now < e.expires_at(store.job_ttl)
        for file_id in e.files
    ]
