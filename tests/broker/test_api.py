"""The Batch API with the official `openai` client, a real API process, a real worker and the real Redis."""

import csv
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from broker.settings import Settings
from tests.conftest import CASCADE, WorkerFactory, _env, dataset, free_port, write_jsonl

TOKENS = "tok-a=team-a,tok-b=team-b"


@pytest.fixture
def api_url(settings: Settings, sms_model: Path, redis_db: object, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **_env(settings),
        "CASCADE_API_TOKENS": TOKENS,
        "CASCADE_MODEL_DIR": str(sms_model),
        "CASCADE_FILES_DIR": str(tmp_path / "files"),
    }
    with (tmp_path / "api.log").open("wb") as log:
        proc = subprocess.Popen(
            [CASCADE, "api", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(100):
            try:
                httpx2.get(url + "/batches", timeout=1)
                break
            except httpx2.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def openai_rows() -> list[dict[str, object] | str]:
    with (dataset("sms_spam") / "test.csv").open(newline="") as f:
        rows: list[dict[str, object] | str] = [
            {
                "custom_id": f"req-{r['id']}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "cascade", "messages": [{"role": "user", "content": r["text"]}]},
            }
            for r in list(csv.DictReader(f))[:600]
        ]
    rows.insert(5, "{broken")
    rows.insert(9, {"custom_id": "plain-1", "text": "a plain Cascade line is accepted too"})
    return rows


def test_openai_client_uploads_creates_polls_and_downloads(
    api_url: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    start_worker(queues="specialist")
    client = openai.OpenAI(base_url=api_url, api_key="tok-a")
    rows = openai_rows()
    with write_jsonl(tmp_path / "batch.jsonl", rows).open("rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"cascade_threshold": "0"},
    )
    assert batch.status in {"validating", "in_progress", "completed"}
    deadline = time.monotonic() + 120
    while batch.status not in {"completed", "failed", "cancelled"} and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (602, 601, 1)
    assert batch.metadata == {"cascade_threshold": "0"}
    assert batch.output_file_id
    assert batch.error_file_id

    output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    errors = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert len(output) == 601
    assert {o["custom_id"] for o in output} == {r["custom_id"] for r in rows if isinstance(r, dict)}
    first = output[0]
    assert first["error"] is None
    assert first["response"]["status_code"] == 200
    assert first["response"]["body"]["choices"][0]["message"]["content"] in {"ham", "spam"}
    assert first["response"]["body"]["cascade"]["tier"] == "specialist"
    assert [(e["error"]["code"], e["error"]["line"]) for e in errors] == [("invalid_json", 6)]
    assert client.files.content(uploaded.id).read() == (tmp_path / "batch.jsonl").read_bytes()


def test_callers_see_only_their_own_and_need_a_token(api_url: str, tmp_path: Path) -> None:
    a = openai.OpenAI(base_url=api_url, api_key="tok-a")
    b = openai.OpenAI(base_url=api_url, api_key="tok-b")
    with write_jsonl(tmp_path / "one.jsonl", [{"custom_id": "x", "text": "hello"}]).open("rb") as f:
        uploaded = a.files.create(file=f, purpose="batch")
    batch = a.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        b.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        b.files.content(uploaded.id)
    with pytest.raises(openai.NotFoundError):  # b may not start a batch on a's file
        b.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert [x.id for x in a.batches.list().data] == [batch.id]
    assert b.batches.list().data == []
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=api_url, api_key="wrong").batches.list()
    cancelled = a.batches.cancel(batch.id)
    assert cancelled.status in {"cancelled", "completed"}


def test_fuzzing_the_api_from_its_openapi_document_finds_no_server_error(api_url: str) -> None:
    schemathesis = str(Path(CASCADE).parent / "schemathesis")
    run = subprocess.run(
        [
            schemathesis,
            "run",
            api_url.removesuffix("/v1") + "/openapi.json",
            "-H",
            "Authorization: Bearer tok-a",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert "passed" in run.stdout


def test_api_serves_metrics_for_prometheus(api_url: str, tmp_path: Path) -> None:
    a = openai.OpenAI(base_url=api_url, api_key="tok-a")
    with write_jsonl(tmp_path / "one.jsonl", [{"custom_id": "x", "text": "hello"}]).open("rb") as f:
        uploaded = a.files.create(file=f, purpose="batch")
    a.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    text = httpx2.get(api_url.removesuffix("/v1") + "/metrics", timeout=5).text
    jobs = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith("cascade_jobs{")
    }
    assert sum(jobs.values()) == 1  # the one batch, whatever its status now
    assert 'cascade_queue_length{queue="specialist"}' in text
    assert "process_resident_memory_bytes" in text
