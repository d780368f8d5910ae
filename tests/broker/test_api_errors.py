"""The API's last-resort error handling, in process: routes that fail on purpose are added to a real app (an
injected fault; no request of the real API is known to fail so)."""

import hashlib
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from cascade.broker.api import ConflictError, create_app
from cascade.broker.settings import Settings
from cascade.workers.errors import InputError, ModelError, NotFoundError


def boom() -> None:
    raise RuntimeError("internal detail that must not reach the caller")


def model_broken() -> None:
    raise ModelError("the specialist folder is missing")


def bad_input() -> None:
    raise InputError("the input is unusable")


def missing() -> None:
    raise NotFoundError("no batch 'x'")


def conflict() -> None:
    raise ConflictError("cannot cancel a batch with status 'completed'", code="batch_not_cancellable")


@pytest.fixture
def client(settings: Settings, sms_model: Path, redis_db: object, tmp_path: Path) -> TestClient:
    app = create_app(
        settings.model_copy(
            update={"api_tokens": SecretStr("tok-a=team-a"), "model_dir": str(sms_model), "files_dir": str(tmp_path)}
        )
    )
    for route in [boom, model_broken, bad_input, missing, conflict]:
        app.add_api_route(f"/v1/{route.__name__}", route)
    return TestClient(app, raise_server_exceptions=False)


def test_an_unexpected_error_is_a_500_in_openai_shape_with_its_traceback_logged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = client.get("/v1/boom")
    assert response.status_code == 500
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert "internal detail" not in response.text
    logged = [r for r in caplog.records if r.exc_info and "internal detail" in str(r.exc_info[1])]
    assert logged, caplog.text


@pytest.mark.parametrize(
    ("path", "status"), [("model_broken", 400), ("bad_input", 400), ("missing", 404), ("conflict", 409)]
)
def test_cascade_errors_are_4xx_in_openai_shape(client: TestClient, path: str, status: int) -> None:
    response = client.get(f"/v1/{path}")
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_hashed_token_lets_its_owner_in_and_the_hash_itself_does_not(
    settings: Settings, sms_model: Path, redis_db: object, tmp_path: Path
) -> None:
    """CASCADE_API_TOKENS may hold a token's SHA-256 instead of the token; presenting that hash is refused."""
    digest = hashlib.sha256(b"tok-b").hexdigest()
    tokens = SecretStr(f"sha256:{digest}=team-b")
    update = {"api_tokens": tokens, "model_dir": str(sms_model), "files_dir": str(tmp_path)}
    hashed = TestClient(create_app(settings.model_copy(update=update)), raise_server_exceptions=False)
    assert hashed.get("/v1/batches", headers={"Authorization": "Bearer tok-b"}).status_code == 200
    refused = hashed.get("/v1/batches", headers={"Authorization": f"Bearer sha256:{digest}"})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
