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
from openai.types import Batch

from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from tests.conftest import CASCADE, WorkerFactory, _env, dataset, free_port, write_jsonl

TOKENS = "tok-a=team-a,tok-b=team-b"


def start_api(settings: Settings, model: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**_env(settings), "CASCADE_API_TOKENS": TOKENS, "CASCADE_MODEL_DIR": str(model)}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [CASCADE, "api", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(100):
        try:
            httpx2.get(url + "/batches", timeout=1)
            break
        except httpx2.HTTPError:
            time.sleep(0.2)
    return proc, url


@pytest.fixture
def api_url(settings: Settings, sms_model: Path, redis_db: object, tmp_path: Path) -> Iterator[str]:
    proc, url = start_api(settings, sms_model, tmp_path / "api.log")
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def upload(client: openai.OpenAI, path: Path) -> str:
    with path.open("rb") as f:
        return client.files.create(file=f, purpose="batch").id


def poll(client: openai.OpenAI, batch_id: str, timeout: float = 120) -> Batch:
    deadline = time.monotonic() + timeout
    batch = client.batches.retrieve(batch_id)
    while batch.status not in {"completed", "failed", "cancelled", "expired"} and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = client.batches.retrieve(batch_id)
    return batch


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
    cancelled = a.batches.cancel(batch.id)  # no worker has read its input yet: it is swept once that is done
    assert cancelled.status == "cancelling"
    assert cancelled.cancelling_at is not None


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


def test_a_batch_survives_its_api_process_killed_right_after_creation(
    settings: Settings, store: RedisJobStore, sms_model: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """The API only stores the file and enqueues the intake: a worker reads it, whatever becomes of the API."""
    proc, url = start_api(settings, sms_model, tmp_path / "api.log")
    client = openai.OpenAI(base_url=url, api_key="tok-a")
    rows = openai_rows()
    file_id = upload(client, write_jsonl(tmp_path / "batch.jsonl", rows))
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert store.status(batch.id).value == "validating"
    start_worker(queues="specialist")
    assert store.wait(batch.id, timeout=120).status.value == "completed"
    proc, url = start_api(settings, sms_model, tmp_path / "api.log")  # the API again, to download the output
    try:
        client = openai.OpenAI(base_url=url, api_key="tok-a")
        done = client.batches.retrieve(batch.id)
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (602, 601, 1)
        assert done.output_file_id
        output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
        assert sorted(o["custom_id"] for o in output) == sorted(r["custom_id"] for r in rows if isinstance(r, dict))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_batch_past_its_completion_window_expires_with_every_line_in_the_error_file(
    api_url: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    client = openai.OpenAI(base_url=api_url, api_key="tok-a")
    rows = openai_rows()
    file_id = upload(client, write_jsonl(tmp_path / "batch.jsonl", rows))
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="1s")
    assert batch.expires_at is not None
    assert batch.expires_at - batch.created_at <= 1
    time.sleep(2)  # no worker yet: the window passes before anything is read
    assert client.batches.retrieve(batch.id).status == "finalizing"
    start_worker(queues="specialist")
    batch = poll(client, batch.id)
    assert batch.status == "expired"
    assert batch.expired_at is not None
    assert batch.finalizing_at is not None
    assert batch.output_file_id is None  # nothing was answered
    assert batch.error_file_id
    errors = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert sorted(e["error"]["line"] for e in errors) == list(range(1, len(rows) + 1))
    assert {e["error"]["code"] for e in errors} == {"batch_expired", "invalid_json"}
