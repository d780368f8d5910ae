"""The tasks' guards, on the real Redis: whatever a chunk raises, its items end in the error file with a code; a
chunk started more than CASCADE_MAX_DELIVERIES times fails its items instead of looping. The task functions are
called in this process (as a worker's pool process would), with faults injected into what they call."""

from pathlib import Path

import pytest

from cascade.broker.celery_app import app, configure
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.submit import build_spec
from cascade.workers import tasks
from cascade.workers.items import ErrorCode, Escalation, Item
from cascade.workers.jobs import JobStatus

N = 4


@pytest.fixture
def job(settings: Settings, store: RedisJobStore, sms_model: Path) -> str:
    configure(app, settings.model_copy(update={"max_deliveries": 2}))
    job = store.create(build_spec(settings, sms_model, threshold=0.0))
    store.put_chunk(job, 0, [Item(custom_id=f"g{i}", text="free entry now", line=i + 1) for i in range(N)])
    store.finish_intake(job, total=N, chunks=1)
    return job


def codes(store: RedisJobStore, job: str) -> list[str]:
    return sorted(e.code.value for e in store.iter_errors(job))


def test_anything_a_specialist_chunk_raises_fails_its_items_with_the_reason(
    store: RedisJobStore, job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(tasks, "run_specialist_chunk", broken)
    tasks.specialist_chunk(job, 0)
    assert codes(store, job) == [ErrorCode.INTERNAL_ERROR.value] * N
    assert all("RuntimeError: injected fault" in e.message for e in store.iter_errors(job))
    assert store.status(job) is JobStatus.COMPLETED


def test_a_chunk_started_too_often_fails_its_items_instead_of_looping(store: RedisJobStore, job: str) -> None:
    store.count_delivery(job, "specialist:0")
    store.count_delivery(job, "specialist:0")  # two starts that never finished (their worker died)
    tasks.specialist_chunk(job, 0)
    assert codes(store, job) == [ErrorCode.DELIVERY_LIMIT.value] * N
    assert store.status(job) is JobStatus.COMPLETED


def test_anything_an_llm_chunk_raises_keeps_the_specialists_answers_marked(
    store: RedisJobStore, job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise ValueError("injected fault")

    monkeypatch.setattr(tasks, "run_llm_chunk", broken)
    escalations = [
        Escalation(
            custom_id=f"g{i}",
            line=i + 1,
            text="free entry now",
            gold=None,
            specialist_label="spam",
            specialist_confidence=0.4,
            candidates=["spam", "ham"],
        ).model_dump(mode="json")
        for i in range(N)
    ]
    tasks.llm_chunk(job, escalations, chunk=0)
    results = list(store.iter_results(job))
    assert len(results) == N
    assert all(r.label == "spam" and r.llm_error_kind == ErrorCode.INTERNAL_ERROR.value for r in results)
    assert store.status(job) is JobStatus.COMPLETED
