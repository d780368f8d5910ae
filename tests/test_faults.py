"""Faults survived, nothing lost: real worker processes killed, jobs cancelled. Each job must end with every
input line exactly once in the results or the errors."""

import csv
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from cascade.broker.results import open_parts
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.jobs import JobStatus
from tests.conftest import (
    CASCADE,
    WorkerFactory,
    _env,
    _llm_healthy,
    banking_rows,
    dataset,
    free_port,
    wait_for,
    write_jsonl,
)
from tests.test_queue_integration import export, submit


def sms_copies(prefix: str, copies: int) -> list[dict[str, object] | str]:
    """SMS Spam's messages, ``copies`` times over, as input lines with unique custom_ids."""
    with (dataset("sms_spam") / "all.csv").open(newline="") as f:
        base = list(csv.DictReader(f))
    return [{"custom_id": f"{prefix}{r['id']}-{k}", "text": r["text"]} for k in range(copies) for r in base]


def every_line_once(settings: Settings, job: str, n_lines: int, tmp_path: Path) -> list[dict[str, object]]:
    results = export(settings, "results", job, tmp_path)
    errors = export(settings, "errors", job, tmp_path)
    lines = sorted(int(str(r["line"])) for r in [*results, *errors])
    assert lines == list(range(1, n_lines + 1)), "every input line exactly once in results or errors"
    ids = [r["custom_id"] for r in results]
    assert len(ids) == len(set(ids))
    return results


@pytest.mark.llm
def test_worker_killed_mid_chunk_another_finishes(
    settings: Settings,
    store: RedisJobStore,
    banking_model: Path,
    vllm_server: str,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    rows = banking_rows(600, prefix="k")
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    # redeliver unacknowledged tasks soon, yet after the longest LLM chunk here (its time limit is 80% of it)
    short = {"CASCADE_VISIBILITY_TIMEOUT": "60"}
    first = start_worker(queues="specialist,llm", concurrency=1, **short)
    job = submit(settings, path, banking_model, "--threshold", "0.8")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill while LLM chunks are in flight: some answered, not all
        view = store.get(job)
        if store.stats(job).tiers.get("llm") and view.counts.completed < len(rows) - 20:
            break
        time.sleep(0.2)
    assert store.get(job).status is JobStatus.IN_PROGRESS
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done_at_kill = store.get(job).counts.completed
    start_worker(queues="specialist,llm", concurrency=2, **short)
    wait_for(store, job, timeout=600)
    view = store.get(job)
    assert view.status is JobStatus.COMPLETED
    assert done_at_kill < len(rows)
    every_line_once(settings, job, len(rows), tmp_path)


def test_cancel_mid_job_keeps_finished_items_and_starts_nothing_new(
    settings: Settings, store: RedisJobStore, sms_model: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    rows = sms_copies("s", 4)
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    job = submit(settings, path, sms_model, "--threshold", "0")  # queued: no worker yet
    worker = start_worker(queues="specialist", concurrency=1)
    deadline = time.monotonic() + 120
    while store.get(job).counts.completed == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    # A chunk takes ~20 ms: the worker is paused while `cascade cancel` starts (a second or more on a busy
    # machine), else the job may complete first (it did once in CI, and cancel rightly refused an ended job).
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        out = subprocess.run(
            [CASCADE, "cancel", job],
            env=_env(settings),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    assert "cancelling" in out.stdout
    kept = store.get(job).counts.completed
    view = store.wait(job, timeout=60)  # the worker drains the queued chunks without work, then sweeps the job
    assert view.status is JobStatus.CANCELLED
    assert 0 < view.counts.completed < len(rows)
    assert view.counts.completed - kept <= settings.chunk_size  # at most the chunk in flight landed after
    results = every_line_once(settings, job, len(rows), tmp_path)
    assert len(results) == view.counts.completed
    errors = export(settings, "errors", job, tmp_path)
    assert {e["code"] for e in errors} == {"batch_cancelled"}


def test_worker_killed_during_intake_another_reads_the_file_once(
    settings: Settings, store: RedisJobStore, sms_model: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """The API's intake task: its worker SIGKILLed while reading a large file; the task is delivered again."""
    from cascade.broker.celery_app import app, configure, send_intake
    from cascade.broker.submit import build_spec

    rows = sms_copies("i", 30)
    rows[10] = "{not json"
    rows[20] = rows[19]  # a duplicate custom_id
    file_id = "file-intake-test"
    write_jsonl(Path(settings.files_dir) / file_id, rows)
    job = store.create(build_spec(settings, sms_model, threshold=0.0))
    configure(app, settings)
    send_intake(app, job, file_id)
    # Short enough that the killed intake is delivered again soon, long enough that a chunk (its time limit is 80%
    # of it) still fits the first model load of a new pool process on a busy machine (at 5 s, two chunks of 300
    # failed with time_limit in a CI run while other work ran).
    short = {"CASCADE_VISIBILITY_TIMEOUT": "20"}
    first = start_worker(queues="specialist", concurrency=1, **short)
    deadline = time.monotonic() + 120
    while store.chunks_sent(job) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.get(job).status is JobStatus.VALIDATING, "kill the worker while it reads the file"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    start_worker(queues="specialist", concurrency=2, **short)
    view = store.wait(job, timeout=600)
    assert view.status is JobStatus.COMPLETED
    assert (view.counts.total, view.counts.failed) == (len(rows), 2)
    every_line_once(settings, job, len(rows), tmp_path)


def _redis_server(port: int, folder: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--dir",
            str(folder),
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError("redis-server did not start")


def _until(what: str, done: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_redis_killed_mid_job_loses_nothing(
    settings: Settings, sms_model: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """A Redis of the test's own, persisting (appendonly, fsync always, noeviction), killed with SIGKILL three
    times in one job (while the worker's intake task reads the file, half-way, near the end) and started again:
    no task loses its message, the worker survives, every line ends exactly once."""
    from cascade.broker.celery_app import CascadeCelery, configure, send_intake
    from cascade.broker.submit import build_spec

    port = free_port()
    server = _redis_server(port, tmp_path)
    own = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/1"})
    store = RedisJobStore.from_url(own.redis_url, own.job_ttl, open_parts(own))
    rows = sms_copies("r", 12)
    write_jsonl(Path(own.files_dir) / "file-redis-killed", rows)
    n = len(rows)
    chunk = 2000  # the worker's intake makes the chunks
    try:
        job = store.create(build_spec(own, sms_model, threshold=0.0))
        client = configure(CascadeCelery("cascade-test"), own)  # its own connection pool, to this Redis
        send_intake(client, job, "file-redis-killed")
        client.close()
        env = {"CASCADE_REDIS_URL": own.redis_url, "CASCADE_VISIBILITY_TIMEOUT": "10", "CASCADE_CHUNK_SIZE": str(chunk)}
        worker = start_worker(queues="specialist", concurrency=2, **env)

        def progress() -> tuple[str, int, int]:
            try:
                view = store.get(job)
                return view.status.value, view.counts.completed + view.counts.failed, store.chunks_sent(job)
            except (redis.ConnectionError, redis.TimeoutError):
                return "down", 0, 0

        moments = {
            "the intake reads the file": lambda s, done, sent: s == "validating" and sent >= 5,
            "half-way": lambda s, done, sent: s == "in_progress" and done >= n // 2,
            "near the end": lambda s, done, sent: s == "in_progress" and done >= n - 2 * chunk,
        }
        for what, due in moments.items():
            _until(what, lambda due=due: due(*progress()))
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
            time.sleep(2)
            server = _redis_server(port, tmp_path)
        _until("the job's end", lambda: progress()[0] in {s.value for s in JobStatus if s.is_final}, timeout=300)
        assert store.get(job).status is JobStatus.COMPLETED
        every_line_once(own, job, n, tmp_path)
        assert worker.poll() is None, "the worker survives Redis's restarts"
        log = (tmp_path / "worker-0.log").read_text()
        assert "reject requeue=False" not in log
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.llm
def test_vllm_stopped_and_started_mid_job(
    settings: Settings,
    store: RedisJobStore,
    banking_model: Path,
    vllm_server: str,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    """Items retry with backoff while vLLM is down; those out of retries keep the specialist's answer, marked."""
    port = vllm_server.removesuffix("/v1").rsplit(":", 1)[-1]
    pidfile = Path(os.environ.get("CASCADE_VLLM_HOME", Path.home() / ".cache" / "cascade")) / f"vllm-{port}.pid"
    if not pidfile.exists():
        pytest.fail(f"this test restarts the vLLM server it can find by {pidfile}; start it with vllm_serve.sh")
    rows = banking_rows(500, start=1000, prefix="k")
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    start_worker(queues="specialist,llm", concurrency=1, CASCADE_LLM_MAX_RETRIES="6", CASCADE_LLM_TIMEOUT="20")
    job = submit(settings, path, banking_model, "--threshold", "0.9")
    deadline = time.monotonic() + 300
    while not store.stats(job).tiers.get("llm") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.get(job).status is JobStatus.IN_PROGRESS
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    while _alive(pid):  # down for good before it is started again
        time.sleep(0.5)
    restart = subprocess.Popen(
        ["bash", str(Path(__file__).resolve().parents[1] / "deploy" / "local" / "vllm_serve.sh")],
        env={**os.environ, "CASCADE_VLLM_PORT": port},
    )
    try:
        wait_for(store, job, timeout=1200)
        view = store.get(job)
        assert view.status is JobStatus.COMPLETED
        results = every_line_once(settings, job, len(rows), tmp_path)
        escalated = [r for r in results if r["route"] == "escalate"]
        marked = [r for r in escalated if r["llm_error"]]
        assert len(escalated) == view.counts.escalated
        assert marked, "items sent while vLLM was down should run out of retries and be marked"
        assert all(r["tier"] == "specialist" and r["label"] == r["specialist_label"] for r in marked)
        assert {r["llm_error_kind"] for r in marked} <= {"connection", "timeout", "status_5xx"}
    finally:
        assert restart.wait(timeout=1200) == 0
    assert _llm_healthy(vllm_server)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_upload_the_worker_cannot_see_fails_its_batch_saying_why(
    settings: Settings, store: RedisJobStore, sms_model: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """A worker whose CASCADE_FILES_DIR is not the API's: the batch fails at once, not stuck validating."""
    from cascade.broker.celery_app import app, configure, send_intake
    from cascade.broker.submit import build_spec

    write_jsonl(Path(settings.files_dir) / "file-elsewhere", [{"custom_id": "a", "text": "hello"}])
    job = store.create(build_spec(settings, sms_model))
    configure(app, settings)
    send_intake(app, job, "file-elsewhere")
    start_worker(queues="specialist", CASCADE_FILES_DIR=str(tmp_path / "not-shared"))
    view = store.wait(job, timeout=60)
    assert view.status is JobStatus.FAILED
    assert view.error is not None
    assert "CASCADE_FILES_DIR must be shared" in view.error


def test_a_cli_client_killed_mid_intake_leaves_a_job_the_reaper_ends(
    settings: Settings, store: RedisJobStore, sms_model: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """`cascade submit` SIGKILLed while it reads its file: nobody will finish the intake. The reaper (in a worker)
    sees the job stalled, fails it naming the last line read, and sweeps what was stored: every line read ends
    exactly once in the results or the errors."""
    rows = sms_copies("c", 40)
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    fast_reaper = {"CASCADE_STALL_SECONDS": "3", "CASCADE_REAPER_INTERVAL": "1"}
    start_worker(queues="specialist", concurrency=1, **fast_reaper)
    client = subprocess.Popen(
        [CASCADE, "submit", str(path), "--model", str(sms_model), "--threshold", "0"],
        env=_env(settings),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    job = client.stdout.readline().strip()  # printed before the intake starts
    _until("a few chunks stored", lambda: store.chunks_sent(job) >= 3)
    client.kill()
    client.wait()
    client.stdout.close()
    view = store.get(job)
    assert view.status is JobStatus.VALIDATING, "kill the client while it reads the file"
    view = store.wait(job, timeout=120)
    assert view.status is JobStatus.FAILED
    assert view.error is not None
    last = int(view.error.split("the input lines after line ")[1].split()[0])
    assert last >= view.lines_read
    every_line_once(settings, job, last, tmp_path)
