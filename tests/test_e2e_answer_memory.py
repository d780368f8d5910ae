"""The answer memory end to end: real `cascade worker` processes, the real Redis and the real vLLM server (SmolLM2),
a real ``minilm`` specialist. What the LLM answered in one job answers the reworded texts of the next one, with no
LLM request; a job that asks for no memory never takes its answers."""

import subprocess
from pathlib import Path

import pytest

from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers import embedding, specialist
from cascade.workers.jobs import JobStatus
from tests.conftest import CASCADE, WorkerFactory, _env, wait_for, write_jsonl
from tests.test_queue_integration import export
from tests.workers.test_embedding import banking_subset

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(not embedding.extra_installed(), reason="needs the embeddings extra"),
]

N_ITEMS = 12


@pytest.fixture(scope="module")
def minilm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts, labels = banking_subset("train", 8)
    folder = tmp_path_factory.mktemp("minilm-model")
    specialist.save(specialist.train(texts, labels, encoder=embedding.Encoder.open()), folder, "e2e")
    return folder


def submit(settings: Settings, path: Path, model: Path, *memory: str) -> str:
    """`cascade submit` escalating every item (threshold 1) among 3 candidates."""
    command = [CASCADE, "submit", str(path), "--model", str(model), "--threshold", "1.0", "--top-k", "3", *memory]
    out = subprocess.run(command, env=_env(settings), capture_output=True, text=True, check=True, timeout=300)
    return out.stdout.strip().splitlines()[-1]


def test_what_the_llm_answered_answers_near_duplicates_of_the_next_job_without_a_request(
    settings: Settings,
    store: RedisJobStore,
    minilm_model: Path,
    vllm_server: str,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    texts, labels = banking_subset("test", 1)
    rows: list[dict[str, object] | str] = [
        {"custom_id": f"first-{i}", "text": t, "label": lab}
        for i, (t, lab) in enumerate(zip(texts[:N_ITEMS], labels[:N_ITEMS], strict=True))
    ]
    start_worker(queues="specialist,llm", concurrency=1)
    memory = ["--memory-similarity", "0.8", "--memory-k", "1"]
    first_job = submit(settings, write_jsonl(tmp_path / "first.jsonl", rows), minilm_model, *memory)
    wait_for(store, first_job, timeout=600)
    first = {int(str(r["line"])): r for r in export(settings, "results", first_job, tmp_path)}
    assert all(r["llm_source"] == "llm" for r in first.values())  # the memory was empty

    reworded: list[dict[str, object] | str] = [
        {"custom_id": f"second-{i}", "text": f"Hello, {r['text']} Thanks!", "label": r["label"]}  # type: ignore[index]
        for i, r in enumerate(rows)
    ]
    second_job = submit(settings, write_jsonl(tmp_path / "second.jsonl", reworded), minilm_model, *memory)
    wait_for(store, second_job, timeout=600)
    assert store.get(second_job).status is JobStatus.COMPLETED
    second = {int(str(r["line"])): r for r in export(settings, "results", second_job, tmp_path)}
    remembered = {line: r for line, r in second.items() if r["llm_source"] == "memory"}
    assert len(remembered) >= N_ITEMS * 3 // 4, second
    for line, r in remembered.items():
        assert r["tier"] == "llm"
        assert r["llm_prompt_tokens"] is None
        assert r["confidence"] >= 0.8
        assert r["label"] == r["llm_label"] == first[line]["llm_label"]  # the first job's LLM answer on its original
    assert store.stats(second_job).llm_requests == N_ITEMS - len(remembered)

    # without --memory-similarity, a job takes nothing from the memory
    plain_job = submit(settings, write_jsonl(tmp_path / "plain.jsonl", reworded), minilm_model)
    wait_for(store, plain_job, timeout=600)
    assert not [r for r in export(settings, "results", plain_job, tmp_path) if r["llm_source"] == "memory"]
