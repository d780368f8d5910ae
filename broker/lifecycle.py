"""Ending a job early: cancellation by its owner, expiry when its completion window has passed.

Both go the same way. The job first takes an interim status (``cancelling``, ``finalizing``): no new chunk starts.
Then a sweep task (``workers.pipeline.sweep_job``) writes every item still without a record to the error file,
with the end's code, and gives the job its final status (``cancelled``, ``expired``). The sweep waits for the
intake: a job asked to end while its input is read is swept when the whole input is stored.
"""

import re
from collections.abc import Callable

from broker.exceptions import InputError
from broker.jobs import JobStatus
from broker.store import JobStore

Sweep = Callable[[str], None]
"""Sends the sweep task of a job."""

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


def cancel(store: JobStore, sweep: Sweep, job_id: str) -> bool:
    """Ask a job to end as cancelled; False when it was not running (it had ended, or is expiring)."""
    if store.request_end(job_id, JobStatus.CANCELLED):
        sweep(job_id)
        return True
    if store.status(job_id) is not JobStatus.CANCELLING:
        return False
    (total,) = store.fields(job_id, "total")
    if total is not None:  # asked again: send the sweep again, in case the first was lost (it runs once in effect)
        sweep(job_id)
    return True


def expire_if_due(store: JobStore, sweep: Sweep, job_id: str) -> None:
    """End the job as expired if its completion window has passed and it is still running."""
    if store.request_end(job_id, JobStatus.EXPIRED, only_if_due=True):
        sweep(job_id)
