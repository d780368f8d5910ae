"""`cascade doctor` against real services: the tests' Redis database, Redis servers of its own configured as
production must not be, the real vLLM server, real `cascade worker` processes, real folders."""

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from cascade.broker import doctor
from cascade.broker.celery_app import CascadeCelery, configure
from cascade.broker.settings import Settings
from cascade.workers.manifest import MANIFEST_FILE
from tests.conftest import CASCADE, WorkerFactory, _env, free_port

CHECKS = [
    "redis",
    "redis password",  # WARN on the tests' Redis, which has none (tests/test_redis_auth.py: with one)
    "redis persistence",
    "redis eviction",
    "llm",
    "model",
    "files",
    "results",
    "visibility timeout",
    "queue specialist",
    "queue llm",
]


def run_doctor(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CASCADE, "doctor", *args],
        env={**_env(settings), "CASCADE_MODEL_DIR": "", **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def lines_of(done: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """check name -> (outcome, detail), from stdout's lines "OUTCOME name: detail"."""
    found: dict[str, tuple[str, str]] = {}
    for line in done.stdout.splitlines():
        outcome, _, rest = line.partition(" ")
        name, _, detail = rest.strip().partition(": ")
        assert outcome in {o.value for o in doctor.Outcome}, line
        assert name not in found, line
        found[name] = (outcome, detail)
    return found


@pytest.mark.llm
def test_no_worker_fails_the_queue_checks_naming_each_queue(
    settings: Settings, redis_db: redis.Redis, vllm_server: str
) -> None:
    done = run_doctor(settings)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == ""
    found = lines_of(done)
    assert list(found) == CHECKS  # one line per check, in order
    for queue in ("specialist", "llm"):
        outcome, detail = found[f"queue {queue}"]
        assert outcome == "FAIL"
        assert f"no worker consumes the {queue} queue" in detail
        assert f"cascade worker --queues {queue}" in detail
    assert found["redis"][0] == "ok"
    assert found["llm"] == (
        "ok",
        f"{settings.llm_url} (model 'SmolLM2-135M-Instruct') answers and constrains its output",
    )
    assert found["model"][0] == "skip"
    assert found["files"][0] == found["results"][0] == found["visibility timeout"][0] == "ok"
    assert [name for name, (outcome, _) in found.items() if outcome == "FAIL"] == ["queue specialist", "queue llm"]


@pytest.mark.llm
def test_with_workers_on_both_queues_and_a_good_model_every_check_passes(
    settings: Settings, redis_db: redis.Redis, vllm_server: str, start_worker: WorkerFactory, sms_model: Path
) -> None:
    worker = start_worker("specialist,llm")
    celery = configure(CascadeCelery("doctor-test"), settings)  # its own: the shared app may hold another broker's pool
    deadline = time.monotonic() + 120
    while not all(doctor.consumers(celery, 1.0).values()):
        assert worker.poll() is None, "the worker died"
        assert time.monotonic() < deadline, "the worker never answered"
    done = run_doctor(settings, "--model", str(sms_model))
    found = lines_of(done)
    assert list(found) == CHECKS
    failed = {name: detail for name, (outcome, detail) in found.items() if outcome == "FAIL"}
    assert not failed
    assert done.returncode == 0, done.stdout
    assert found["queue specialist"][1].startswith("consumed by 1 worker(s): test0-")
    assert found["queue llm"][1].startswith("consumed by 1 worker(s): test0-")
    assert found["model"] == (
        "ok",
        f"{sms_model}: manifest, checksum and library versions match (2 labels, features tfidf)",
    )


def test_a_wrong_llm_url_fails_the_llm_check_and_names_the_setting(settings: Settings, redis_db: redis.Redis) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    done = run_doctor(settings, CASCADE_LLM_URL=url)
    assert time.monotonic() - started < 60  # no retries: a doctor answers promptly
    assert done.returncode == 1
    outcome, detail = lines_of(done)["llm"]
    assert outcome == "FAIL"
    assert f"the LLM server at {url}" in detail
    assert "does not answer" in detail
    assert "CASCADE_LLM_URL" in detail


def test_redis_out_of_reach_fails_once_skips_what_needs_it_and_hides_the_password(settings: Settings) -> None:
    url = f"redis://:sekret@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    done = run_doctor(settings, "--timeout", "1", CASCADE_REDIS_URL=url, CASCADE_LLM_URL="http://127.0.0.1:9/v1")
    assert time.monotonic() - started < 60
    assert done.returncode == 1
    assert "sekret" not in done.stdout + done.stderr
    found = lines_of(done)
    assert found["redis"][0] == "FAIL"
    assert found["redis"][1].startswith("no answer at redis://:***@127.0.0.1:")
    assert "CASCADE_REDIS_URL" in found["redis"][1]
    assert "redis persistence" not in found
    assert found["queues"][0] == "skip"


def test_a_model_saved_with_other_library_versions_fails(sms_model: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(sms_model, tmp_path / "model")
    assert doctor.model_loads(folder).outcome is doctor.Outcome.OK
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["versions"]["scikit-learn"] = "0.0.1"
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    check = doctor.model_loads(folder)
    assert check.outcome is doctor.Outcome.FAIL
    assert "saved with other library versions: scikit-learn 0.0.1 (running " in check.detail
    assert "retrain it" in check.detail


def test_a_files_folder_that_cannot_be_written_fails(settings: Settings, tmp_path: Path) -> None:
    good = {check.name: check for check in doctor.storage(settings)}
    assert good["files"].outcome is good["results"].outcome is doctor.Outcome.OK
    assert list(Path(settings.files_dir).glob(".cascade-doctor-*")) == []  # the probe is removed
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    checks = {check.name: check for check in doctor.storage(settings.model_copy(update={"files_dir": str(blocked)}))}
    for name, variable in (("files", "CASCADE_FILES_DIR"), ("results", "CASCADE_RESULTS_URL")):
        assert checks[name].outcome is doctor.Outcome.FAIL
        assert checks[name].detail.startswith(f"{variable} {blocked}")
        assert f"set {variable}" in checks[name].detail


def test_a_visibility_timeout_within_the_llm_retry_budget_fails() -> None:
    assert doctor.visibility(Settings()).outcome is doctor.Outcome.OK  # 3600 s > 60 s x (4 + 1)
    check = doctor.visibility(Settings(visibility_timeout=300, llm_timeout=60, llm_max_retries=4))
    assert check.outcome is doctor.Outcome.FAIL
    assert "LLM retry budget 300 s" in check.detail
    assert "raise CASCADE_VISIBILITY_TIMEOUT above 300" in check.detail


OwnRedis = Callable[..., redis.Redis]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """Start a Redis server of the test's own with the given arguments; returns a client to it."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> redis.Redis:
        port = free_port()
        cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), *args]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = redis.Redis(port=port, decode_responses=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("args", "persistence", "eviction"),
    [
        (["--appendonly", "yes", "--maxmemory-policy", "noeviction"], "ok", "ok"),
        (["--appendonly", "no", "--save", "", "--maxmemory-policy", "noeviction"], "WARN", "ok"),  # the local stack's
        (["--appendonly", "no", "--save", "3600 1", "--maxmemory-policy", "allkeys-lru"], "FAIL", "FAIL"),
    ],
)
def test_redis_persistence_and_eviction_as_production_needs(
    own_redis: OwnRedis, args: list[str], persistence: str, eviction: str
) -> None:
    client = own_redis(*args)
    found = {check.name: check for check in doctor.redis_config(client)}
    assert list(found) == ["redis persistence", "redis eviction"]
    assert found["redis persistence"].outcome.value == persistence
    assert found["redis eviction"].outcome.value == eviction
    if persistence == "WARN":
        assert "keeps nothing on disk" in found["redis persistence"].detail
        assert "set appendonly yes" in found["redis persistence"].detail
    if persistence == "FAIL":
        assert "set appendonly yes" in found["redis persistence"].detail
    if eviction == "FAIL":
        assert "maxmemory-policy allkeys-lru" in found["redis eviction"].detail
        assert "set maxmemory-policy noeviction" in found["redis eviction"].detail
