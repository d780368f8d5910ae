"""Redis locked with a password (and, optionally, TLS), against real redis-server processes of the tests' own on
free ports: a job submitted with `cascade submit` and run by a real `cascade worker` completes with the password
given as CASCADE_REDIS_PASSWORD or inside CASCADE_REDIS_URL (and over TLS, `rediss://`, with CASCADE_REDIS_CA_FILE);
a wrong or missing password is one line, exit 6, naming the Redis (its password masked) and the settings, never a
traceback and never the password; `cascade doctor` FAILs on it, and WARNs on a Redis without a password."""

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from cascade.broker.settings import Settings
from tests.conftest import CASCADE, WorkerFactory, _env, free_port, write_jsonl

PASSWORD = "pw-" + "s3cr3t/with:odd@chars"
"""Characters a URL must escape: the password travels inside CASCADE_REDIS_URL once the settings are built."""


@dataclass(frozen=True)
class LockedRedis:
    port: int
    url: str
    """Without the password."""


def _start(cmd: list[str], client: redis.Redis) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            assert proc.poll() is None, f"redis-server exited {proc.returncode}: {' '.join(cmd)}"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def _redis_args(port: int, folder: Path) -> list[str]:
    return [
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
        "--requirepass",
        PASSWORD,
        "--port",
        str(port),
    ]


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[LockedRedis]:
    """A redis-server that wants PASSWORD."""
    port = free_port()
    proc = _start(_redis_args(port, tmp_path), redis.Redis(port=port, password=PASSWORD))
    yield LockedRedis(port, f"redis://127.0.0.1:{port}/0")
    _stop(proc)


@dataclass(frozen=True)
class TLSRedis:
    port: int
    ca_file: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TLSRedis]:
    """A redis-server that speaks TLS only (no plain port) and wants PASSWORD; its certificate (for 127.0.0.1) is
    signed by a throwaway CA made here."""
    ca_key, ca, key, csr, cert, ext = (tmp_path / n for n in ("ca.key", "ca.pem", "r.key", "r.csr", "r.pem", "r.ext"))
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=ca"
    )
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=r")
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        *("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial"),
        *("-days", "2", "-extfile", str(ext), "-out", str(cert)),
    )
    port = free_port()
    tls = ["--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    cmd = [*_redis_args(0, tmp_path), *tls, "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
    client = redis.Redis(port=port, password=PASSWORD, ssl=True, ssl_ca_certs=str(ca))
    proc = _start(cmd, client)
    yield TLSRedis(port, ca)
    _stop(proc)


def _cascade(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CASCADE, *args],
        env={**_env(settings), "CASCADE_REDIS_PASSWORD": "", "CASCADE_REDIS_CA_FILE": "", **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


ROWS: list[dict[str, object] | str] = [
    {"custom_id": f"m{i}", "text": text}
    for i, text in enumerate(
        ["Ok lar... Joking wif u oni...", "WINNER!! Claim your free prize now", "see you at 6"] * 4
    )
]


def _job_completes(settings: Settings, model: Path, worker: WorkerFactory, tmp_path: Path, **env: str) -> None:
    """Submit through `cascade submit --wait` to a worker with the same settings; every line is answered."""
    worker(queues="specialist", concurrency=1, **{"CASCADE_REDIS_PASSWORD": "", "CASCADE_REDIS_CA_FILE": "", **env})
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    done = _cascade(settings, "submit", str(data), "--model", str(model), "--threshold", "0", "--wait", **env)
    assert done.returncode == 0, done.stdout + done.stderr
    job = done.stdout.splitlines()[0].strip()
    results = _cascade(settings, "results", job, **env)
    assert results.returncode == 0, results.stderr
    assert sorted(json.loads(line)["custom_id"] for line in results.stdout.splitlines()) == sorted(
        str(r["custom_id"]) for r in ROWS if isinstance(r, dict)
    )
    assert PASSWORD not in done.stdout + done.stderr + results.stderr


@pytest.mark.parametrize("given", ["CASCADE_REDIS_PASSWORD", "in the URL"])
def test_a_job_completes_against_a_redis_with_a_password(
    given: str,
    settings: Settings,
    sms_model: Path,
    start_worker: WorkerFactory,
    locked_redis: LockedRedis,
    tmp_path: Path,
) -> None:
    if given == "CASCADE_REDIS_PASSWORD":
        env = {"CASCADE_REDIS_URL": locked_redis.url, "CASCADE_REDIS_PASSWORD": PASSWORD}
    else:
        escaped = PASSWORD.replace("/", "%2F").replace(":", "%3A").replace("@", "%40")
        env = {"CASCADE_REDIS_URL": f"redis://:{escaped}@127.0.0.1:{locked_redis.port}/0"}
    _job_completes(settings, sms_model, start_worker, tmp_path, **env)
    assert redis.Redis(port=locked_redis.port, password=PASSWORD).dbsize() > 0, "the job went to this Redis"


@pytest.mark.parametrize("command", ["submit", "status"])
@pytest.mark.parametrize("password", ["wrong-one", ""])
def test_a_wrong_or_missing_password_is_one_line_naming_redis_and_the_setting(
    command: str, password: str, settings: Settings, sms_model: Path, locked_redis: LockedRedis, tmp_path: Path
) -> None:
    args = [str(write_jsonl(tmp_path / "in.jsonl", ROWS)), "--model", str(sms_model)] if command == "submit" else ["j"]
    env = {"CASCADE_REDIS_URL": locked_redis.url, "CASCADE_REDIS_PASSWORD": password}
    done = _cascade(settings, command, *args, **env)
    assert done.returncode == 6, done.stdout + done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ")
    assert f"127.0.0.1:{locked_redis.port}/0" in line
    assert "CASCADE_REDIS_PASSWORD" in line
    assert "CASCADE_REDIS_URL" in line
    if password:
        assert f"redis://:***@127.0.0.1:{locked_redis.port}/0 refused the password" in line
        assert password not in line
    else:
        assert "wants a password and none was given" in line
    assert PASSWORD not in line


def _doctor(settings: Settings, **env: str) -> dict[str, tuple[str, str]]:
    done = _cascade(
        settings, "doctor", "--timeout", "1", CASCADE_MODEL_DIR="", CASCADE_LLM_URL="http://127.0.0.1:9/v1", **env
    )
    assert done.returncode == 1, done.stdout + done.stderr  # the LLM check FAILs at least
    assert done.stderr == ""
    assert "Traceback" not in done.stdout
    found: dict[str, tuple[str, str]] = {}
    for line in done.stdout.splitlines():  # "OUTCOME name: detail"
        outcome, _, rest = line.partition(" ")
        name, _, detail = rest.strip().partition(": ")
        found[name] = (outcome, detail)
    return found


@pytest.mark.parametrize("password", ["wrong-one", ""])
def test_doctor_fails_redis_on_a_wrong_or_missing_password(
    password: str, settings: Settings, locked_redis: LockedRedis
) -> None:
    found = _doctor(settings, CASCADE_REDIS_URL=locked_redis.url, CASCADE_REDIS_PASSWORD=password)
    outcome, detail = found["redis"]
    assert outcome == "FAIL"
    assert f"127.0.0.1:{locked_redis.port}/0" in detail
    assert "set CASCADE_REDIS_PASSWORD (or the password in CASCADE_REDIS_URL)" in detail
    assert "redis password" not in found
    assert "redis persistence" not in found
    assert found["queues"][0] == "skip"


def test_doctor_passes_the_password_and_warns_without_one(settings: Settings, locked_redis: LockedRedis) -> None:
    found = _doctor(settings, CASCADE_REDIS_URL=locked_redis.url, CASCADE_REDIS_PASSWORD=PASSWORD)
    assert found["redis"] == ("ok", f"answers at redis://:***@127.0.0.1:{locked_redis.port}/0")
    assert found["redis password"][0] == "ok"
    # The machine's Redis, with no login at all, and with the local stack's, which it does not require (an ACL user
    # beside a default user without a password): a warning, both.
    tests = urlsplit(settings.redis_url)
    host = tests.netloc.rpartition("@")[2]
    plain = urlunsplit(tests._replace(netloc=host))
    outcome, detail = _doctor(settings, CASCADE_REDIS_URL=plain)["redis password"]
    assert outcome == "WARN"
    assert "no password" in detail
    assert "the local stack's" in detail
    assert "CASCADE_REDIS_PASSWORD" in detail
    redis.Redis.from_url(plain).acl_setuser(
        "cascade-doctor-test", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all"]
    )
    try:
        login = urlunsplit(tests._replace(netloc=f"cascade-doctor-test:pw@{host}"))
        found = _doctor(settings, CASCADE_REDIS_URL=login)
    finally:
        redis.Redis.from_url(plain).acl_deluser("cascade-doctor-test")
    assert found["redis"] == ("ok", f"answers at redis://cascade-doctor-test:***@{host}{tests.path}")
    outcome, detail = found["redis password"]
    assert outcome == "WARN"
    assert "Redis answers without one too" in detail
    assert "the local stack's" in detail


def test_a_job_completes_over_tls_verified_against_the_ca_file(
    settings: Settings, sms_model: Path, start_worker: WorkerFactory, tls_redis: TLSRedis, tmp_path: Path
) -> None:
    url = f"rediss://127.0.0.1:{tls_redis.port}/0"
    env = {
        "CASCADE_REDIS_URL": url,
        "CASCADE_REDIS_PASSWORD": PASSWORD,
        "CASCADE_REDIS_CA_FILE": str(tls_redis.ca_file),
    }
    _job_completes(settings, sms_model, start_worker, tmp_path, **env)
    # The certificate is verified: without the CA that signed it (the system's CAs instead), no connection.
    done = _cascade(settings, "status", "j", CASCADE_REDIS_URL=url, CASCADE_REDIS_PASSWORD=PASSWORD)
    assert done.returncode == 6, done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert "certificate verify failed" in line
    assert PASSWORD not in line
