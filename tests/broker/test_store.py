"""The job store against the real Redis (the tests' own database)."""

from broker.jobs import Item, ItemError, ItemResult, JobSpec, JobStatus, Tier
from broker.store import JobStore
from workers.policy import Route

SPEC = JobSpec(model_path="m", model_sha256="s", threshold=0.5, top_k=3, llm_model="x")


def result(cid: str, line: int, label: str = "a", gold: str | None = "a", tier: Tier = Tier.SPECIALIST) -> ItemResult:
    return ItemResult(
        custom_id=cid,
        line=line,
        label=label,
        confidence=0.9,
        tier=tier,
        route=Route.ACCEPT,
        specialist_label=label,
        specialist_confidence=0.9,
        gold=gold,
        correct=None if gold is None else label == gold,
    )


def started_job(store: JobStore, n: int) -> str:
    job = store.create(SPEC)
    store.put_chunk(job, 0, [Item(custom_id=f"c{i}", text="t", line=i + 1) for i in range(n)])
    store.finish_intake(job, total=n, chunks=1)
    return job


def test_records_are_written_once_and_counted_once(store: JobStore) -> None:
    job = started_job(store, 3)
    first = store.record(job, results=[result("c0", 1), result("c1", 2, label="b")])
    assert [r.custom_id for r in first.results] == ["c0", "c1"]
    # the same chunk again, and a late different answer for c0: nothing changes
    again = store.record(job, results=[result("c0", 1, label="z"), result("c1", 2, label="b"), result("c2", 3)])
    assert [r.custom_id for r in again.results] == ["c2"]
    assert store.record(job, errors=[ItemError(line=1, custom_id="c0", code="x", message="late")]).errors == []
    view = store.get(job)
    assert (view.counts.completed, view.counts.failed, view.status) == (3, 0, JobStatus.COMPLETED)
    assert again.finished
    assert {r["custom_id"]: r["label"] for r in store.iter_results(job)} == {"c0": "a", "c1": "b", "c2": "a"}
    stats = store.tier_stats(job)["specialist"]
    assert (stats.answered, stats.labelled, stats.correct) == (3, 3, 2)


def test_job_completes_when_every_line_has_a_record(store: JobStore) -> None:
    job = started_job(store, 2)
    store.put_invalid(job, [ItemError(line=3, custom_id=None, code="invalid_json", message="line 3: not JSON")])
    store.redis.hset(f"cascade:job:{job}", "total", 3)
    store.record(job, results=[result("c0", 1)])
    assert store.get(job).status is JobStatus.IN_PROGRESS
    assert store.record(job, errors=[ItemError(line=2, custom_id="c1", code="llm_error", message="down")]).finished
    view = store.get(job)
    assert view.status is JobStatus.COMPLETED
    assert (view.counts.total, view.counts.completed, view.counts.failed) == (3, 1, 2)
    assert sorted(e["line"] for e in store.iter_errors(job)) == [2, 3]
    assert store.chunk(job, 0) == []  # chunks are dropped once the job has ended


def test_job_with_no_valid_line_fails_at_validation(store: JobStore) -> None:
    job = store.create(SPEC)
    store.put_invalid(job, [ItemError(line=1, custom_id=None, code="invalid_json", message="line 1: not JSON")])
    store.finish_intake(job, total=1, chunks=0)
    view = store.get(job)
    assert view.status is JobStatus.FAILED
    assert view.error == "the input has no valid line"


def test_cancel_is_final_and_keeps_finished_records(store: JobStore) -> None:
    job = started_job(store, 2)
    store.record(job, results=[result("c0", 1)])
    assert store.end(job, JobStatus.CANCELLED)
    assert not store.end(job, JobStatus.FAILED)
    store.record(job, results=[result("c1", 2)])  # a chunk in flight at cancellation still lands
    view = store.get(job)
    assert view.status is JobStatus.CANCELLED
    assert sorted(r["custom_id"] for r in store.iter_results(job)) == ["c0", "c1"]


def test_budget_reservation_is_once_per_chunk_and_never_overspent(store: JobStore) -> None:
    job = started_job(store, 1)
    assert store.reserve_budget(job, 0, [0.4, 0.4, 0.4], budget=1.0) == 2
    assert store.reserve_budget(job, 0, [0.4, 0.4, 0.4], budget=1.0) == 2  # the chunk again: same answer
    assert store.reserve_budget(job, 1, [0.1, 0.3], budget=1.0) == 1
    assert store.reserve_budget(job, 2, [0.05], budget=1.0) == 1
    assert store.reserve_budget(job, 3, [0.5], budget=1.0) == 0


def test_mark_sent_returns_only_ids_not_marked_before(store: JobStore) -> None:
    job = started_job(store, 3)
    assert store.mark_sent(job, ["c0", "c1"], ["c2"]) == {"c0", "c1", "c2"}
    assert store.mark_sent(job, ["c0", "c1"], ["c2"]) == set()
    assert store.get(job).counts.escalated == 2  # explored items are not escalations
