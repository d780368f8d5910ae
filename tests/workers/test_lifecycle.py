"""How a job ends (the in-memory store: no Redis): expiry, cancellation, a job with no valid line, failed chunks."""

import pytest

from cascade.workers.errors import InputError
from cascade.workers.items import ErrorCode
from cascade.workers.jobs import JobStatus, parse_window
from cascade.workers.lifecycle import (
    Reaped,
    Reaping,
    cancel,
    expire_if_due,
    fail_chunk,
    fail_job,
    intake_finished,
    reap,
    sweep_job,
)
from cascade.workers.memory import MemoryJobStore
from tests.workers.store_contract import SPEC, error, items, result, running_job


@pytest.fixture
def store() -> MemoryJobStore:
    return MemoryJobStore()


def test_a_job_past_its_window_expires_keeping_what_it_answered(store: MemoryJobStore) -> None:
    swept: list[str] = []
    on_time = running_job(store, 2, window=3600)
    no_window = running_job(store, 2, window=None)
    late = running_job(store, 3, window=-1)
    store.record(late, 0, results=[result("c0", 1)])
    for job in (on_time, no_window, late):
        expire_if_due(store, swept.append, job)
    assert swept == [late]
    assert store.status(late) is JobStatus.FINALIZING
    assert store.status(on_time) is store.status(no_window) is JobStatus.IN_PROGRESS
    store.record(late, 0, results=[result("c1", 2)])  # a chunk in flight still lands, and does not complete the job
    assert sweep_job(store, late) is JobStatus.EXPIRED
    view = store.get(late)
    assert (view.status, view.counts.completed, view.counts.failed) == (JobStatus.EXPIRED, 2, 1)
    assert [(e.custom_id, e.code) for e in store.iter_errors(late)] == [("c2", ErrorCode.BATCH_EXPIRED)]
    expire_if_due(store, swept.append, late)  # ended: nothing more
    assert swept == [late]


def test_cancelling_a_running_job_sweeps_it_once_in_effect(store: MemoryJobStore) -> None:
    swept: list[str] = []
    job = running_job(store, 2, window=None)
    assert cancel(store, swept.append, job)
    assert cancel(store, swept.append, job)  # asked again while cancelling: the sweep is sent again
    assert swept == [job, job]
    assert sweep_job(store, job) is JobStatus.CANCELLED
    assert sweep_job(store, job) is None  # the second sweep finds the job ended
    assert not cancel(store, swept.append, job)
    assert store.get(job).counts.failed == 2


@pytest.mark.parametrize(("window", "seconds"), [("24h", 86400), ("90m", 5400), ("2s", 2), (" 24h ", 86400)])
def test_completion_windows(window: str, seconds: int) -> None:
    assert parse_window(window, 7 * 86400) == seconds


@pytest.mark.parametrize("window", ["", "24", "1d", "0s", "-1h", "200h", "\uff11h", "2\u0664h"])
def test_bad_completion_windows_are_refused(window: str) -> None:
    with pytest.raises(InputError, match="completion_window"):
        parse_window(window, 7 * 86400)


def test_a_job_with_no_valid_line_fails_saying_why(store: MemoryJobStore) -> None:
    job = store.create(SPEC)
    store.put_invalid(job, [error(None, 1, ErrorCode.INVALID_JSON)])
    intake_finished(store, None, job, total=1, chunks=0)
    view = store.get(job)
    assert (view.status, view.error, view.counts.failed) == (JobStatus.FAILED, "the input has no valid line", 1)
    assert not fail_job(store, job, "again")  # ended once


def test_a_job_asked_to_end_during_intake_is_swept_when_the_input_is_stored(store: MemoryJobStore) -> None:
    swept: list[str] = []
    job = store.create(SPEC)
    assert cancel(store, swept.append, job)
    assert swept == []  # the input is not read yet
    store.put_chunk(job, 0, items(2))
    intake_finished(store, swept.append, job, total=2, chunks=1)
    assert swept == [job]
    assert sweep_job(store, job) is JobStatus.CANCELLED
    assert [e.code for e in store.iter_errors(job)] == [ErrorCode.BATCH_CANCELLED] * 2


def test_a_failed_chunk_fails_only_its_unrecorded_items_naming_their_lines(store: MemoryJobStore) -> None:
    job = running_job(store, 3)
    store.record(job, 0, results=[result("c1", 2)])
    fail_chunk(store, job, 0, ErrorCode.MODEL_ERROR, "the model cannot be loaded")
    errors = {e.custom_id: e for e in store.iter_errors(job)}
    assert sorted(errors) == ["c0", "c2"]
    assert errors["c2"].message == "line 3: the model cannot be loaded"
    assert store.status(job) is JobStatus.COMPLETED


class Sent:
    """What the reaper sent: chunks, sweeps, intakes (recorded, as a broker would receive them)."""

    def __init__(self, intake_files: set[str] | None = None) -> None:
        self.chunks: list[tuple[str, int]] = []
        self.sweeps: list[str] = []
        self.intakes: list[str] = []
        self.files = intake_files or set()

    def reaping(self, stall: float = 10, max_reaps: int = 2) -> Reaping:
        return Reaping(
            stall_seconds=stall,
            max_reaps=max_reaps,
            enqueue=lambda job, index: self.chunks.append((job, index)),
            sweep=self.sweeps.append,
            resend_intake=self.resend,
        )

    def resend(self, job_id: str) -> bool:
        if job_id in self.files:
            self.intakes.append(job_id)
            return True
        return False


def later(store: MemoryJobStore, job: str, seconds: float) -> float:
    view = store.get(job)
    return (view.progress_at or view.created_at) + seconds


def test_the_reaper_leaves_a_moving_job_alone_and_expires_one_nobody_looks_at(store: MemoryJobStore) -> None:
    sent = Sent()
    moving, late = running_job(store, 2), running_job(store, 2, window=-1)
    assert reap(store, sent.reaping(), moving, now=later(store, moving, 5)) is Reaped.NOTHING
    assert reap(store, sent.reaping(), late) is Reaped.EXPIRED
    assert sent.sweeps == [late]
    assert store.status(late) is JobStatus.FINALIZING


def test_a_stalled_job_gets_its_missing_chunks_again_then_fails(store: MemoryJobStore) -> None:
    sent = Sent()
    job = store.create(SPEC)
    store.put_chunk(job, 0, items(2))
    store.put_chunk(job, 1, items(2, start=2))
    store.finish_intake(job, total=4, chunks=2)
    store.record(job, 0, results=[result("c0", 1), result("c1", 2)])  # chunk 0 done, chunk 1 lost
    for _ in range(2):
        assert reap(store, sent.reaping(), job, now=later(store, job, 11)) is Reaped.RESENT
    assert sent.chunks == [(job, 1), (job, 1)]
    assert reap(store, sent.reaping(), job, now=later(store, job, 11)) is Reaped.FAILED
    assert sent.sweeps == [job]
    assert sweep_job(store, job) is JobStatus.FAILED
    view = store.get(job)
    assert view.error == "no progress after 2 re-sends of its missing work"
    assert [(e.custom_id, e.code) for e in store.iter_errors(job)] == [
        ("c2", ErrorCode.BATCH_FAILED),
        ("c3", ErrorCode.BATCH_FAILED),
    ]
    assert (view.counts.completed, view.counts.failed) == (2, 2)


def test_a_job_whose_cli_client_died_mid_intake_fails_naming_the_unread_lines(store: MemoryJobStore) -> None:
    sent = Sent()
    job = store.create(SPEC)
    store.put_chunk(job, 0, items(3))
    store.chunk_sent(job, 0, lines_read=4)  # line 4 was refused
    store.put_invalid(job, [error(None, 4, ErrorCode.INVALID_JSON)])
    store.put_chunk(job, 1, items(2, start=4))  # lines 5 and 6 stored, then the client died before sending them
    assert reap(store, sent.reaping(), job, now=later(store, job, 11)) is Reaped.FAILED
    assert sent.sweeps == [job]
    assert sweep_job(store, job) is JobStatus.FAILED
    view = store.get(job)
    assert view.error is not None
    assert "the input lines after line 6 were not read" in view.error  # the stored chunk counts
    assert sorted(e.line for e in store.iter_errors(job)) == [1, 2, 3, 4, 5, 6]


def test_a_stalled_api_intake_is_sent_again(store: MemoryJobStore) -> None:
    job = store.create(SPEC)
    sent = Sent(intake_files={job})
    assert reap(store, sent.reaping(), job, now=later(store, job, 11)) is Reaped.RESENT
    assert sent.intakes == [job]
    assert store.status(job) is JobStatus.VALIDATING


def test_a_lost_sweep_is_sent_again(store: MemoryJobStore) -> None:
    sent = Sent()
    job = running_job(store, 2)
    cancel(store, lambda _: None, job)  # the sweep task was lost
    assert reap(store, sent.reaping(), job, now=later(store, job, 11)) is Reaped.SWEPT
    assert sent.sweeps == [job]
