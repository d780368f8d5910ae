"""Intake into the real Redis: duplicates found in the store, an intake that runs again, a job ended meanwhile."""

import json
from pathlib import Path

from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.submit import submit_file
from cascade.workers.items import ErrorCode
from cascade.workers.jobs import JobSpec, JobStatus
from cascade.workers.lifecycle import cancel, sweep_job
from tests.conftest import write_jsonl

SPEC = JobSpec(model_path="m", model_sha256="s", threshold=0.5, top_k=3, llm_model="x")


def lines(n: int) -> list[dict[str, object] | str]:
    return [{"custom_id": f"c{i}", "text": f"text {i}"} for i in range(n)]


def test_duplicates_are_refused_after_the_first_across_chunks(store: RedisJobStore, tmp_path: Path) -> None:
    rows = [*lines(3), {"custom_id": "c0", "text": "again"}, {"custom_id": "d", "text": "x" * 80}, *lines(5)[3:]]
    rows.append({"custom_id": "d", "text": "a refused line does not reserve its custom_id"})
    sent: list[int] = []
    job = submit_file(
        store,
        lambda _, i: sent.append(i),
        Settings(chunk_size=2, max_text_chars=60),
        write_jsonl(tmp_path / "in.jsonl", rows),
        SPEC,
    )
    errors = {e.line: e.code for e in store.iter_errors(job)}
    assert errors == {4: ErrorCode.DUPLICATE_ID.value, 5: ErrorCode.TEXT_TOO_LONG.value}
    items = [item for i in sent for item in store.chunk(job, i)]
    assert [i.custom_id for i in items] == ["c0", "c1", "c2", "c3", "c4", "d"]
    assert store.get(job).counts.total == 8


def test_an_intake_that_runs_again_enqueues_only_what_it_had_not(store: RedisJobStore, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [*lines(5), "{broken", {"custom_id": "c1", "text": "dup"}])
    settings = Settings(chunk_size=2)
    job = store.create(SPEC)
    first: list[int] = []
    submit_file(store, lambda _, i: first.append(i), settings, path, SPEC, job)
    assert first == [0, 1, 2]
    chunks = [store.chunk(job, i) for i in first]
    # The worker died after enqueueing chunk 0 only: the redelivered intake enqueues chunks 1 and 2.
    store.redis.hset(f"cascade:job:{job}", mapping={"chunks_sent": 1, "status": "validating"})
    store.redis.hdel(f"cascade:job:{job}", "total")
    again: list[int] = []
    submit_file(store, lambda _, i: again.append(i), settings, path, SPEC, job)
    assert again == [1, 2]
    assert [store.chunk(job, i) for i in first] == chunks
    assert sorted(e.line for e in store.iter_errors(job)) == [6, 7]  # the same two refusals, once each
    view = store.get(job)
    assert (view.status, view.counts.total, view.counts.failed) == (JobStatus.IN_PROGRESS, 7, 2)


def test_a_job_cancelled_while_its_input_is_read_is_swept_when_it_is_stored(
    store: RedisJobStore, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [*lines(5), "{broken"])
    job = store.create(SPEC)
    swept: list[str] = []
    assert cancel(store, swept.append, job)  # validating: the sweep waits for the intake
    assert swept == []
    assert store.status(job) is JobStatus.CANCELLING
    sent: list[int] = []
    submit_file(store, lambda _, i: sent.append(i), Settings(chunk_size=2), path, SPEC, job, sweep=swept.append)
    assert sent == []
    assert swept == [job]
    assert sweep_job(store, job) is JobStatus.CANCELLED
    assert sweep_job(store, job) is None  # delivered again: nothing more
    view = store.get(job)
    assert (view.status, view.counts.completed, view.counts.failed, view.counts.total) == (JobStatus.CANCELLED, 0, 6, 6)
    codes = sorted((e.line, e.code) for e in store.iter_errors(job))
    assert codes == [
        (1, "batch_cancelled"),
        (2, "batch_cancelled"),
        (3, "batch_cancelled"),
        (4, "batch_cancelled"),
        (5, "batch_cancelled"),
        (6, "invalid_json"),
    ]
    assert json.loads(store.redis.hget(f"cascade:job:{job}:errors", "c0") or "{}")["message"].startswith("line 1: ")
