"""The ``JobStore`` contract, one test class for every implementation (as huey's storage tests do).

Subclassed with a ``store`` fixture by ``tests/workers/test_memory_store.py`` (in memory, no Redis) and
``tests/broker/test_store.py`` (the real Redis, the tests' own database).
"""

import pytest

from cascade.workers.blocks import SpecialistAnswers
from cascade.workers.errors import NotFoundError
from cascade.workers.items import AnswerSource, ErrorCode, Item, ItemError, ItemResult, Route, Tier
from cascade.workers.jobs import JobSpec, JobStatus
from cascade.workers.storage import IntakeOutcome, JobStore

SPEC = JobSpec(model_path="m", model_sha256="s", threshold=0.5, top_k=3, llm_model="x")


def result(
    cid: str,
    line: int,
    label: str = "a",
    gold: str | None = "a",
    tier: Tier = Tier.SPECIALIST,
    route: Route = Route.ACCEPT,
    tokens: int = 0,
) -> ItemResult:
    return ItemResult(
        custom_id=cid,
        line=line,
        label=label,
        confidence=0.9,
        tier=tier,
        route=route,
        specialist_label="a",
        specialist_confidence=0.9,
        gold=gold,
        correct=None if gold is None else label == gold,
        llm_prompt_tokens=tokens or None,
    )


def error(cid: str | None, line: int, code: ErrorCode = ErrorCode.LLM_ERROR) -> ItemError:
    return ItemError(line=line, custom_id=cid, code=code, message=f"line {line}: failed")


def items(n: int, start: int = 0) -> list[Item]:
    return [Item(custom_id=f"c{i}", text="t", line=i + 1) for i in range(start, start + n)]


def running_job(store: JobStore, n: int, window: float | None = None) -> str:
    job = store.create(SPEC, window=window)
    store.put_chunk(job, 0, items(n))
    assert store.finish_intake(job, total=n, chunks=1) is IntakeOutcome.STARTED
    return job


class StoreContract:
    @pytest.fixture
    def store(self) -> JobStore:
        raise NotImplementedError("a subclass gives the store")

    def test_a_new_job_is_validating_with_its_spec(self, store: JobStore) -> None:
        job = store.create(SPEC)
        assert store.status(job) is JobStatus.VALIDATING
        assert store.spec(job) == SPEC
        view = store.get(job)
        assert (view.counts.total, view.counts.completed, view.finished_at) == (None, 0, None)

    def test_an_unknown_job_is_not_found(self, store: JobStore) -> None:
        for call in (store.status, store.spec, store.get):
            with pytest.raises(NotFoundError):
                call("batch_missing")
        with pytest.raises(NotFoundError):
            store.end("batch_missing", JobStatus.FAILED)
        with pytest.raises(NotFoundError):
            store.request_end("batch_missing", JobStatus.CANCELLED)

    def test_chunks_round_trip_and_outlive_the_job_for_cascade_learn(self, store: JobStore) -> None:
        job = running_job(store, 3)
        assert list(store.chunk(job, 0)) == items(3)
        assert list(store.chunk(job, 7)) == []
        assert store.chunk_count(job) == 1
        store.end(job, JobStatus.FAILED, error="why")
        assert list(store.chunk(job, 0)) == items(3)  # the texts of its items, until the job's keys expire
        assert store.get(job).error == "why"

    def test_records_are_written_once_and_counted_once(self, store: JobStore) -> None:
        job = running_job(store, 3)
        first = store.record(job, 0, results=[result("c0", 1), result("c1", 2, label="b")])
        assert [r.custom_id for r in first.results] == ["c0", "c1"]
        # the same chunk again, and a late different answer for c0: nothing changes
        again = store.record(job, 0, results=[result("c0", 1, label="z"), result("c1", 2, label="b"), result("c2", 3)])
        assert [r.custom_id for r in again.results] == ["c2"]
        assert store.record(job, 0, errors=[error("c0", 1)]).errors == []
        view = store.get(job)
        assert (view.counts.completed, view.counts.failed, view.status) == (3, 0, JobStatus.COMPLETED)
        assert again.finished
        assert not first.finished
        assert {r.custom_id: r.label for r in store.iter_results(job)} == {"c0": "a", "c1": "b", "c2": "a"}
        stats = store.stats(job).tiers["specialist"]
        assert (stats.answered, stats.labelled, stats.correct, stats.specialist_correct) == (3, 3, 2, 3)

    def test_a_chunks_specialist_answers_as_columns_count_as_their_records(self, store: JobStore) -> None:
        answers = SpecialistAnswers(
            custom_id=["c0", "c1", "c2", "c3"],
            line=[1, 2, 3, 4],
            gold=["a", "b", None, "a"],
            label=["a", "a", "b", "a"],
            confidence=[0.9, 0.6, 0.7, 0.2],
            route=[Route.ACCEPT, Route.ACCEPT, Route.ACCEPT, Route.ABSTAIN],
            budget_limited=[False, True, False, False],
        )
        by_columns, one_by_one = running_job(store, 4), running_job(store, 4)
        recorded = store.record(by_columns, 0, results=answers, whole=True)
        assert list(recorded.results) == list(answers)
        assert recorded.finished
        store.record(one_by_one, 0, results=list(answers))
        assert list(store.iter_results(by_columns)) == list(store.iter_results(one_by_one)) == list(answers)
        assert store.stats(by_columns) == store.stats(one_by_one)
        assert store.get(by_columns).counts == store.get(one_by_one).counts
        # A chunk that runs again writes and counts nothing.
        assert list(store.record(by_columns, 0, results=answers, whole=True).results) == []
        assert store.stats(by_columns) == store.stats(one_by_one)

    def test_an_item_is_never_in_both_results_and_errors(self, store: JobStore) -> None:
        job = running_job(store, 2)
        assert [e.custom_id for e in store.record(job, 0, errors=[error("c0", 1)]).errors] == ["c0"]
        assert store.record(job, 0, results=[result("c0", 1)]).results == []
        assert store.unrecorded(job, 0, ["c0", "c1"]) == ["c1"]
        assert [e.custom_id for e in store.iter_errors(job)] == ["c0"]
        assert list(store.iter_results(job)) == []

    def test_stats_count_routes_tokens_and_llm_errors(self, store: JobStore) -> None:
        job = running_job(store, 4)
        failed = result("c2", 3, route=Route.ESCALATE).model_copy(update={"llm_error": "down"})
        store.record(
            job,
            0,
            results=[
                result("c0", 1, tier=Tier.LLM, route=Route.ESCALATE, tokens=30),
                result("c1", 2, route=Route.EXPLORE, tokens=20),
                failed,
                result("c3", 4, gold=None),
            ],
        )
        stats = store.stats(job)
        assert stats.routes == {"escalate": 2, "explore": 1, "accept": 1}
        assert (stats.llm_tokens, stats.llm_requests, stats.llm_errors) == (50, 2, 1)
        assert (stats.tiers["llm"].answered, stats.tiers["specialist"].answered) == (1, 3)
        assert stats.tiers["specialist"].labelled == 2

    def test_stats_count_answers_from_the_answer_cache_as_no_request(self, store: JobStore) -> None:
        job = running_job(store, 3)
        bought = result("c0", 1, tier=Tier.LLM, route=Route.ESCALATE, tokens=30)
        cached = result("c1", 2, tier=Tier.LLM, route=Route.ESCALATE).model_copy(
            update={"llm_label": "a", "llm_source": AnswerSource.CACHE}
        )
        store.record(job, 0, results=[bought.model_copy(update={"llm_source": AnswerSource.LLM}), cached])
        store.record(job, 0, results=[cached])  # recorded again: counted once
        stats = store.stats(job)
        assert (stats.llm_requests, stats.llm_tokens, stats.llm_cache_hits) == (1, 30, 1)

    def test_job_completes_when_every_line_has_a_record(self, store: JobStore) -> None:
        job = store.create(SPEC)
        store.put_chunk(job, 0, items(2))
        store.put_invalid(job, [error(None, 3, ErrorCode.INVALID_JSON)])
        assert store.finish_intake(job, total=3, chunks=1) is IntakeOutcome.STARTED
        store.record(job, 0, results=[result("c0", 1)])
        assert store.get(job).status is JobStatus.IN_PROGRESS
        assert store.record(job, 0, errors=[error("c1", 2)]).finished
        view = store.get(job)
        assert view.status is JobStatus.COMPLETED
        assert view.finished_at is not None
        assert (view.counts.total, view.counts.completed, view.counts.failed) == (3, 1, 2)
        assert sorted(e.line for e in store.iter_errors(job)) == [2, 3]
        assert store.invalid_count(job) == 1

    def test_the_texts_of_llm_answers_outlive_the_job_for_cascade_learn(self, store: JobStore) -> None:
        job = running_job(store, 2)
        answered = result("c0", 1, tier=Tier.LLM, route=Route.ESCALATE).model_copy(update={"llm_label": "a"})
        assert store.record(job, 0, results=[answered, result("c1", 2)]).finished
        assert store.texts(job, ["c0", "c1", "c9"]) == {"c0": "t"}  # only LLM-answered items of the job

    def test_intake_of_no_valid_line_is_empty(self, store: JobStore) -> None:
        job = store.create(SPEC)
        assert store.finish_intake(job, total=1, chunks=0) is IntakeOutcome.EMPTY
        assert store.status(job) is JobStatus.VALIDATING  # the lifecycle fails it, saying why

    def test_end_is_final_and_keeps_finished_records(self, store: JobStore) -> None:
        job = running_job(store, 2)
        store.record(job, 0, results=[result("c0", 1)])
        assert store.end(job, JobStatus.CANCELLED)
        assert not store.end(job, JobStatus.FAILED)
        store.record(job, 0, results=[result("c1", 2)])  # a chunk in flight at cancellation still lands
        assert store.status(job) is JobStatus.CANCELLED
        assert sorted(r.custom_id for r in store.iter_results(job)) == ["c0", "c1"]

    def test_request_end_waits_for_the_intake(self, store: JobStore) -> None:
        job = store.create(SPEC)
        assert not store.request_end(job, JobStatus.CANCELLED)  # input not read yet: the intake asks later
        assert (store.status(job), store.ending(job)) == (JobStatus.CANCELLING, JobStatus.CANCELLED)
        assert not store.request_end(job, JobStatus.EXPIRED)  # already ending
        assert store.finish_intake(job, total=1, chunks=1) is IntakeOutcome.SWEEP

    def test_request_end_of_a_running_job(self, store: JobStore) -> None:
        due, not_due = running_job(store, 1, window=-1), running_job(store, 1, window=3600)
        assert not store.request_end(not_due, JobStatus.EXPIRED, only_if_due=True)
        assert store.ending(not_due) is None
        assert store.request_end(due, JobStatus.EXPIRED, only_if_due=True)
        assert (store.status(due), store.ending(due)) == (JobStatus.FINALIZING, JobStatus.EXPIRED)
        assert store.end(due, JobStatus.EXPIRED)
        assert not store.request_end(due, JobStatus.CANCELLED)
        assert store.ending(due) is None

    def test_intake_progress_is_remembered(self, store: JobStore) -> None:
        job = store.create(SPEC)
        assert store.chunks_sent(job) == 0
        assert store.get(job).progress_at is None
        store.chunk_sent(job, 0, lines_read=300)
        store.chunk_sent(job, 1, lines_read=610)
        view = store.get(job)
        assert (store.chunks_sent(job), view.chunks_sent, view.lines_read) == (2, 2, 610)
        assert view.progress_at is not None

    def test_new_records_are_progress(self, store: JobStore) -> None:
        job = running_job(store, 2)
        before = store.get(job).progress_at
        store.record(job, 0, results=[result("c0", 1)])
        after = store.get(job).progress_at
        assert after is not None
        assert before is None or after >= before
        store.record(job, 0, results=[result("c0", 1)])  # nothing new: no progress
        assert store.get(job).progress_at == after

    def test_a_failed_end_keeps_its_reason(self, store: JobStore) -> None:
        job = running_job(store, 1)
        assert store.request_end(job, JobStatus.FAILED, reason="stalled")
        assert (store.status(job), store.ending(job)) == (JobStatus.FINALIZING, JobStatus.FAILED)
        assert store.end(job, JobStatus.FAILED)
        assert store.get(job).error == "stalled"

    def test_the_reapers_counters(self, store: JobStore) -> None:
        job, done = running_job(store, 1), running_job(store, 1)
        store.end(done, JobStatus.CANCELLED)
        assert job in store.active_ids()
        assert done not in store.active_ids()
        assert [store.count_delivery(job, "specialist:0") for _ in range(3)] == [1, 2, 3]
        assert store.count_delivery(job, "llm:0") == 1
        assert [store.count_reap(job), store.count_reap(job)] == [1, 2]
        assert store.get(job).reaps == 2

    def test_budget_reservation_is_once_per_chunk_and_never_overspent(self, store: JobStore) -> None:
        job = running_job(store, 1)
        assert store.reserve_budget(job, 0, [0.4, 0.4, 0.4], budget=1.0) == 2
        assert store.reserve_budget(job, 0, [0.4, 0.4, 0.4], budget=1.0) == 2  # the chunk again: same answer
        assert store.reserve_budget(job, 1, [0.1, 0.3], budget=1.0) == 1
        assert store.reserve_budget(job, 2, [0.05], budget=1.0) == 1
        assert store.reserve_budget(job, 3, [0.5], budget=1.0) == 0

    def test_mark_sent_returns_only_ids_not_marked_before(self, store: JobStore) -> None:
        job = running_job(store, 3)
        assert store.mark_sent(job, 0, ["c0", "c1"], ["c2"]) == {"c0", "c1", "c2"}
        assert store.mark_sent(job, 0, ["c0", "c1"], ["c2"]) == set()
        assert store.get(job).counts.escalated == 2  # explored items are not escalations

    def test_seconds_add_up_per_tier(self, store: JobStore) -> None:
        job = running_job(store, 1)
        store.add_seconds(job, "specialist", 0.25)
        store.add_seconds(job, "specialist", 0.5)
        store.add_seconds(job, "llm", 2.0)
        view = store.get(job)
        assert (view.specialist_seconds, view.llm_seconds) == (0.75, 2.0)
