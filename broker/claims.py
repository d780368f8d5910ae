"""Duplicate ``custom_id``s of one reading of an input file, found on the reading process's local disk.

The first line that gives a ``custom_id`` owns it; a later line with the same id is a duplicate. An intake reads
its file from the first line every time it runs (a worker that died mid-intake: the next reads it again), so the
claims of one reading are all the next needs, made again from the same lines with the same answers: they live and
die with the reading, neither in Redis (which then holds nothing per input line while a job is read) nor in memory
(which stays flat however long the file).

Two levels: a Bloom filter of fixed size in memory (``BLOOM_BITS``: 16 MiB) tells at once that an id was not seen
yet (the common case, answered without a lookup); the ids it may have seen are looked up in a SQLite table in a
temporary folder (``TMPDIR``: about 50 bytes a line until the reading ends), which holds every id read and the
line that owns it.
"""

import shutil
import sqlite3
import tempfile
from collections.abc import Sequence
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from cascade.workers.errors import StorageError
from cascade.workers.items import Item

BLOOM_BITS = 1 << 27
"""The Bloom filter's size (16 MiB): ~2% of the ids of a 10M-line file are looked up on disk, 0.02% at 1M."""
_LOOKUP = 500
"""Ids per SQLite lookup (its bound parameters)."""


def _failed(folder: str, e: Exception) -> StorageError:
    return StorageError(
        f"the intake cannot keep the custom_ids it reads in {folder} ({type(e).__name__}: {e}); it needs ~50 bytes "
        "of local disk a line: free space there or point TMPDIR at a larger folder"
    )


class IdClaims:
    """The ``custom_id``s one reading of a file has met, and the line that owns each. Use as a context manager: its
    folder is deleted at the end."""

    def __init__(self, folder: str | None = None, bits: int = BLOOM_BITS) -> None:
        self.bits = bits
        self.bloom = np.zeros(bits // 8, dtype=np.uint8)
        try:
            self.folder = tempfile.mkdtemp(prefix="cascade-claims-", dir=folder)
        except OSError as e:
            raise _failed(folder or tempfile.gettempdir(), e) from e
        try:
            self.db = sqlite3.connect(f"{self.folder}/ids.sqlite", isolation_level=None)
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-8192", "temp_store=FILE"):
                self.db.execute(f"PRAGMA {pragma}")
            self.db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, line INTEGER NOT NULL) WITHOUT ROWID")
        except sqlite3.Error as e:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise _failed(self.folder, e) from e

    def __enter__(self) -> "IdClaims":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def claim(self, items: Sequence[Item]) -> list[bool]:
        """For each item (in line order, after every item claimed before), whether its ``custom_id`` is its own:
        no earlier line gave it."""
        if not items:
            return []
        ids = [i.custom_id for i in items]
        maybe = self._maybe_seen(ids)
        suspect = {ids[n] for n in np.flatnonzero(maybe).tolist()}
        owners = self._lookup(list(suspect))
        owns = [True] * len(items)
        if suspect:
            for n, custom_id in enumerate(ids):  # in line order: an earlier item of the batch owns its id first
                if custom_id in suspect:
                    line = items[n].line
                    owns[n] = owners.setdefault(custom_id, line) == line
        new = [(i.custom_id, i.line) for i, own in zip(items, owns, strict=True) if own]
        try:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR IGNORE INTO ids VALUES (?, ?)", new)
            self.db.execute("COMMIT")
        except sqlite3.Error as e:  # a full disk, most likely
            raise _failed(self.folder, e) from e
        return owns

    def _maybe_seen(self, ids: list[str]) -> NDArray[np.bool_]:
        """Per id, whether the filter may have met it before (in an earlier batch, or earlier in this one); then
        adds them all."""
        hashes = np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids)).view(np.uint64)
        positions = np.stack([hashes % np.uint64(self.bits), (hashes >> np.uint64(32)) * np.uint64(2654435761)])
        positions[1] %= np.uint64(self.bits)
        byte, mask = positions >> np.uint64(3), np.left_shift(1, positions & np.uint64(7)).astype(np.uint8)
        maybe: NDArray[np.bool_] = np.all(self.bloom[byte] & mask, axis=0)
        _, first = np.unique(hashes, return_index=True)
        repeated = np.ones(len(ids), dtype=bool)
        repeated[first] = False  # a later item with an earlier one's hash (its id, or a collision)
        np.bitwise_or.at(self.bloom, byte.ravel(), mask.ravel())
        return maybe | repeated

    def _lookup(self, ids: list[str]) -> dict[str, int]:
        """The line that owns each of ``ids`` that a batch before this one claimed."""
        found: dict[str, int] = {}
        for start in range(0, len(ids), _LOOKUP):
            part = ids[start : start + _LOOKUP]
            marks = ",".join("?" * len(part))
            found.update(self.db.execute(f"SELECT id, line FROM ids WHERE id IN ({marks})", part))  # noqa: S608
        return found
