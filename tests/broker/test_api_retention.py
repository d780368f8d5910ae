"""The API's part in keeping Redis and the files folder bounded, in process: an upload's ``expires_after``, the
batch that reads a file, a list of batches over expired ones."""

from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from cascade.broker import keys
from cascade.broker.api import create_app
from cascade.broker.keys import JobKeys
from cascade.broker.settings import Settings

AUTH = {"Authorization": "Bearer tok-a"}


@pytest.fixture
def client(settings: Settings, sms_model: Path, redis_db: redis.Redis, tmp_path: Path) -> TestClient:
    update = {"api_tokens": SecretStr("tok-a=team-a"), "model_dir": str(sms_model), "files_dir": str(tmp_path)}
    return TestClient(create_app(settings.model_copy(update=update)))


def upload(client: TestClient, **form: str) -> str:
    files = {"file": ("in.jsonl", b'{"custom_id": "a", "text": "hi"}\n')}
    response = client.post("/v1/files", headers=AUTH, data={"purpose": "batch", **form}, files=files)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_expires_after_shortens_an_uploads_retention(client: TestClient, redis_db: redis.Redis) -> None:
    default, short = (
        upload(client),
        upload(client, **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}),
    )
    assert redis_db.hget(keys.file(default), "retention") == str(7 * 86_400)
    assert redis_db.hget(keys.file(short), "retention") == "3600"
    created = client.get(f"/v1/files/{short}", headers=AUTH).json()["created_at"]
    assert redis_db.zscore(keys.FILES, short) == created + 3600


@pytest.mark.parametrize(
    ("form", "param"),
    [
        ({"expires_after[anchor]": "last_active_at"}, "expires_after.anchor"),
        ({"expires_after[seconds]": "60"}, "expires_after.seconds"),
    ],
)
def test_a_bad_expires_after_is_a_400(client: TestClient, form: dict[str, str], param: str) -> None:
    files = {"file": ("in.jsonl", b"{}\n")}
    response = client.post("/v1/files", headers=AUTH, data={"purpose": "batch", **form}, files=files)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_a_batch_keeps_its_file_and_a_list_skips_expired_batches(client: TestClient, redis_db: redis.Redis) -> None:
    file_id = upload(client)
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    ids = [client.post("/v1/batches", headers=AUTH, json=body).json()["id"] for _ in range(3)]
    assert all(redis_db.hexists(keys.file(file_id), f"batch:{i}") for i in ids)
    redis_db.delete(JobKeys(ids[1]).job)  # its keys expired
    listed = client.get("/v1/batches", headers=AUTH, params={"limit": 5}).json()
    assert [b["id"] for b in listed["data"]] == [ids[2], ids[0]]
    assert not listed["has_more"]
