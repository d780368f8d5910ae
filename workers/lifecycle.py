"""How a job ends, in one place: it completes, fails, is cancelled, or expires; a chunk that cannot run fails.

- **Complete**: the store completes a running job atomically when its last record is written
  (``JobStore.record`` returns ``finished``); ``finished`` then counts what only the end can count.
- **Fail**: a job with no valid line, or whose input cannot be read, fails (``fail_job``).
- **Cancel, expire**: the job first takes an interim status (``cancelling``, ``finalizing``) and no new chunk
  starts. A sweep (``sweep_job``, run by a worker's sweep task) then writes every item still without a record to
  the error file with the end's code, and gives the job its final status (``cancelled``, ``expired``). The sweep
  waits for the intake: a job asked to end while its input is read is swept once the whole input is stored.
- **Fail a chunk**: every item of a chunk that cannot be processed goes to the error file (``fail_chunk``).

Whatever the ending, every input line ends exactly once in the results or the errors.
"""

import re
from collections.abc import Callable

from cascade.workers import instrument
from cascade.workers.errors import InputError
from cascade.workers.items import ErrorCode, ItemError
from cascade.workers.jobs import JobStatus
from cascade.workers.storage import IntakeOutcome, JobStore, Recorded

Sweep = Callable[[str], None]
"""Sends the sweep task of a job."""

_END_CODES = {JobStatus.CANCELLED: ErrorCode.BATCH_CANCELLED, JobStatus.EXPIRED: ErrorCode.BATCH_EXPIRED}
_WINDOW = re.compile(r"^(\d+)([smh])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_window(window: str, max_seconds: int) -> int:
    """A completion window (``24h``, ``90m``, ``30s``) in seconds; at most ``max_seconds`` (the job's lifetime)."""
    match = _WINDOW.match(window.strip())
    if match is None:
        raise InputError(f"completion_window {window!r}: expected a duration such as 24h, 90m or 30s")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 0 < seconds <= max_seconds:
        raise InputError(f"completion_window {window!r}: must be between 1s and {max_seconds}s (CASCADE_JOB_TTL)")
    return seconds


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
    recorded = store.record(job_id, errors=errors)
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
