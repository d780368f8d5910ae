"""The API's last-resort error handling, in process: routes that fail on purpose are added to a real app (an
injected fault; no request of the real API is known to fail so)."""

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from cascade.broker.api import create_app
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


@pytest.fixture
def client(settings: Settings, sms_model: Path, redis_db: object, tmp_path: Path) -> TestClient:
    app = create_app(
        settings.model_copy(
            update={"api_tokens": SecretStr("tok-a=team-a"), "model_dir": str(sms_model), "files_dir": str(tmp_path)}
        )
    )
    for route in [boom, model_broken, bad_input, missing]:
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


@pytest.mark.parametrize(("path", "status"), [("model_broken", 400), ("bad_input", 400), ("missing", 404)])
def test_cascade_errors_are_4xx_in_openai_shape(client: TestClient, path: str, status: int) -> None:
    response = client.get(f"/v1/{path}")
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
