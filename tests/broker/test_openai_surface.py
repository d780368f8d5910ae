"""The whole Files and Batches surface with the official `openai` client, against a real `cascade api` and a real
specialist worker (threshold 0: no LLM needed), every answer checked against the SDK's own types, strictly (the
client itself parses leniently: a missing or misspelt field would pass it), so that drift from OpenAI is caught.
Then every error status in OpenAI's shape, and, in process, what needs records no specialist writes (LLM tokens);
last, with the real vLLM, lines the LLM answered."""

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import openai
import pytest
import redis
from fastapi.testclient import TestClient
from openai.types import Batch, BatchUsage, FileDeleted, FileObject
from pydantic import BaseModel, SecretStr

from cascade.broker.api import create_app
from cascade.broker.keys import JobKeys
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.items import ErrorCode, Item, ItemError, ItemResult, Route, Tier
from cascade.workers.manifest import read_manifest
from tests.broker.test_api import openai_rows, poll, start_api
from tests.conftest import WorkerFactory, write_jsonl

M = TypeVar("M", bound=BaseModel)
ENDPOINT = "/v1/chat/completions"


def strict(model: type[M], obj: Any) -> M:
    """``obj`` (an SDK object or a JSON object) validated by the SDK's type, with no field the type does not know."""
    raw = obj.to_dict() if hasattr(obj, "to_dict") else obj
    assert set(raw) <= set(model.model_fields), set(raw) - set(model.model_fields)
    return model.model_validate(raw)


def error_body(raised: pytest.ExceptionInfo[openai.APIStatusError], status: int) -> dict[str, Any]:
    """The error the client raised, checked to be OpenAI's error object with this status."""
    e = raised.value
    assert e.status_code == status
    assert set(e.response.json()) == {"error"}
    body = e.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["message"]
    return dict(body)


def specialist_name(model: Path) -> str:
    """What an output line the specialist answered names as its model: the folder, and its version's identity."""
    return f"cascade-specialist/{model.resolve().name}@{read_manifest(model).identity[:12]}"


def models_by_tier(output: bytes) -> dict[str, set[str]]:
    """The ``response.body.model`` of the output lines, by the tier that answered them."""
    models: dict[str, set[str]] = {}
    for line in output.splitlines():
        body = json.loads(line)["response"]["body"]
        models.setdefault(body["cascade"]["tier"], set()).add(body["model"])
    return models


@pytest.fixture
def api(settings: Settings, sms_model: Path, redis_db: object, tmp_path: Path) -> Iterator[str]:
    proc, url = start_api(settings, sms_model, tmp_path / "api.log")
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def uploads(a: openai.OpenAI, path: Path, settings: Settings) -> tuple[FileObject, FileObject]:
    """Two uploads: File objects with status and expires_at; expires_after shortens the retention."""
    with path.open("rb") as f:
        kept = strict(FileObject, a.files.create(file=f, purpose="batch"))
    with path.open("rb") as f:
        short = a.files.create(file=f, purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600})
    assert (kept.purpose, kept.status, kept.bytes) == ("batch", "processed", path.stat().st_size)
    assert kept.expires_at == kept.created_at + settings.file_retention_seconds()
    assert short.expires_at == short.created_at + 3600
    assert strict(FileObject, a.files.retrieve(kept.id)) == kept
    return kept, short


def check_usage(done: Batch, output: bytes) -> None:
    """The batch's usage is the sum of its output lines' (0 here: the specialist answered every line)."""
    lines = [json.loads(line) for line in output.splitlines()]
    tokens = {k: sum(o["response"]["body"]["usage"][k] for o in lines) for k in ("prompt_tokens", "completion_tokens")}
    assert done.usage == BatchUsage.model_validate(
        {
            "input_tokens": tokens["prompt_tokens"],
            "output_tokens": tokens["completion_tokens"],
            "total_tokens": sum(tokens.values()),
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
    )


def batch_files(a: openai.OpenAI, b: openai.OpenAI, done: Batch) -> tuple[FileObject, FileObject]:
    """The output and error files are File objects too: purpose batch_output, their bytes, their expiry."""
    assert done.output_file_id
    assert done.error_file_id
    assert done.completed_at is not None
    output = a.files.content(done.output_file_id).read()
    errors = a.files.content(done.error_file_id).read()
    check_usage(done, output)
    out = strict(FileObject, a.files.retrieve(done.output_file_id))
    err = strict(FileObject, a.files.retrieve(done.error_file_id))
    assert (out.purpose, out.status, out.bytes, out.created_at) == (
        "batch_output",
        "processed",
        len(output),
        done.completed_at,
    )
    assert (err.purpose, err.bytes) == ("batch_output", len(errors))
    assert out.expires_at == err.expires_at == done.completed_at + 7200  # output_expires_after, from their creation
    with pytest.raises(openai.NotFoundError):
        b.files.retrieve(done.output_file_id)
    return out, err


def listing(a: openai.OpenAI, b: openai.OpenAI, uploaded: set[str], outputs: set[str]) -> None:
    """The caller's files only, newest first by default, paged by the client, filtered by purpose."""
    listed = a.files.list()
    assert all(strict(FileObject, f) for f in listed.data)
    assert listed.has_more is False
    assert {f.id for f in listed.data} == uploaded | outputs
    newest_first = [(f.created_at, f.id) for f in listed.data]
    assert newest_first == sorted(newest_first, reverse=True)
    assert [f.id for f in a.files.list(order="asc").data] == [f.id for f in reversed(listed.data)]
    one_by_one = a.files.list(limit=1)
    assert (len(one_by_one.data), one_by_one.has_more) == (1, True)
    assert [f.id for f in one_by_one] == [f.id for f in listed.data]  # the client follows `after` page by page
    assert {f.id for f in a.files.list(purpose="batch_output")} == outputs
    assert {f.id for f in a.files.list(purpose="batch")} == uploaded
    assert b.files.list().data == []


def test_the_official_client_drives_files_and_batches_end_to_end(
    api: str, settings: Settings, sms_model: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    a = openai.OpenAI(base_url=api, api_key="tok-a", max_retries=0)
    b = openai.OpenAI(base_url=api, api_key="tok-b", max_retries=0)
    kept, short = uploads(a, write_jsonl(tmp_path / "batch.jsonl", openai_rows(settings.llm_model)), settings)

    # A batch whose intake has not read its input yet (no worker): the input cannot be deleted (409).
    batch = a.batches.create(
        input_file_id=kept.id,
        endpoint=ENDPOINT,
        completion_window="24h",
        metadata={"cascade_threshold": "0"},
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert strict(Batch, batch).status == "validating"
    assert (batch.model, batch.usage) == (settings.llm_model, None)  # usage is known once the batch has ended
    with pytest.raises(openai.ConflictError) as in_use:
        a.files.delete(kept.id)
    assert error_body(in_use, 409)["code"] == "file_in_use"
    with pytest.raises(openai.NotFoundError):  # not ended: no output file yet
        a.files.retrieve("file-out-" + batch.id)

    start_worker(queues="specialist")
    done = strict(Batch, poll(a, batch.id))
    assert done.status == "completed"
    assert done.model == settings.llm_model  # the batch's model is the LLM's, whichever tier answered
    out, err = batch_files(a, b, done)
    assert models_by_tier(a.files.content(out.id).read()) == {"specialist": {specialist_name(sms_model)}}
    listing(a, b, {kept.id, short.id}, {out.id, err.id})

    # Deleting: an upload goes, content and metadata; an output file is gone for its owner; the batch stays.
    assert strict(FileDeleted, a.files.delete(short.id)) == FileDeleted(id=short.id, object="file", deleted=True)
    assert not (Path(settings.files_dir) / short.id).exists()
    with pytest.raises(openai.NotFoundError):
        a.files.retrieve(short.id)
    with pytest.raises(openai.NotFoundError):
        b.files.delete(kept.id)  # another caller's
    assert a.files.delete(kept.id).deleted  # its batch has read it: it may go
    assert a.files.delete(out.id).deleted
    for call in (a.files.retrieve, a.files.content, a.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(out.id)
    assert [f.id for f in a.files.list()] == [err.id]
    assert a.batches.retrieve(batch.id).output_file_id == out.id  # as OpenAI keeps it

    # Batches: the list is OpenAI's page; a batch that has ended cannot be cancelled (409).
    page = a.batches.list(limit=1)
    assert [strict(Batch, x).id for x in page.data] == [batch.id]
    assert page.has_more is False
    with pytest.raises(openai.ConflictError) as ended:
        a.batches.cancel(batch.id)
    assert error_body(ended, 409)["code"] == "batch_not_cancellable"
    assert "completed" in ended.value.message


def test_every_error_is_openai_error_object_with_its_status(api: str, tmp_path: Path) -> None:
    a = openai.OpenAI(base_url=api, api_key="tok-a", max_retries=0)
    with write_jsonl(tmp_path / "one.jsonl", [{"custom_id": "x", "text": "hi"}]).open("rb") as f:
        file_id = a.files.create(file=f, purpose="batch").id
    batch = a.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h")

    bad: list[tuple[Any, str, str]] = [
        (lambda: a.files.list(limit=0), "limit", "invalid_value"),
        (lambda: a.files.list(limit=10_001), "limit", "invalid_value"),
        (lambda: a.files.list(order="sideways"), "order", "invalid_value"),  # type: ignore[arg-type]
        (lambda: a.batches.list(limit=0), "limit", "invalid_value"),
        (lambda: a.batches.list(limit=101), "limit", "invalid_value"),
    ]
    expiry = [
        ({"anchor": "last_active_at", "seconds": 3600}, "output_expires_after.anchor", "invalid_value"),
        ({"anchor": "created_at", "seconds": 3599}, "output_expires_after.seconds", "invalid_value"),
        ({"anchor": "created_at", "seconds": 2_592_001}, "output_expires_after.seconds", "invalid_value"),
        ({"anchor": "created_at"}, "output_expires_after.seconds", "missing_required_parameter"),
        ({"anchor": "created_at", "seconds": "soon"}, "output_expires_after.seconds", "invalid_value"),
    ]
    for value, param, code in expiry:
        bad.append(
            (
                lambda v=value: a.batches.create(
                    input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h", output_expires_after=v
                ),
                param,
                code,
            )
        )
    for call, param, code in bad:
        with pytest.raises(openai.BadRequestError) as raised:
            call()
        body = error_body(raised, 400)
        assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", param, code), body
        assert (raised.value.param, raised.value.code) == (param, code)  # what the SDK reads from it
    assert [x.id for x in a.batches.list()] == [batch.id]  # the refused creations left nothing behind

    for key in ["wrong", "tok-a-and-more"]:
        for unauthorized in (lambda c: c.files.list(), lambda c: c.files.delete(file_id), lambda c: c.batches.list()):
            with pytest.raises(openai.AuthenticationError) as raised:
                unauthorized(openai.OpenAI(base_url=api, api_key=key, max_retries=0))
            assert error_body(raised, 401)["code"] == "invalid_api_key"

    for listing_after in (lambda: a.files.list(after="file-nope"), lambda: a.batches.list(after="batch_nope")):
        with pytest.raises(openai.NotFoundError) as raised:  # a page after what is none of the caller's
            listing_after()
        assert error_body(raised, 404)["param"] == "after"
    for missing in (
        lambda: a.files.retrieve("file-nope"),
        lambda: a.files.delete("file-nope"),
        lambda: a.files.retrieve("file-err-" + batch.id),  # the batch has not ended
        lambda: a.files.delete("file-out-batch_nope"),
        lambda: a.batches.cancel("batch_nope"),
    ):
        with pytest.raises(openai.NotFoundError) as raised:
            missing()
        assert error_body(raised, 404)["type"] == "invalid_request_error"

    with pytest.raises(openai.ConflictError) as raised:
        a.files.delete(file_id)  # no worker: its batch is still to read it
    assert error_body(raised, 409)["code"] == "file_in_use"
    a.batches.cancel(batch.id)
    assert a.batches.cancel(batch.id).status == "cancelling"  # asked again while cancelling: no conflict

    response = httpx2.get(api + "/files", headers={"Authorization": "Bearer tok-a"}, params={"limit": "many"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "limit"


# In process: records written into the real store as a worker would, with the LLM's tokens.

AUTH = {"Authorization": "Bearer tok-a"}


@pytest.fixture
def client(settings: Settings, sms_model: Path, redis_db: redis.Redis, tmp_path: Path) -> TestClient:
    update = {"api_tokens": SecretStr("tok-a=team-a"), "model_dir": str(sms_model), "files_dir": str(tmp_path)}
    # The result store the `store` fixture (the tests' workers) writes to: the API and the workers share it.
    update["results_url"] = settings.results_location()
    return TestClient(create_app(settings.model_copy(update=update)))


def completed_batch(client: TestClient, store: RedisJobStore, **body: Any) -> str:
    """A batch created through the API and answered as workers would: one line by the specialist, one by the LLM
    (with its tokens), one failed."""
    upload = client.post(
        "/v1/files", headers=AUTH, data={"purpose": "batch"}, files={"file": ("in.jsonl", b'{"custom_id":"a"}\n')}
    )
    create = {"input_file_id": upload.json()["id"], "endpoint": ENDPOINT, "completion_window": "24h", **body}
    job_id = str(client.post("/v1/batches", headers=AUTH, json=create).json()["id"])
    store.put_chunk(job_id, 0, [Item(custom_id=c, text="t", line=i) for i, c in enumerate("abc", start=1)])
    store.finish_intake(job_id, total=3, chunks=1)
    common = {"confidence": 0.9, "specialist_confidence": 0.6, "specialist_label": "ham"}
    results = [
        ItemResult(custom_id="a", line=1, label="ham", tier=Tier.SPECIALIST, route=Route.ACCEPT, **common),
        ItemResult(
            custom_id="b",
            line=2,
            label="spam",
            tier=Tier.LLM,
            route=Route.ESCALATE,
            llm_label="spam",
            llm_prompt_tokens=120,
            llm_completion_tokens=3,
            **common,
        ),
    ]
    failed = [ItemError(line=3, custom_id="c", code=ErrorCode.LLM_ERROR, message="line 3: failed")]
    assert store.record(job_id, 0, results=results, errors=failed).finished
    return job_id


def test_usage_counts_the_llm_tokens_of_the_records_and_files_their_bytes(
    client: TestClient, store: RedisJobStore, sms_model: Path
) -> None:
    job_id = completed_batch(client, store)
    batch = strict(Batch, client.get(f"/v1/batches/{job_id}", headers=AUTH).json())
    assert batch.status == "completed"
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens, batch.usage.total_tokens) == (120, 3, 123)
    assert batch.usage.total_tokens == store.stats(job_id).llm_tokens  # the store's own counter agrees
    assert batch.model == store.spec(job_id).llm_model
    output = client.get(f"/v1/files/{batch.output_file_id}/content", headers=AUTH).content
    assert models_by_tier(output) == {"specialist": {specialist_name(sms_model)}, "llm": {batch.model}}
    for file_id in (batch.output_file_id, batch.error_file_id):
        info = strict(FileObject, client.get(f"/v1/files/{file_id}", headers=AUTH).json())
        content = client.get(f"/v1/files/{file_id}/content", headers=AUTH).content
        assert info.bytes == len(content) > 0
        assert info.expires_at == batch.created_at + store.job_ttl  # no output_expires_after: the job's lifetime


def test_output_expires_after_refuses_the_output_once_passed(
    client: TestClient, store: RedisJobStore, redis_db: redis.Redis
) -> None:
    job_id = completed_batch(client, store, output_expires_after={"anchor": "created_at", "seconds": 3600})
    batch = client.get(f"/v1/batches/{job_id}", headers=AUTH).json()
    out = client.get(f"/v1/files/{batch['output_file_id']}", headers=AUTH).json()
    assert out["expires_at"] == batch["completed_at"] + 3600
    assert client.get(f"/v1/files/{batch['output_file_id']}/content", headers=AUTH).status_code == 200
    ended = float(store.fields(job_id, "finished_at")[0] or 0)
    redis_db.hset(JobKeys(job_id).job, "finished_at", repr(ended - 3600))  # an hour has passed since the end
    for path in (f"/v1/files/{batch['output_file_id']}", f"/v1/files/{batch['output_file_id']}/content"):
        gone = client.get(path, headers=AUTH)
        assert gone.status_code == 404
        assert "expired" in gone.json()["error"]["message"]
    assert client.get("/v1/files", headers=AUTH, params={"purpose": "batch_output"}).json()["data"] == []
    assert client.get(f"/v1/batches/{job_id}", headers=AUTH).json()["status"] == "completed"  # the batch stays


@pytest.mark.llm
def test_lines_the_llm_answered_name_the_llm_and_the_others_the_specialist(
    api: str, settings: Settings, sms_model: Path, vllm_server: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """Threshold 1: every item the specialist is not certain of goes to the real LLM (SmolLM2 on vLLM)."""
    a = openai.OpenAI(base_url=api, api_key="tok-a", max_retries=0)
    rows = [r for r in openai_rows(settings.llm_model) if isinstance(r, dict) and "body" in r][:6]
    with write_jsonl(tmp_path / "few.jsonl", rows).open("rb") as f:
        file_id = a.files.create(file=f, purpose="batch").id
    batch = a.batches.create(
        input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h", metadata={"cascade_threshold": "1"}
    )
    start_worker(queues="specialist,llm")
    done = strict(Batch, poll(a, batch.id, timeout=300))
    assert (done.status, done.model) == ("completed", settings.llm_model)
    assert done.output_file_id
    models = models_by_tier(a.files.content(done.output_file_id).read())
    assert models.get("llm") == {settings.llm_model}, models
    assert set(models) <= {"llm", "specialist"}  # a specialist line: one it was certain of, or an LLM failure kept
    assert models.get("specialist", {specialist_name(sms_model)}) == {specialist_name(sms_model)}
