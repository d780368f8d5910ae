"""Ending jobs early on the real Redis: expiry past the completion window, cancellation of a running job."""

import pytest

from broker.exceptions import InputError
from broker.jobs import Item, JobStatus
from broker.lifecycle import cancel, expire_if_due, parse_window
from broker.store import JobStore
from tests.broker.test_store import SPEC, result
from workers.pipeline import sweep_job


def running_job(store: JobStore, n: int, window: float | None) -> str:
    job = store.create(SPEC, window=window)
    store.put_chunk(job, 0, [Item(custom_id=f"c{i}", text="t", line=i + 1) for i in range(n)])
    store.finish_intake(job, total=n, chunks=1)
    return job


def test_a_job_past_its_window_expires_keeping_what_it_answered(store: JobStore) -> None:
    swept: list[str] = []
    on_time = running_job(store, 2, window=3600)
    no_window = running_job(store, 2, window=None)
    late = running_job(store, 3, window=-1)
    store.record(late, results=[result("c0", 1)])
    for job in (on_time, no_window, late):
        expire_if_due(store, swept.append, job)
    assert swept == [late]
    assert store.status(late) is JobStatus.FINALIZING
    assert store.status(on_time) is store.status(no_window) is JobStatus.IN_PROGRESS
    store.record(late, results=[result("c1", 2)])  # a chunk in flight still lands, and does not complete the job
    assert sweep_job(store, late) is JobStatus.EXPIRED
    view = store.get(late)
    assert (view.status, view.counts.completed, view.counts.failed) == (JobStatus.EXPIRED, 2, 1)
    assert [(e["custom_id"], e["code"]) for e in store.iter_errors(late)] == [("c2", "batch_expired")]
    expire_if_due(store, swept.append, late)  # ended: nothing more
    assert swept == [late]


def test_cancelling_a_running_job_sweeps_it_once_in_effect(store: JobStore) -> None:
    swept: list[str] = []
    job = running_job(store, 2, window=None)
    assert cancel(store, swept.append, job)
    assert cancel(store, swept.append, job)  # asked again while cancelling: the sweep is sent again
    assert swept == [job, job]
    assert sweep_job(store, job) is JobStatus.CANCELLED
    assert sweep_job(store, job) is None  # the second sweep finds the job ended
    assert not cancel(store, swept.append, job)
    assert store.get(job).counts.failed == 2


@pytest.mark.parametrize(("window", "seconds"), [("24h", 86400), ("90m", 5400), ("2s", 2)])
def test_completion_windows(window: str, seconds: int) -> None:
    assert parse_window(window, 7 * 86400) == seconds


@pytest.mark.parametrize("window", ["", "24", "1d", "0s", "-1h", "200h"])
def test_bad_completion_windows_are_refused(window: str) -> None:
    with pytest.raises(InputError, match="completion_window"):
        parse_window(window, 7 * 86400)
