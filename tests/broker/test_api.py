"""The Batch API with the official `openai` client, a real API process, a real worker and the real Redis."""

import csv
import itertools
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai.types import Batch

from cascade.broker.api import BLOCK_BYTES, in_blocks
from cascade.broker.openapi import window_pattern
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.submit import build_spec
from cascade.workers.errors import InputError
from cascade.workers.jobs import parse_window
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


def openai_rows(model: str) -> list[dict[str, object] | str]:
    """OpenAI batch lines for ``model`` (the LLM the API's workers run, as a client names it), one of them broken, and
    a line of Cascade's own format."""
    with (dataset("sms_spam") / "test.csv").open(newline="") as f:
        rows: list[dict[str, object] | str] = [
            {
                "custom_id": f"req-{r['id']}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": r["text"]}]},
            }
            for r in list(csv.DictReader(f))[:600]
        ]
    rows.insert(5, "{broken")
    rows.insert(9, {"custom_id": "plain-1", "text": "a plain Cascade line is accepted too"})
    return rows


def test_openai_client_uploads_creates_polls_and_downloads(
    api_url: str, settings: Settings, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    start_worker(queues="specialist")
    client = openai.OpenAI(base_url=api_url, api_key="tok-a")
    rows = openai_rows(settings.llm_model)
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


def test_the_api_keeps_to_its_openapi_document_under_every_default_check(api_url: str) -> None:
    """Schemathesis' default checks, all of them, over its four phases (examples, coverage, fuzzing, stateful): no
    5xx; every status, content type, header and body as the document declares; every request the document allows
    taken (a 404 for an id that does not exist is fine), every one it forbids refused; 405 with the right ``Allow``;
    401 without a token; a deleted file gone."""
    schemathesis = str(Path(CASCADE).parent / "schemathesis")
    run = subprocess.run(
        [
            schemathesis,
            "run",
            api_url.removesuffix("/v1") + "/openapi.json",
            "-H",
            "Authorization: Bearer tok-a",
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
    assert run.returncode == 0, run.stdout[-6000:]
    assert re.search(r"Test cases:\n\s+(\d+) generated, \1 passed", run.stdout), run.stdout[-3000:]


@pytest.mark.parametrize("job_ttl", [60, 3599, 3600, 86_400, 7 * 86_400, 1_000_003])
def test_the_documented_completion_windows_are_exactly_those_a_batch_takes(job_ttl: int) -> None:
    """``completion_window``'s pattern in the OpenAPI document against ``parse_window``, the rule itself."""
    pattern = window_pattern(job_ttl)
    numbers = [*range(0, 200), *range(job_ttl // 3600 - 2, job_ttl // 3600 + 3), *range(job_ttl - 2, job_ttl + 3)]
    numbers += [job_ttl // 60 + d for d in (-1, 0, 1)] + [10**k for k in range(8)]
    for n, unit, pad in itertools.product(numbers, "smhd", ["", "0", " ", "\t", "\n", "\u00a0"]):
        window = f"{pad}{n}{unit}{pad}" if pad.isspace() else f"{pad}{n}{unit}"
        try:
            parse_window(window, job_ttl)
            read = True
        except InputError:
            read = False
        documented = re.search(pattern, window) is not None
        assert documented <= read, (window, job_ttl)  # what the document allows, a batch takes
        if pad in ("", "0", " ", "\t"):  # and no other (the API refuses other whitespace, by the pattern)
            assert documented == read, (window, job_ttl)


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


def test_metrics_behind_a_token_answer_only_that_bearer_token(
    settings: Settings, sms_model: Path, redis_db: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CASCADE_METRICS_TOKEN: /metrics wants it as a bearer token (401 in OpenAI's shape otherwise); an API token
    is not one. Without the setting /metrics is open (test_api_serves_metrics_for_prometheus)."""
    monkeypatch.setenv("CASCADE_METRICS_TOKEN", "scrape-me")
    proc, url = start_api(settings, sms_model, tmp_path / "api.log")
    try:
        metrics = url.removesuffix("/v1") + "/metrics"
        refused = [{}, {"Authorization": "Bearer scrape-m"}, {"Authorization": "Bearer tok-a"}]
        refused.append({"Authorization": "Basic c2NyYXBlLW1lOg=="})  # the token as a basic-auth user: not a bearer
        for headers in refused:
            answer = httpx2.get(metrics, headers=headers, timeout=5)
            assert answer.status_code == 401, headers
            assert answer.headers["www-authenticate"] == "Bearer"
            error = answer.json()["error"]
            assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_api_key", None)
            assert "CASCADE_METRICS_TOKEN" in error["message"]
            assert "cascade_" not in answer.text
        answer = httpx2.get(metrics, headers={"Authorization": "Bearer scrape-me"}, timeout=5)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        assert 'cascade_queue_length{queue="specialist"}' in answer.text
        assert httpx2.get(url.removesuffix("/v1") + "/health", timeout=5).status_code == 200  # probes need no token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_batch_survives_its_api_process_killed_right_after_creation(
    settings: Settings, store: RedisJobStore, sms_model: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """The API only stores the file and enqueues the intake: a worker reads it, whatever becomes of the API."""
    proc, url = start_api(settings, sms_model, tmp_path / "api.log")
    client = openai.OpenAI(base_url=url, api_key="tok-a")
    rows = openai_rows(settings.llm_model)
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
    api_url: str, settings: Settings, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    client = openai.OpenAI(base_url=api_url, api_key="tok-a")
    rows = openai_rows(settings.llm_model)
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


# Errors: always OpenAI's error object, with OpenAI's status codes; never a 500 for bad input.


def error_of(response: httpx2.Response, status: int) -> dict[str, Any]:
    """The error object of a response, checked to be OpenAI's shape and status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "\n" not in body["error"]["message"]
    return dict(body["error"])


def one_line_file(client: openai.OpenAI, tmp_path: Path) -> str:
    return upload(client, write_jsonl(tmp_path / "one.jsonl", [{"custom_id": "x", "text": "hello"}]))


def test_a_threshold_outside_0_to_1_is_a_400_naming_the_field(api_url: str, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=api_url, api_key="tok-a", max_retries=0)
    file_id = one_line_file(client, tmp_path)
    for threshold in ["2", "-1", "nan", "inf", "-inf", "half"]:
        with pytest.raises(openai.BadRequestError) as raised:
            client.batches.create(
                input_file_id=file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"cascade_threshold": threshold},
            )
        assert (raised.value.param, raised.value.code) == ("metadata.cascade_threshold", "invalid_value"), threshold
        assert "between 0 and 1" in raised.value.message
    ok = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"cascade_threshold": "1"},
    )  # the bounds themselves are valid
    assert ok.status in {"validating", "in_progress", "completed"}
    assert [b.id for b in client.batches.list().data] == [ok.id]  # the refused ones left nothing behind


def test_metadata_beyond_openai_limits_is_a_400(api_url: str, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=api_url, api_key="tok-a", max_retries=0)
    file_id = one_line_file(client, tmp_path)
    too_much = [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"big": "v" * 2_000_000},
    ]
    for metadata in too_much:
        with pytest.raises(openai.BadRequestError) as raised:
            client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
            )
        assert (raised.value.param, raised.value.code) == ("metadata", "invalid_value")
        assert len(raised.value.message) < 200  # says what is wrong without echoing the input back
    at_the_limits = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    ok = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", metadata=at_the_limits
    )
    assert ok.metadata == at_the_limits


def test_malformed_requests_are_a_400_in_openai_shape_naming_the_parameter(api_url: str, tmp_path: Path) -> None:
    auth = {"Authorization": "Bearer tok-a"}
    batches = api_url + "/batches"
    missing = error_of(httpx2.post(batches, json={"endpoint": "/v1/chat/completions"}, headers=auth), 400)
    assert (missing["param"], missing["code"], missing["type"]) == (
        "input_file_id",
        "missing_required_parameter",
        "invalid_request_error",
    )
    wrong_type = error_of(httpx2.post(batches, json={"input_file_id": 5, "endpoint": "x"}, headers=auth), 400)
    assert (wrong_type["param"], wrong_type["code"]) == ("input_file_id", "invalid_value")
    not_json = error_of(
        httpx2.post(batches, content=b"{nope", headers=auth | {"Content-Type": "application/json"}), 400
    )
    assert not_json["code"] == "invalid_value"
    limit = error_of(httpx2.get(batches, params={"limit": "many"}, headers=auth), 400)
    assert (limit["param"], limit["code"]) == ("limit", "invalid_value")
    no_purpose = error_of(httpx2.post(api_url + "/files", files={"file": ("a.jsonl", b"{}\n")}, headers=auth), 400)
    assert (no_purpose["param"], no_purpose["code"]) == ("purpose", "missing_required_parameter")
    client = openai.OpenAI(base_url=api_url, api_key="tok-a", max_retries=0)
    file_id = one_line_file(client, tmp_path)
    for endpoint in ["/v1/responses", "/v1/embeddings", "/v1/completions"]:  # OpenAI's, which Cascade does not serve
        refused = error_of(
            httpx2.post(batches, json={"input_file_id": file_id, "endpoint": endpoint}, headers=auth), 400
        )
        assert (refused["param"], refused["code"], refused["type"]) == (
            "endpoint",
            "invalid_value",
            "invalid_request_error",
        )
        assert "/v1/chat/completions" in refused["message"]
        with pytest.raises(openai.BadRequestError) as raised:
            client.batches.create(input_file_id=file_id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
        assert (raised.value.status_code, raised.value.param) == (400, "endpoint")
    for window in ["soon", "0h", "9999h", " 1d", "\u00a024h"]:
        with pytest.raises(openai.BadRequestError) as raised:
            client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window=window)  # type: ignore[arg-type]
        assert raised.value.param == "completion_window", window
    with pytest.raises(openai.NotFoundError) as missing_file:
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    assert missing_file.value.body == {
        "message": "no file 'file-nope'",
        "type": "invalid_request_error",
        "param": "input_file_id",
        "code": None,
    }
    assert client.batches.list().data == []  # nothing refused was created
    empty = error_of(
        httpx2.post(
            api_url + "/files",
            files={"file": ("a.jsonl", b"{}\n")},
            data={"purpose": "batch", "expires_after[seconds]": ""},
            headers=auth,
        ),
        400,
    )
    assert (empty["param"], empty["code"]) == ("expires_after.seconds", "invalid_value")
    not_allowed = httpx2.put(batches, headers=auth)
    assert (not_allowed.status_code, not_allowed.headers["Allow"]) == (405, "GET, POST")
    error_of(not_allowed, 405)


def test_auth_failures_are_a_401_and_missing_things_a_404_in_openai_shape(api_url: str) -> None:
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer"}, {"Authorization": "Basic x"}]:
        refused = error_of(httpx2.get(api_url + "/batches", headers=headers), 401)
        assert (refused["code"], refused["type"]) == ("invalid_api_key", "invalid_request_error")
    with pytest.raises(openai.AuthenticationError) as auth:
        openai.OpenAI(base_url=api_url, api_key="tok-a-but-longer", max_retries=0).batches.list()
    assert auth.value.code == "invalid_api_key"
    client = openai.OpenAI(base_url=api_url, api_key="tok-a", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.batches.retrieve("batch_nope")
    assert "batch_nope" in missing.value.message
    for path in ["/files/file-nope", "/files/file-nope/content", "/files/file-out-nope/content", "/nowhere"]:
        error_of(httpx2.get(api_url + path, headers={"Authorization": "Bearer tok-a"}), 404)


def test_jobs_submitted_by_the_cli_are_no_callers_business(
    api_url: str, settings: Settings, store: RedisJobStore, sms_model: Path
) -> None:
    """The CLI's jobs have the owner "", which no token can have."""
    job_id = store.create(build_spec(settings, sms_model))
    for token in ["tok-a", "tok-b"]:
        client = openai.OpenAI(base_url=api_url, api_key=token, max_retries=0)
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve(job_id)
        assert client.batches.list().data == []


# A full disk under CASCADE_FILES_DIR: a 507 that says so, nothing left behind, uploads work again.


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (the tests run as root): the kernel's own ENOSPC, no fake. Unmounted at the end."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, check=False
    )
    if mounted.returncode != 0:  # tests/broker/test_files.py injects the fault instead
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_a_507_that_leaves_nothing_behind_and_uploads_work_again(
    settings: Settings, sms_model: Path, redis_db: object, small_disk: Path, tmp_path: Path
) -> None:
    proc, url = start_api(settings.model_copy(update={"files_dir": str(small_disk)}), sms_model, tmp_path / "api.log")
    try:
        big = tmp_path / "big.jsonl"
        big.write_bytes(b'{"custom_id": "x", "text": "' + b"a" * 2_000_000 + b'"}\n')
        with big.open("rb") as f:
            full = error_of(
                httpx2.post(
                    url + "/files",
                    files={"file": ("big.jsonl", f)},
                    data={"purpose": "batch"},
                    headers={"Authorization": "Bearer tok-a"},
                    timeout=30,
                ),
                507,
            )
        assert (full["code"], full["type"]) == ("insufficient_storage", "server_error")
        assert "no space left" in full["message"].lower()
        assert list(small_disk.iterdir()) == []  # the partial file is gone
        client = openai.OpenAI(base_url=url, api_key="tok-a", max_retries=0)
        with pytest.raises(openai.InternalServerError) as again:  # the client sees it too, as a 5xx
            upload(client, big)
        assert again.value.status_code == 507
        small = write_jsonl(tmp_path / "small.jsonl", [{"custom_id": str(i), "text": "x" * 1000} for i in range(600)])
        file_id = upload(client, small)  # ~600 kB: fits only because nothing was left behind
        assert client.files.content(file_id).read() == small.read_bytes()
        assert [p.name for p in small_disk.iterdir()] == [file_id]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_streamed_files_lines_go_out_in_order_in_blocks_of_at_least_64_kib() -> None:
    lines = [f'{{"line": {n}, "pad": "{"x" * (n % 300)}"}}\n' for n in range(5000)]
    blocks = list(in_blocks(lines))
    assert b"".join(blocks) == "".join(lines).encode()
    assert len(blocks) > 1
    assert all(len(b) >= BLOCK_BYTES for b in blocks[:-1])
    assert list(in_blocks([])) == []
