"""The result store: each finished chunk's records, committed as part files, so that Redis keeps only what is in
flight (as Spark, Ray Data and vLLM's run-batch commit each task's output as a file).

A chunk is *committed* once every one of its items has a record: its results, its errors and the texts of its
LLM-answered items (which ``cascade learn`` reads) are written as files under ``<root>/<job>/``, each PUT once
under a name no other attempt uses, and their paths and SHA-256 go into the job's commit record in Redis
(``RedisJobStore``). Only the commit record makes a part visible: a worker that dies mid-write leaves a file nobody
reads, and two workers committing the same chunk both write, one commit wins and the other deletes its files. A
part is read back only if its checksum matches its commit record; else ``StorageError`` names it, never serving it.

The store is any fsspec filesystem: a folder (the local stack, the tests, a ReadWriteMany volume) or an
S3-compatible object store (``CASCADE_RESULTS_URL=s3://bucket/prefix``) that every worker and the API share.
"""

import hashlib
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, TypeAdapter

from cascade.broker import blobs
from cascade.workers.blocks import SpecialistAnswers
from cascade.workers.errors import StorageError
from cascade.workers.items import ItemError, ItemResult

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from cascade.broker.settings import Settings

_TEXTS = TypeAdapter(dict[str, str])


class PartFile(BaseModel, frozen=True):
    """One committed file: where, its SHA-256, how many records."""

    path: str
    sha256: str
    records: int


class Part(BaseModel, frozen=True):
    """The commit record of one chunk: its files (absent when the chunk has no such record)."""

    results: PartFile | None = None
    errors: PartFile | None = None
    texts: PartFile | None = None
    """custom_id -> text of the items whose result has an LLM label, for ``cascade learn``."""

    def files(self) -> list[PartFile]:
        return list(self.by_kind().values())

    def by_kind(self) -> dict[str, PartFile]:
        """Its files by field name (results, errors, texts), the absent ones left out."""
        found = {"results": self.results, "errors": self.errors, "texts": self.texts}
        return {kind: f for kind, f in found.items() if f is not None}


def _jsonl(records: Sequence[ItemResult] | Sequence[ItemError]) -> bytes:
    """One record per line, without the fields at their defaults (read back, they take them again): a
    specialist's answer is ~170 bytes instead of ~420, and quicker to write."""
    return b"".join(r.__pydantic_serializer__.to_json(r, exclude_defaults=True) + b"\n" for r in records)


class PartStore:
    """Part files under ``root`` of an fsspec filesystem."""

    def __init__(self, fs: "AbstractFileSystem", root: str) -> None:
        self.fs, self.root = fs, root.rstrip("/")

    def _folder(self, job_id: str) -> str:
        return f"{self.root}/{job_id}/"

    def _put(self, job_id: str, index: int, attempt: str, kind: str, data: bytes, records: int) -> PartFile | None:
        if not records:
            return None
        path = f"{self._folder(job_id)}{index:07d}-{attempt}.{kind}"
        try:
            self.fs.pipe_file(path, data)
        except Exception as e:  # fsspec's backends raise their own (OSError, botocore's, aiohttp's)
            raise StorageError(f"writing result part {path} failed ({type(e).__name__}: {e})") from e
        return PartFile(path=path, sha256=hashlib.sha256(data).hexdigest(), records=records)

    def write(
        self,
        job_id: str,
        index: int,
        results: Sequence[ItemResult],
        errors: Sequence[ItemError],
        texts: dict[str, str],
    ) -> Part:
        """Write one chunk's files (records in line order), under names of this attempt only; not yet visible."""
        attempt = uuid.uuid4().hex[:12]
        if isinstance(results, SpecialistAnswers):  # in line order, written from its columns
            data = results.jsonl()
        else:
            data = _jsonl(sorted(results, key=lambda r: r.line))
        errors = sorted(errors, key=lambda e: e.line)
        return Part(
            results=self._put(job_id, index, attempt, "results.jsonl", data, len(results)),
            errors=self._put(job_id, index, attempt, "errors.jsonl", _jsonl(errors), len(errors)),
            texts=self._put(job_id, index, attempt, "texts.json", _TEXTS.dump_json(texts), len(texts)),
        )

    def _read(self, part: PartFile) -> bytes:
        try:
            data = bytes(self.fs.cat_file(part.path))
        except FileNotFoundError as e:
            raise StorageError(f"result part {part.path} is missing: its records cannot be served") from e
        except Exception as e:
            raise StorageError(f"reading result part {part.path} failed ({type(e).__name__}: {e})") from e
        if hashlib.sha256(data).hexdigest() != part.sha256:
            raise StorageError(f"result part {part.path} fails its checksum (truncated or altered): not served")
        return data

    def results(self, part: Part) -> list[ItemResult]:
        if part.results is None:
            return []
        return [ItemResult.model_validate_json(line) for line in self._read(part.results).splitlines()]

    def errors(self, part: Part) -> list[ItemError]:
        if part.errors is None:
            return []
        return [ItemError.model_validate_json(line) for line in self._read(part.errors).splitlines()]

    def texts(self, part: Part) -> dict[str, str]:
        return {} if part.texts is None else _TEXTS.validate_json(self._read(part.texts))

    def discard(self, part: Part) -> None:
        """Delete the files of a commit that lost (another attempt committed the chunk first)."""
        for f in part.files():
            self.fs.rm_file(f.path)

    def record(self, job_id: str, part: Part) -> str:
        """The commit record as Redis keeps it (one per chunk, for as long as the job): its files named within the
        job's folder, absent ones left out, ~40% of the whole record."""
        folder = self._folder(job_id)
        named = {kind: f.model_copy(update={"path": f.path.removeprefix(folder)}) for kind, f in part.by_kind().items()}
        return Part.model_validate(named).model_dump_json(exclude_none=True)

    def read_record(self, job_id: str, raw: str | bytes) -> Part:
        """A commit record kept by ``record`` (or, before it, with whole paths), with its files' whole paths."""
        folder, part = self._folder(job_id), Part.model_validate_json(raw)
        whole = {
            kind: f if "/" in f.path else f.model_copy(update={"path": folder + f.path})
            for kind, f in part.by_kind().items()
        }
        return Part.model_validate(whole)

    def delete_job(self, job_id: str) -> None:
        """Delete every part of a job (its TTL passed), committed or not."""
        folder = f"{self.root}/{job_id}"
        if self.fs.exists(folder):
            self.fs.rm(folder, recursive=True)


def open_parts(settings: "Settings") -> PartStore:
    """The result store the settings name: ``CASCADE_RESULTS_URL``, else ``results`` under ``CASCADE_FILES_DIR``."""
    url = settings.results_location()
    return PartStore(*blobs.filesystem(url, blobs.options(settings, url)))
