"""Flower sees Cascade's workers and tasks: `celery -A cascade.broker.celery_cli flower` started with nothing but
CASCADE_REDIS_URL (and Flower's own FLOWER_BASIC_AUTH), a real `cascade worker`, and a real job; what Flower shows
is read through its HTTP API."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from cascade.broker.celery_app import QueueName, TaskName
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.jobs import JobStatus
from tests.conftest import WorkerFactory, free_port, wait_for, write_jsonl
from tests.test_queue_integration import sms_rows, submit

CELERY = str(Path(sys.executable).parent / "celery")
AUTH = ("cascade", "flower-test-password")
"""Flower 2 serves its API only behind authentication (or with FLOWER_UNAUTHENTICATED_API=true): basic auth here,
as deploy/README.md documents it."""


class Flower:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def get(
        self, path: str, params: dict[str, str] | None = None, auth: tuple[str, str] | None = AUTH
    ) -> httpx2.Response:
        return httpx2.get(self.url + path, params=params, auth=auth, timeout=10)

    def api(self, path: str, **params: str) -> Any:
        response = self.get(path, params)
        assert response.status_code == 200, response.text
        return response.json()

    def poll(self, what: str, found: Callable[[], Any], timeout: float = 120) -> Any:
        """``found()`` once it is truthy; fails after ``timeout`` seconds, or at once when Flower has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"flower exited {self.proc.returncode}:\n{self.log.read_text()}"
            if result := found():
                return result
            time.sleep(0.5)
        raise AssertionError(f"Flower did not show {what} within {timeout:.0f} s")


@pytest.fixture
def flower(settings: Settings, tmp_path: Path) -> Iterator[Flower]:
    """Flower on a free port of 127.0.0.1, on the tests' Redis database; stopped at the end of the test."""
    port = free_port()
    log = tmp_path / "flower.log"
    env = {"CASCADE_REDIS_URL": settings.redis_url, "FLOWER_BASIC_AUTH": ":".join(AUTH)}  # no CELERY_BROKER_URL
    cmd = [CELERY, "-A", "cascade.broker.celery_cli", "flower", "--address=127.0.0.1", f"--port={port}"]
    with log.open("wb") as out:  # cwd: a folder without a flowerconfig.py, which Flower would read
        proc = subprocess.Popen(
            cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Flower(f"http://127.0.0.1:{port}", proc, log)
    try:
        server.poll("its health check", lambda: _answers(server), timeout=60)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        print(f"--- flower.log ---\n{log.read_text(errors='replace')}")  # shown only when the test failed


def _answers(server: Flower) -> bool:
    try:
        return server.get("/healthcheck", auth=None).status_code == 200  # exempt from authentication
    except httpx2.HTTPError:
        return False


def test_flower_lists_the_worker_and_a_succeeded_specialist_chunk(
    settings: Settings,
    store: RedisJobStore,
    sms_model: Path,
    start_worker: WorkerFactory,
    flower: Flower,
    tmp_path: Path,
) -> None:
    assert flower.get("/api/workers", auth=None).status_code == 401  # the API asks for the credentials
    worker = start_worker(queues="specialist", concurrency=1)
    node = f"test0-{os.getpid()}@"  # the fixture's node name for its first worker

    def listed() -> dict[str, Any]:
        assert worker.poll() is None, "the worker exited"
        workers: dict[str, Any] = flower.api("/api/workers", refresh="1")  # asks the workers (Celery's inspect)
        return {name: info for name, info in workers.items() if name.startswith(node)}

    ((name, info),) = flower.poll("the worker", listed).items()
    assert [q["name"] for q in info["active_queues"]] == [QueueName.SPECIALIST.value]
    flower.poll("the worker alive", lambda: flower.api("/api/workers", status="1").get(name) is True)

    path = write_jsonl(tmp_path / "job.jsonl", sms_rows()[:5])  # one chunk: chunk_size is 300
    job = submit(settings, path, sms_model, "--threshold", "0")  # no item goes to the LLM
    wait_for(store, job, timeout=120)
    assert store.get(job).status is JobStatus.COMPLETED

    def succeeded() -> dict[str, Any]:
        tasks: dict[str, Any] = flower.api("/api/tasks", taskname=TaskName.SPECIALIST.value, state="SUCCESS")
        return {uuid: task for uuid, task in tasks.items() if job in task["args"]}

    ((uuid, task),) = flower.poll("the job's chunk as SUCCESS", succeeded, timeout=60).items()
    assert task["name"] == TaskName.SPECIALIST.value
    assert task["worker"] == name
    assert task["args"] == f"['{job}', 0]"
    assert task["sent"] is not None, "the producer's task-sent event reached Flower too"
    assert flower.api(f"/api/task/info/{uuid}")["state"] == "SUCCESS"
