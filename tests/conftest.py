"""Shared fixtures: a real Redis database of the tests' own, trained models, real worker processes, vLLM.

Redis: ``CASCADE_TEST_REDIS_URL`` (default ``redis://cascade:…@127.0.0.1:6379/15``: the local stack's login, an ACL
user that ``deploy/local/common.sh ensure_redis`` creates), flushed by the tests; never db 0.
vLLM: the server at ``CASCADE_LLM_URL`` when it answers, else started once per session by
``deploy/local/vllm_serve.sh`` (and stopped at the end if this session started it).
S3: the server at ``CASCADE_TEST_S3_ENDPOINT`` (default SeaweedFS on ``http://127.0.0.1:8333``, started by
``deploy/local/common.sh ensure_seaweedfs``); each test that asks for ``s3_bucket`` gets a fresh bucket.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import redis
import s3fs

from cascade.broker.results import open_parts
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers import specialist
from cascade.workers.data import read_labelled_csv

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("CASCADE_DATASETS", ROOT.parent / "shared" / "datasets"))
# The tests log in to Redis as the local stack does: an ACL user on the machine's Redis, made by
# deploy/local/common.sh ensure_redis_user. Local-only credentials, never a real Redis's.
LOCAL_REDIS_LOGIN = "cascade:cascade-local-redis@"
TEST_REDIS_URL = os.environ.get("CASCADE_TEST_REDIS_URL", f"redis://{LOCAL_REDIS_LOGIN}127.0.0.1:6379/15")
CASCADE = str(Path(sys.executable).parent / "cascade")


def _check_test_db(url: str) -> None:
    if url.rstrip("/").endswith(("/0", ":6379")):
        raise RuntimeError(f"tests refuse to flush Redis database 0 ({url}); set CASCADE_TEST_REDIS_URL")


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    _check_test_db(TEST_REDIS_URL)
    try:
        with redis.Redis.from_url(TEST_REDIS_URL) as client:
            client.ping()
    except redis.AuthenticationError as e:
        pytest.fail(
            f"Redis refused the tests' login ({e}): `. deploy/local/common.sh && ensure_redis` creates the local "
            "ACL user, or set CASCADE_TEST_REDIS_URL",
            pytrace=False,
        )
    llm_url = os.environ.get("CASCADE_LLM_URL", "http://127.0.0.1:8000/v1")
    files = tmp_path_factory.mktemp("files")  # the API's uploads, read by the workers' intake tasks
    return Settings(redis_url=TEST_REDIS_URL, llm_url=llm_url, chunk_size=300, files_dir=str(files))


@pytest.fixture
def redis_db(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def store(settings: Settings, redis_db: redis.Redis) -> RedisJobStore:
    return RedisJobStore(redis_db, settings.job_ttl, open_parts(settings))


def dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_dir():
        pytest.fail(f"dataset {path} is missing (read from ../shared/datasets, set CASCADE_DATASETS)")
    return path


def _train(tmp: Path, csv: Path) -> Path:
    data = read_labelled_csv(csv)
    report = specialist.train(data.texts, data.labels)
    return specialist.save(report, tmp, data.sha256)


@pytest.fixture(scope="session")
def sms_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("sms_model"), dataset("sms_spam") / "train.csv")


@pytest.fixture(scope="session")
def banking_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("banking_model"), dataset("banking77") / "train.csv")


@dataclass(frozen=True)
class S3Server:
    """An S3-compatible server the tests write to (SeaweedFS locally and in CI)."""

    endpoint_url: str
    key: str
    secret: str

    def filesystem(self, secret: str | None = None) -> s3fs.S3FileSystem:
        """An s3fs filesystem on this server (``secret`` replaces the right one, to be refused). fsspec reuses one
        instance per arguments, and with it its listings cache: ``invalidate_cache()`` before listing afresh."""
        return s3fs.S3FileSystem(
            key=self.key,
            secret=self.secret if secret is None else secret,
            client_kwargs={"endpoint_url": self.endpoint_url},
        )


def _s3_problem(endpoint_url: str) -> str:
    """Why nothing answers at ``endpoint_url``, or "" when something does (any HTTP answer: S3 refuses a request
    without a signature)."""
    try:
        httpx2.get(endpoint_url, timeout=5)
    except httpx2.HTTPError as e:
        return str(e) or type(e).__name__
    return ""


@pytest.fixture(scope="session")
def s3() -> S3Server:
    """The S3 server, which must answer: a missing one fails the test, never skips it."""
    server = S3Server(
        endpoint_url=os.environ.get("CASCADE_TEST_S3_ENDPOINT", "http://127.0.0.1:8333"),
        key=os.environ.get("CASCADE_TEST_S3_KEY", "cascade-local"),
        secret=os.environ.get("CASCADE_TEST_S3_SECRET", "cascade-local-secret"),
    )
    if problem := _s3_problem(server.endpoint_url):
        where = f"{server.endpoint_url} ({problem})"
        pytest.fail(f"no S3 server at {where}; start one: `. deploy/local/common.sh && ensure_seaweedfs`")
    return server


@pytest.fixture
def s3_bucket(s3: S3Server) -> Iterator[str]:
    """A new empty bucket, removed with its contents at the end of the test."""
    fs = s3.filesystem()
    name = f"cascade-test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    yield name
    fs.invalidate_cache()
    if fs.exists(name):
        fs.rm(name, recursive=True)


def banking_rows(n: int, start: int = 0, prefix: str = "b77-") -> list[dict[str, object] | str]:
    """Banking77 test items ``start`` to ``start + n`` as input lines with their gold labels."""
    with (dataset("banking77") / "test.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[start : start + n]
    return [{"custom_id": f"{prefix}{start + i}", "text": r["text"], "label": r["label"]} for i, r in enumerate(rows)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_jsonl(path: Path, rows: list[dict[str, object] | str]) -> Path:
    with path.open("w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CASCADE_REDIS_URL": settings.redis_url,
            "CASCADE_LLM_URL": settings.llm_url,
            "CASCADE_CHUNK_SIZE": str(settings.chunk_size),
            "CASCADE_FILES_DIR": settings.files_dir,
            "CASCADE_METRICS_PORT": "0",  # a test that scrapes a worker gives it a port of its own
            "CASCADE_RESULTS_URL": settings.results_url,
            "CASCADE_S3_ENDPOINT_URL": settings.s3_endpoint_url,
            "CASCADE_S3_ACCESS_KEY_ID": settings.s3_access_key_id,
            "CASCADE_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),
        }
    )
    return env


WorkerFactory = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start real `cascade worker` processes; all are stopped at the end of the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(queues: str = "specialist", concurrency: int = 2, **env: str) -> subprocess.Popen[bytes]:
        cmd = [
            CASCADE,
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"test{len(procs)}-{os.getpid()}@%h",
            "--loglevel",
            "INFO",
        ]
        with (tmp_path / f"worker-{len(procs)}.log").open("wb") as log:
            proc = subprocess.Popen(
                cmd, env={**_env(settings), **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Shown by pytest only when the test failed: what the workers last said.
    for n in range(len(procs)):
        lines = (tmp_path / f"worker-{n}.log").read_text(errors="replace").splitlines()
        print(f"--- worker-{n}.log, last 60 of {len(lines)} lines ---", *lines[-60:], sep="\n")


def wait_for(store: RedisJobStore, job_id: str, timeout: float = 600) -> None:
    store.wait(job_id, timeout)


def _llm_healthy(llm_url: str) -> bool:
    try:
        return httpx2.get(llm_url.removesuffix("/v1") + "/health", timeout=2).status_code == 200
    except httpx2.HTTPError:
        return False


@pytest.fixture(scope="session")
def vllm_server(settings: Settings) -> Iterator[str]:
    """The real vLLM CPU server, started once per session when it does not answer yet."""
    if _llm_healthy(settings.llm_url):
        yield settings.llm_url
        return
    port = settings.llm_url.removesuffix("/v1").rsplit(":", 1)[-1]
    env = {**os.environ, "CASCADE_VLLM_PORT": port}
    subprocess.run(["bash", str(ROOT / "deploy" / "local" / "vllm_serve.sh")], env=env, check=True, timeout=1800)
    if not _llm_healthy(settings.llm_url):
        pytest.fail(f"vLLM did not come up at {settings.llm_url}")
    yield settings.llm_url
    pidfile = Path(os.environ.get("CASCADE_VLLM_HOME", Path.home() / ".cache" / "cascade")) / f"vllm-{port}.pid"
    if os.environ.get("CASCADE_KEEP_VLLM") != "1" and pidfile.exists():
        os.kill(int(pidfile.read_text()), signal.SIGTERM)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need vLLM run last (the server may still be starting in the background), and the one that
    restarts it runs very last."""
    items.sort(key=lambda item: (item.get_closest_marker("llm") is not None, "vllm_stopped" in item.name))
