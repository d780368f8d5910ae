"""The job store's contract: what the pipeline and a job's lifecycle need from it, whatever holds the data.

``cascade.broker.store.RedisJobStore`` implements it for production; ``cascade.workers.memory.MemoryJobStore``
for unit tests. One contract test class runs over both (``tests/workers/store_contract.py``).

The promise every implementation keeps: records are keyed by job, chunk and ``custom_id``, the first record
written for an item wins, an item is never in both the results and the errors, and counters move only for new
records. A chunk that runs twice changes nothing. Once every item of a chunk has its record, a store may move the
chunk out of its fast storage (the Redis store commits it to the result store): its items are then no longer
returned by ``chunk``, and no record is written for it again.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from cascade.workers.columns import ItemColumns
from cascade.workers.items import Item, ItemError, ItemResult
from cascade.workers.jobs import JobSpec, JobStats, JobStatus, JobView


@dataclass(frozen=True)
class Recorded:
    """What one ``record`` call wrote: only records new in the store (a chunk that runs again writes none)."""

    results: Sequence[ItemResult]
    errors: list[ItemError]
    finished: bool
    """This call completed the job (true for exactly one call per job)."""


def chunk_task(tier: str, chunk: int) -> str:
    """The name a chunk's task is counted by (``JobStore.count_delivery``): ``specialist:3``, ``llm:3``."""
    return f"{tier}:{chunk}"


class IntakeOutcome(str, Enum):
    """What ``finish_intake`` found once the whole input was read."""

    STARTED = "started"
    """The job runs (``in_progress``)."""
    EMPTY = "empty"
    """No valid line: the job must fail."""
    SWEEP = "sweep"
    """The job was asked to end while its input was read: its sweep is due now."""
    ENDED = "ended"
    """The job had already ended."""


class JobStore(Protocol):
    """Jobs, their chunks of items, and one record per input line."""

    # --- jobs ---
    def create(
        self, spec: JobSpec, owner: str = "", extra: dict[str, str] | None = None, window: float | None = None
    ) -> str:
        """A new job, validating; ``window``: seconds until it expires if it has not ended."""
        ...

    def status(self, job_id: str) -> JobStatus:
        """``NotFoundError`` for an unknown job (likewise ``spec`` and ``get``)."""
        ...

    def spec(self, job_id: str) -> JobSpec: ...

    def get(self, job_id: str) -> JobView: ...

    def stats(self, job_id: str) -> JobStats: ...

    def add_seconds(self, job_id: str, tier: str, seconds: float) -> None: ...

    def reserve_budget(self, job_id: str, chunk: int, costs: list[float], budget: float) -> int:
        """How many of ``costs`` (in order) fit in what is left of the job's budget; reserved once per chunk."""
        ...

    # --- intake ---
    def put_chunk(self, job_id: str, index: int, items: Sequence[Item]) -> None: ...

    def chunk(self, job_id: str, index: int) -> ItemColumns:
        """The chunk's items (as columns) while any has no record; none once the chunk was committed, or its keys
        expired."""
        ...

    def chunk_count(self, job_id: str) -> int: ...

    def chunks_done(self, job_id: str) -> int:
        """How many of the job's stored chunks have a record for every item (the intake paces itself by it)."""
        ...

    def put_invalid(self, job_id: str, errors: Sequence[ItemError]) -> None:
        """Lines refused at intake, keyed by line number."""
        ...

    def invalid_count(self, job_id: str) -> int: ...

    def chunks_sent(self, job_id: str) -> int:
        """How many chunks the intake has already stored and enqueued (an intake that runs again skips them)."""
        ...

    def chunk_sent(self, job_id: str, index: int, lines_read: int) -> None:
        """Chunk ``index`` is stored and enqueued, and every input line up to ``lines_read`` has its place (an item
        in a stored chunk, or a refusal): the intake's progress."""
        ...

    def finish_intake(self, job_id: str, total: int, chunks: int) -> IntakeOutcome:
        """Record how many lines and chunks the job has; a validating job with chunks starts running."""
        ...

    # --- records ---
    def mark_sent(self, job_id: str, chunk: int, escalated: Sequence[str], explored: Sequence[str] = ()) -> set[str]:
        """Count a chunk's items that went to the LLM, once per chunk; returns them when counted now, else none (the
        chunk ran before)."""
        ...

    def unrecorded(self, job_id: str, chunk: int, custom_ids: Sequence[str]) -> list[str]:
        """The ids among ``custom_ids`` (items of ``chunk``) that have neither a result nor an error yet."""
        ...

    def record(
        self,
        job_id: str,
        chunk: int,
        results: Sequence[ItemResult] = (),
        errors: Sequence[ItemError] = (),
        whole: bool = False,
    ) -> Recorded:
        """Write the records of the chunk's items that have none yet; returns the new ones; completes the job when
        every line has its record. ``whole``: these are records of every item of the chunk (a store may then commit
        them at once, when the chunk has no record yet)."""
        ...

    def iter_results(self, job_id: str) -> Iterator[ItemResult]:
        """Chunk by chunk, each in line order."""
        ...

    def iter_errors(self, job_id: str) -> Iterator[ItemError]:
        """The lines refused at intake, then the items that failed, chunk by chunk, each in line order."""
        ...

    def texts(self, job_id: str, custom_ids: Sequence[str]) -> dict[str, str]:
        """The texts of those of ``custom_ids`` that are LLM-answered items of the job (``cascade learn``), kept
        until the job's keys expire."""
        ...

    # --- ending ---
    def request_end(self, job_id: str, final: JobStatus, only_if_due: bool = False, reason: str | None = None) -> bool:
        """Ask a running job to end early as ``final`` (cancelled through cancelling; expired or failed through
        finalizing; with ``only_if_due`` only if its completion window has passed); ``reason`` becomes the job's
        error. True when its sweep is due now; False when nothing was to be done or the intake will ask for the
        sweep once the input is read."""
        ...

    def ending(self, job_id: str) -> JobStatus | None:
        """The final status a job that is ending early is headed for; None for a job that is not ending."""
        ...

    def end(self, job_id: str, status: JobStatus, error: str | None = None) -> bool:
        """Move a job to a final status; False when it had already ended."""
        ...

    # --- the reaper's view ---
    def active_ids(self) -> list[str]:
        """The jobs that have not ended."""
        ...

    def count_delivery(self, job_id: str, task: str) -> int:
        """Count one more delivery of a task of the job (``task`` names it, e.g. ``specialist:3``); returns the
        count, this delivery included."""
        ...

    def count_reap(self, job_id: str) -> int:
        """Count one more re-send of the job's missing work (and note it as progress); returns the count."""
        ...
