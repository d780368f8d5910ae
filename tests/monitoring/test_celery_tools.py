"""Celery's own tools see Cascade's workers: `celery -A cascade.broker.celery_cli inspect ping` with nothing but
CASCADE_REDIS_URL set, and task events (what Flower and `celery events` show) from a real `cascade worker`."""

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from cascade.broker.celery_app import CascadeCelery, configure, send_llm_chunk, send_sweep
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.items import Escalation
from cascade.workers.jobs import JobStatus
from tests.conftest import WorkerFactory
from tests.workers.store_contract import SPEC

CELERY = str(Path(sys.executable).parent / "celery")
SECRET = "my card was charged twice, account 1234"


def inspect_ping(redis_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CELERY, "-A", "cascade.broker.celery_cli", "inspect", "ping", "--timeout", "3"],
        env={"CASCADE_REDIS_URL": redis_url},  # no CELERY_BROKER_URL, nothing else
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_celery_inspect_ping_finds_the_worker_from_cascade_redis_url_alone(
    settings: Settings, redis_db: redis.Redis, start_worker: WorkerFactory
) -> None:
    worker = start_worker(queues="specialist", concurrency=1)
    node = f"test0-{os.getpid()}@"  # the fixture's node name for its first worker
    deadline = time.monotonic() + 90
    done = inspect_ping(settings.redis_url)
    while node not in done.stdout and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
        done = inspect_ping(settings.redis_url)
    assert node in done.stdout, done.stdout + done.stderr
    assert "pong" in done.stdout
    assert done.returncode == 0


def test_without_a_worker_inspect_ping_finds_none(settings: Settings, redis_db: redis.Redis) -> None:
    """The check above can fail: the same command on a Redis database no worker consumes."""
    done = inspect_ping(settings.redis_url)
    assert done.returncode != 0
    assert "No nodes replied" in done.stdout + done.stderr


class Events:
    """Celery's event receiver (what Flower runs), in a thread, keeping every event."""

    def __init__(self, app: CascadeCelery) -> None:
        self.seen: list[dict[str, Any]] = []
        self._connection = app.connection_for_read()
        self._receiver = app.events.Receiver(self._connection, handlers={"*": self.seen.append})
        self._thread = threading.Thread(target=self._receiver.capture, kwargs={"wakeup": True}, daemon=True)

    def __enter__(self) -> "Events":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._receiver.should_stop = True
        self._thread.join(timeout=10)
        self._connection.release()

    def wait(self, found: Any, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matching = [e for e in list(self.seen) if found(e)]
            if matching:
                return matching
            time.sleep(0.2)
        raise AssertionError(f"no such event in {len(self.seen)}: {sorted({e['type'] for e in self.seen})}")


def test_a_worker_sends_task_events_and_an_llm_chunk_shows_no_text(
    settings: Settings, store: RedisJobStore, start_worker: WorkerFactory
) -> None:
    app = configure(CascadeCelery("events-test"), settings)
    assert app.conf.worker_send_task_events is True
    assert app.conf.task_send_sent_event is True
    job = store.create(SPEC)
    store.end(job, JobStatus.COMPLETED)  # sweeping an ended job changes nothing
    start_worker(queues="specialist", concurrency=1)
    with Events(app) as events:
        events.wait(lambda e: e["type"].startswith("worker-"))  # listening: the worker's heartbeats arrive
        send_sweep(app, job)
        succeeded = events.wait(lambda e: e["type"] == "task-succeeded")
        task = succeeded[0]["uuid"]
        kinds = {e["type"] for e in events.seen if e.get("uuid") == task}
        assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= kinds
        # the cost the README gives: 4 events a task, a few hundred bytes each
        sizes = [len(json.dumps(e)) for e in events.seen if e.get("uuid") == task]
        assert len(sizes) == 4
        assert max(sizes) < 1000, sizes
        (received,) = [e for e in events.seen if e.get("uuid") == task and e["type"] == "task-received"]
        assert received["name"] == "cascade.sweep_job"
        assert job in received["args"]

        # No LLM worker runs: the chunk stays queued, but its producer's event is out, without the item's text.
        escalation = Escalation(
            custom_id="c1", line=1, text=SECRET, gold=None, specialist_label="a", specialist_confidence=0.3,
            candidates=["a", "b"],
        )  # fmt: skip
        send_llm_chunk(app, "job-llm", [escalation], 0)
        (sent,) = events.wait(lambda e: e["type"] == "task-sent" and e.get("name") == "cascade.llm_chunk")
        assert sent["args"] == "['job-llm', <1 escalations>]"
        assert SECRET not in str(sent)
    (message,) = store.redis.lrange("llm", 0, -1)  # the message itself carries the text, for the LLM worker
    assert SECRET in base64.b64decode(json.loads(message)["body"]).decode()
