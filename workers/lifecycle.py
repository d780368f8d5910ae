"""How a job ends, in one place: it completes, fails, is cancelled, or expires; a chunk that cannot run fails.

- **Complete**: the store completes a running job atomically when its last record is written
  (``JobStore.record`` returns ``finished``); ``finished`` then counts what only the end can count.
- **Fail**: a job with no valid line, or whose input cannot be read, fails (``fail_job``).
- **Cancel, expire**: the job first takes an interim status (``cancelling``, ``finalizing``) and no new chunk
  starts. A sweep (``sweep_job``, run by a worker's sweep task) then writes every item still without a record to
  the error file with the end's code, and gives the job its final status (``cancelled``, ``expired``). The sweep
  waits for the intake: a job asked to end while its input is read is swept once the whole input is stored.
- **Fail a chunk**: every item of a chunk that cannot be processed goes to the error file (``fail_chunk``).
- **Reap**: nobody watches a job, so the reaper does (``reap``, run periodically by one worker at a time): it
  expires jobs past their window, re-sends the missing work of a job that made no progress for a while (its tasks
  were lost), and fails it, sweeping what is left, when re-sending did not help or its intake stopped.

Whatever the ending, every input line ends exactly once in the results or the errors.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from cascade.workers import instrument
from cascade.workers.items import ErrorCode, ItemError
from cascade.workers.jobs import JobStatus, JobView
from cascade.workers.storage import IntakeOutcome, JobStore, Recorded

Sweep = Callable[[str], None]
"""Sends the sweep task of a job."""

_END_CODES = {
    JobStatus.CANCELLED: ErrorCode.BATCH_CANCELLED,
    JobStatus.EXPIRED: ErrorCode.BATCH_EXPIRED,
    JobStatus.FAILED: ErrorCode.BATCH_FAILED,
}


def finished(store: JobStore, job_id: str, recorded: Recorded) -> None:
    """After a write: if it completed the job, count the lines refused at intake, once, by the worker that ended
    it."""
    if recorded.finished:
        instrument.job_ended(store.invalid_count(job_id))


def fail_job(store: JobStore, job_id: str, reason: str) -> bool:
    """End a job as failed, saying why; False when it had already ended."""
    if not store.end(job_id, JobStatus.FAILED, error=reason):
        return False
    instrument.job_ended(store.invalid_count(job_id))
    return True


def intake_finished(store: JobStore, sweep: Sweep | None, job_id: str, total: int, chunks: int) -> None:
    """The whole input is read and stored: start the job, fail it (no valid line), or sweep it (it was asked to
    end meanwhile)."""
    outcome = store.finish_intake(job_id, total, chunks)
    if outcome is IntakeOutcome.EMPTY:
        fail_job(store, job_id, "the input has no valid line")
    elif outcome is IntakeOutcome.SWEEP and sweep is not None:
        sweep(job_id)


def fail_chunk(store: JobStore, job_id: str, index: int, code: ErrorCode, message: str) -> None:
    """Record every item of a chunk that has no record yet as failed (the store keeps the first record of each),
    when the chunk cannot be processed at all or its job ends early. Each message names its line."""
    errors = [
        ItemError(line=i.line, custom_id=i.custom_id, code=code, message=f"line {i.line}: {message}")
        for i in store.chunk(job_id, index)
    ]
    recorded = store.record(job_id, index, errors=errors, whole=True)
    instrument.failed_items(recorded.errors, tier="specialist")
    finished(store, job_id, recorded)


def sweep_job(store: JobStore, job_id: str) -> JobStatus | None:
    """End a job that is ending early: every item still without a record goes to the error file with the end's
    code, then the job takes its final status. Running it again changes nothing. Returns the final status, or
    None when the job was not ending."""
    final = store.ending(job_id)
    if final is None:
        return None
    for index in range(store.chunk_count(job_id)):
        message = f"the batch was {final.value} before this item was processed"
        fail_chunk(store, job_id, index, _END_CODES[final], message)
    if store.end(job_id, final):
        instrument.job_ended(store.invalid_count(job_id))
    return final


def cancel(store: JobStore, sweep: Sweep, job_id: str) -> bool:
    """Ask a job to end as cancelled; False when it was not running (it had ended, or is expiring)."""
    if store.request_end(job_id, JobStatus.CANCELLED):
        sweep(job_id)
        return True
    if store.status(job_id) is not JobStatus.CANCELLING:
        return False
    if store.get(job_id).counts.total is not None:  # asked again: resend the sweep, in case the first was lost
        sweep(job_id)
    return True


def expire_if_due(store: JobStore, sweep: Sweep, job_id: str) -> None:
    """End the job as expired if its completion window has passed and it is still running."""
    if store.request_end(job_id, JobStatus.EXPIRED, only_if_due=True):
        sweep(job_id)


Enqueue = Callable[[str, int], None]
"""Sends chunk ``index`` of job ``job_id`` to the specialist queue."""


@dataclass(frozen=True)
class Reaping:
    """How the reaper treats a job that does not move, and what it may send."""

    stall_seconds: float
    """A job that made no progress for this long has lost work (longer than any chunk can legitimately take)."""
    max_reaps: int
    """Re-sends of a stalled job's missing work before it fails."""
    enqueue: Enqueue
    sweep: Sweep
    resend_intake: Callable[[str], bool]
    """Sends a job's intake task again if its input is a stored file (an API batch); False when there is none (a
    CLI client read it, and is gone)."""


def missing_chunks(store: JobStore, job_id: str) -> list[int]:
    """The chunks of a job that still have items without a record."""
    return [
        index
        for index in range(store.chunk_count(job_id))
        if store.unrecorded(job_id, index, store.chunk(job_id, index).custom_id)
    ]


def _intake_reach(store: JobStore, view: JobView) -> tuple[int, int]:
    """How far an intake that stopped got: the chunks it stored (those it sent, and one more if it was stored but
    not sent) and the input line up to which every line has its place (an item in a stored chunk, or a refusal)."""
    unsent = store.chunk(view.id, view.chunks_sent)
    if unsent:
        return view.chunks_sent + 1, max(view.lines_read, unsent.line[-1])
    return view.chunks_sent, view.lines_read


class Reaped(str, Enum):
    """What the reaper did to a job."""

    NOTHING = "nothing"
    EXPIRED = "expired"
    RESENT = "resent"
    FAILED = "failed"
    SWEPT = "swept"
    """Its sweep (cancelling, finalizing) was sent again."""


def reap(store: JobStore, reaping: Reaping, job_id: str, now: float | None = None) -> Reaped:
    """Look at one job that has not ended, and do what it needs."""
    now = time.time() if now is None else now
    view = store.get(job_id)
    if view.expires_at is not None and view.expires_at <= now and view.status.accepts_work:
        expire_if_due(store, reaping.sweep, job_id)
        return Reaped.EXPIRED
    if now - (view.progress_at or view.created_at) < reaping.stall_seconds:
        return Reaped.NOTHING
    if view.status is JobStatus.VALIDATING:
        return _reap_intake(store, reaping, view)
    if view.status is not JobStatus.IN_PROGRESS:  # cancelling or finalizing: its sweep was lost
        store.count_reap(job_id)
        reaping.sweep(job_id)
        return Reaped.SWEPT
    if store.count_reap(job_id) > reaping.max_reaps:
        reason = f"no progress after {reaping.max_reaps} re-sends of its missing work"
        if store.request_end(job_id, JobStatus.FAILED, reason=reason):
            reaping.sweep(job_id)
        return Reaped.FAILED
    for index in missing_chunks(store, job_id):
        reaping.enqueue(job_id, index)
    return Reaped.RESENT


def _reap_intake(store: JobStore, reaping: Reaping, view: JobView) -> Reaped:
    """A job whose input stopped being read: its intake task is sent again (an API batch), or the job fails
    (a CLI client that died)."""
    if store.count_reap(view.id) <= reaping.max_reaps and reaping.resend_intake(view.id):
        return Reaped.RESENT
    reason = f"the intake made no progress for {reaping.stall_seconds:.0f} s (did the submitting client die?)"
    fail_intake(store, reaping.sweep, view.id, reason)
    return Reaped.FAILED


def fail_intake(store: JobStore, sweep: Sweep, job_id: str, reason: str) -> None:
    """The input cannot be read to its end: the job fails. The items already stored are swept to the error file
    (``batch_failed``), and the job's error names the line after which nothing was stored."""
    chunks, last_line = _intake_reach(store, store.get(job_id))
    unread = f"{reason}; the input lines after line {last_line} were not read"
    store.request_end(job_id, JobStatus.FAILED, reason=unread)
    intake_finished(store, sweep, job_id, last_line, chunks)
