"""End to end against the real vLLM CPU server (SmolLM2-135M-Instruct): no fake LLM here."""

import asyncio
from pathlib import Path

import pytest

from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers import specialist
from cascade.workers.jobs import JobStatus
from cascade.workers.llm import LLMClient
from cascade.workers.pipeline import run_llm_chunk, run_specialist_chunk
from tests.conftest import WorkerFactory, banking_rows, wait_for, write_jsonl
from tests.test_queue_integration import export, submit

pytestmark = pytest.mark.llm

N_ITEMS = 800


def test_banking77_job_escalates_unsure_items_to_the_llm(
    settings: Settings,
    store: RedisJobStore,
    banking_model: Path,
    vllm_server: str,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    rows = banking_rows(N_ITEMS)
    path = write_jsonl(tmp_path / "b77.jsonl", rows)
    start_worker(queues="specialist,llm", concurrency=2)

    job = submit(settings, path, banking_model, "--threshold", "0.5", "--top-k", "5")
    wait_for(store, job, timeout=900)

    view = store.get(job)
    assert view.status is JobStatus.COMPLETED
    results = export(settings, "results", job, tmp_path)
    assert sorted(str(r["custom_id"]) for r in results) == sorted(str(r["custom_id"]) for r in rows)  # type: ignore[index]
    escalated = [r for r in results if r["candidates"] is not None]
    assert 0 < len(escalated) < len(results) / 2
    assert len(escalated) == view.counts.escalated
    assert all(float(r["specialist_confidence"]) < 0.5 for r in escalated)  # type: ignore[arg-type]
    assert all(float(r["specialist_confidence"]) >= 0.5 for r in results if r["candidates"] is None)  # type: ignore[arg-type]
    answered = [r for r in escalated if r["tier"] == "llm"]
    assert len(answered) >= 0.9 * len(escalated), "most escalated items should get an LLM answer"
    for r in answered:
        assert r["llm_label"] in r["candidates"]  # type: ignore[operator]
        assert len(r["candidates"]) == 5  # type: ignore[arg-type]
        assert 0.0 <= float(r["llm_confidence"]) <= 1.0  # type: ignore[arg-type]
        assert r["label"] == r["llm_label"]
    assert store.stats(job).tiers["llm"].answered == len(answered)
    # each task ran once: a message routed to both queues would run twice on this worker, which serves both
    logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    n_chunks = -(-N_ITEMS // settings.chunk_size)
    assert logs.count("succeeded") == n_chunks + logs.count("Task cascade.llm_chunk[") // 2
    assert logs.count("Task cascade.specialist_chunk[") == 2 * n_chunks  # 'received' and 'succeeded'
    assert view.llm_seconds > 0


def test_chunk_run_twice_changes_nothing(
    settings: Settings, store: RedisJobStore, banking_model: Path, vllm_server: str, tmp_path: Path
) -> None:
    """The plain functions behind the tasks, called twice as a redelivery would: same records, same counts."""
    from cascade.broker.submit import submit_file
    from cascade.workers.jobs import JobSpec
    from cascade.workers.manifest import read_manifest

    path = write_jsonl(tmp_path / "b77.jsonl", banking_rows(120))
    spec = JobSpec(
        model_path=str(banking_model),
        model_sha256=read_manifest(banking_model).model_sha256,
        threshold=0.6,
        top_k=3,
        llm_model=settings.llm_model,
    )
    sent: list[int] = []
    job = submit_file(store, lambda _job, index: sent.append(index), settings, path, spec)
    model = specialist.load(banking_model)

    first = run_specialist_chunk(store, model, job, 0)
    snapshot = sorted(store.iter_results(job), key=lambda r: r.custom_id)
    again = run_specialist_chunk(store, model, job, 0)
    assert [e.custom_id for e in again] == [e.custom_id for e in first]
    assert sorted(store.iter_results(job), key=lambda r: r.custom_id) == snapshot
    assert first, "threshold 0.6 should escalate some of 120 Banking77 items"

    async def llm_twice() -> None:
        async with LLMClient(settings.llm_config()) as client:
            await run_llm_chunk(store, client, job, 0, first)
            await run_llm_chunk(store, client, job, 0, first)

    asyncio.run(llm_twice())
    view = store.get(job)
    assert view.status is JobStatus.COMPLETED
    assert view.counts.completed + view.counts.failed == 120
    assert store.stats(job).tiers["llm"].answered + store.stats(job).llm_errors <= len(first)
    assert run_specialist_chunk(store, model, job, 0) == []  # the job ended: its chunks are gone


def test_pinned_vllm_metric_names_are_exported_by_the_server(vllm_server: str) -> None:
    import httpx2

    from cascade.monitoring.vllm_metrics import VLLM_METRICS

    text = httpx2.get(vllm_server.removesuffix("/v1") + "/metrics", timeout=10).text
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for name in VLLM_METRICS:
        assert name in exported or f"{name}_bucket" in exported, f"vLLM no longer exports {name}"
