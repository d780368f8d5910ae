"""``CASCADE_API_TOKENS``: every mistake stops the API with one line naming the variable and the entry, never the
secret; the owner "" of CLI-submitted jobs can never be a caller."""

import hashlib
import subprocess

import pytest
from pydantic import SecretStr

from cascade.broker.settings import Settings, token_digest
from cascade.workers.errors import SettingsError
from tests.conftest import CASCADE, _env, free_port


def owners(tokens: str) -> dict[str, str]:
    return Settings(api_tokens=SecretStr(tokens)).owners()


def test_tokens_parse_into_owners_with_blanks_trimmed() -> None:
    assert owners(" tok-a = team-a , tok-b=team-b=x,") == {"tok-a": "team-a", "tok-b": "team-b=x"}
    assert owners("") == {}


@pytest.mark.parametrize(
    ("tokens", "secret", "reason"),
    [
        ("tokA=team-a,tokE=", "tokE", "entry 2 has an empty owner"),
        ("tokA=team-a,tokE=  ", "tokE", "entry 2 has an empty owner"),
        ("tokA=team-a,s3cretNoEquals", "s3cretNoEquals", "entry 2 is not token=owner"),
        ("=team-a", "team-a", "entry 1 has an empty token"),
        ("tokA=team-a,,tokA=team-b", "tokA", "entry 3 repeats the token of entry 1"),
    ],
)
def test_a_bad_token_entry_is_a_settings_error_naming_the_entry_not_the_secret(
    tokens: str, secret: str, reason: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        owners(tokens)
    message = str(raised.value)
    assert message.startswith("CASCADE_API_TOKENS: ")
    assert reason in message
    assert "\n" not in message
    if secret != "team-a":
        assert secret not in message


def test_the_api_refuses_to_start_with_one_line_on_stderr(settings: Settings) -> None:
    env = {**_env(settings), "CASCADE_API_TOKENS": "tokA=team-a,tokE=", "CASCADE_MODEL_DIR": "/nonexistent"}
    cmd = [CASCADE, "api", "--port", str(free_port())]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 2
    assert run.stderr.splitlines() == ["error: CASCADE_API_TOKENS: entry 2 has an empty owner (expected token=owner)"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CASCADE_THRESHOLD", "abc"), ("CASCADE_COMPLETION_WINDOW", "2"), ("CASCADE_MAX_DELIVERIES", "0")],
)
def test_a_bad_setting_is_one_line_naming_its_variable(settings: Settings, variable: str, value: str) -> None:
    env = {**_env(settings), variable: value}
    run = subprocess.run(
        [CASCADE, "status", "batch_x"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"error: {variable}: ")


def test_a_token_may_be_given_hashed_and_a_bad_hash_names_its_entry() -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    assert token_digest(owners(f"sha256:{digest}=team-a").popitem()[0]) == hashlib.sha256(b"s3cret").digest()
    with pytest.raises(SettingsError, match="entry 1 has a sha256: token that is not 64 hex digits"):
        owners("sha256:abc=team-a")
    with pytest.raises(SettingsError, match=r"entry 2 repeats the token of entry 1 \(hashed\)"):
        owners(f"s3cret=team-a,sha256:{digest}=team-b")
