"""The answer cache end to end: real `cascade worker` processes, the real Redis and the real vLLM server (SmolLM2).

LLM requests are counted by the workers' own ``cascade_llm_cache_total{result="miss"}`` (one per request), read from
their /metrics, and by the results' tokens (only an answer bought for the item carries them)."""

import random
import subprocess
import time
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.answers import normalise
from cascade.workers.jobs import JobStatus
from tests.conftest import CASCADE, WorkerFactory, _env, banking_rows, free_port, wait_for, write_jsonl
from tests.test_queue_integration import export

pytestmark = pytest.mark.llm

N_ITEMS = 24


def submit(settings: Settings, path: Path, model: Path, chunk_size: int) -> str:
    """`cascade submit` escalating every item (threshold 1) among 3 candidates, in chunks of ``chunk_size``."""
    out = subprocess.run(
        [CASCADE, "submit", str(path), "--model", str(model), "--threshold", "1.0", "--top-k", "3"],
        env={**_env(settings), "CASCADE_CHUNK_SIZE": str(chunk_size)},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return out.stdout.strip().splitlines()[-1]


def cache_counts(ports: list[int]) -> dict[str, float]:
    """``cascade_llm_cache_total`` by result, summed over the workers serving /metrics on ``ports``."""
    counts = {"hit": 0.0, "shared": 0.0, "miss": 0.0}
    for port in ports:
        text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "cascade_llm_cache_total":
                    counts[sample.labels["result"]] += sample.value
    return counts


def eventually(ports: list[int], items: int, timeout: float = 20) -> dict[str, float]:
    """The counts once they cover ``items`` items (a worker counts just after it records), or as they are then."""
    deadline = time.monotonic() + timeout
    while True:
        counts = cache_counts(ports)
        if sum(counts.values()) >= items or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def test_a_second_job_on_another_worker_buys_no_llm_answer_the_first_one_bought(
    settings: Settings,
    store: RedisJobStore,
    banking_model: Path,
    vllm_server: str,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    rows = banking_rows(N_ITEMS, start=200, prefix="first-")
    first_worker = start_worker(queues="specialist,llm", concurrency=1)
    first_job = submit(settings, write_jsonl(tmp_path / "first.jsonl", rows), banking_model, chunk_size=300)
    wait_for(store, first_job, timeout=600)
    first = {int(str(r["line"])): r for r in export(settings, "results", first_job, tmp_path)}
    assert len(first) == N_ITEMS
    assert all(r["llm_source"] == "llm" and r["llm_error"] is None for r in first.values())
    assert store.stats(first_job).llm_requests == N_ITEMS
    first_worker.terminate()  # the second job runs on another worker process
    first_worker.wait(timeout=60)

    port = free_port()
    metrics_dir = str(tmp_path / "metrics")
    start_worker(
        queues="specialist,llm", concurrency=1, CASCADE_METRICS_PORT=str(port), CASCADE_METRICS_DIR=metrics_dir
    )
    again = [
        {"custom_id": f"second-{i}", "text": "  " + str(r["text"]).upper() + " ", "label": r["label"]}  # type: ignore[index]
        for i, r in enumerate(rows)
    ]
    second_job = submit(settings, write_jsonl(tmp_path / "second.jsonl", again), banking_model, chunk_size=300)
    wait_for(store, second_job, timeout=600)

    assert store.get(second_job).status is JobStatus.COMPLETED
    second = {int(str(r["line"])): r for r in export(settings, "results", second_job, tmp_path)}
    assert len(second) == N_ITEMS
    for line, r in second.items():
        assert r["llm_source"] == "cache", r
        assert r["llm_prompt_tokens"] is None
        assert r["llm_completion_tokens"] is None
        assert (r["llm_label"], r["llm_confidence"]) == (first[line]["llm_label"], first[line]["llm_confidence"])
    stats = store.stats(second_job)
    assert (stats.llm_requests, stats.llm_tokens, stats.llm_cache_hits) == (0, 0, N_ITEMS)
    assert eventually([port], N_ITEMS) == {"hit": N_ITEMS, "shared": 0, "miss": 0}


def test_repeated_texts_are_asked_once_across_chunks_and_worker_processes(
    settings: Settings,
    store: RedisJobStore,
    banking_model: Path,
    vllm_server: str,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    base = banking_rows(10, start=400)
    variants = [lambda t: t, str.upper, lambda t: f"  {t}\t "]
    rows: list[dict[str, object] | str] = [
        {"custom_id": f"rep-{v}-{i}", "text": variant(str(r["text"])), "label": r["label"]}  # type: ignore[index]
        for v, variant in enumerate(variants)
        for i, r in enumerate(base)
    ]
    random.Random(0).shuffle(rows)
    texts = {str(r["custom_id"]): str(r["text"]) for r in rows}  # type: ignore[index]
    distinct = len({normalise(t) for t in texts.values()})
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports):  # two workers of two processes each, chunks of 5 items: 6 chunks at once
        start_worker(
            queues="specialist,llm",
            concurrency=2,
            CASCADE_METRICS_PORT=str(port),
            CASCADE_METRICS_DIR=str(tmp_path / f"metrics-{n}"),
        )
    job = submit(settings, write_jsonl(tmp_path / "repeated.jsonl", rows), banking_model, chunk_size=5)
    wait_for(store, job, timeout=600)

    assert store.get(job).status is JobStatus.COMPLETED
    results = export(settings, "results", job, tmp_path)
    assert len(results) == len(rows)
    assert all(r["candidates"] is not None and r["llm_error"] is None for r in results)
    bought = [r for r in results if r["llm_source"] == "llm"]
    assert len(bought) == distinct == 10  # one LLM request per distinct escalated text
    assert {normalise(texts[str(r["custom_id"])]) for r in bought} == {normalise(t) for t in texts.values()}
    assert all(r["llm_source"] == "cache" and r["llm_prompt_tokens"] is None for r in results if r not in bought)
    answers: dict[str, set[object]] = {}
    for r in results:
        answers.setdefault(normalise(texts[str(r["custom_id"])]), set()).add(r["llm_label"])
    assert all(len(labels) == 1 for labels in answers.values())  # every copy got the one answer bought
    stats = store.stats(job)
    assert (stats.llm_requests, stats.llm_cache_hits) == (distinct, len(rows) - distinct)
    counts = eventually(ports, len(rows))
    assert counts["miss"] == distinct
    assert counts["hit"] + counts["shared"] == len(rows) - distinct
