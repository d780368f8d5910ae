"""Multiprocess metrics: dead pool processes' files are compacted without losing counts; a scrape of the jobs
collector costs the same however many jobs ended."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.client
from kombu.message import Message
from prometheus_client import CollectorRegistry, generate_latest

from cascade.broker.celery_app import CascadeCelery, QueueName, configure, send_llm_chunk
from cascade.broker.collector import CompactingCollector, JobsCollector, compact_dead
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.jobs import JobStatus
from tests.workers.store_contract import SPEC

CHILD = """
from prometheus_client import Counter, Histogram
c = Counter("demo_items", "d", ["tier"])
h = Histogram("demo_seconds", "d", buckets=(1, 2))
for _ in range({n}):
    c.labels(tier="llm").inc()
    h.observe(1.5)
"""


def run_child(folder: Path, n: int) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    subprocess.run([sys.executable, "-c", CHILD.format(n=n)], env=env, check=True, timeout=60)


def scrape(folder: Path) -> str:
    registry = CollectorRegistry()
    registry.register(CompactingCollector(str(folder)))
    return generate_latest(registry).decode()


def test_dead_processes_are_compacted_and_counts_kept(tmp_path: Path) -> None:
    for n in (3, 4, 5):  # three pool processes that ran and exited
        run_child(tmp_path, n)
    assert len(list(tmp_path.glob("counter_*.db"))) == 3
    text = scrape(tmp_path)
    assert 'demo_items_total{tier="llm"} 12.0' in text
    assert 'demo_seconds_bucket{le="2.0"} 12.0' in text
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]
    run_child(tmp_path, 2)  # a recycled process adds to the archive
    assert 'demo_items_total{tier="llm"} 14.0' in scrape(tmp_path)
    assert compact_dead(str(tmp_path)) == 0
    assert len(list(tmp_path.glob("*.db"))) == 2


def test_reserved_tasks_are_counted_by_queue(settings: Settings, store: RedisJobStore) -> None:
    """Against Celery's own Redis transport: a task delivered to a consumer and not acknowledged counts as reserved
    in its queue, not as waiting, until it is acknowledged (deploy/'s worker autoscaling counts both)."""
    celery = configure(CascadeCelery("reserved-test"), settings)
    send_llm_chunk(celery, "job", [], 0)
    collector = JobsCollector(store)
    assert collector.reserved() == {}
    delivered: list[Message] = []
    with celery.connection_for_read() as conn:
        queue = celery.amqp.queues[QueueName.LLM.value]
        with conn.Consumer(queue, callbacks=[lambda _, message: delivered.append(message)], accept=["json"]):
            conn.drain_events(timeout=10)
            assert len(delivered) == 1
            assert collector.reserved() == {QueueName.LLM.value: 1}
            assert store.redis.llen(QueueName.LLM.value) == 0
            delivered[0].ack()
            assert collector.reserved() == {}


def _commands_of_a_scrape(collector: JobsCollector, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """The Redis commands one scrape issues (pipelined ones each counted), and its text."""
    count = 0
    execute_command, execute = redis.Redis.execute_command, redis.client.Pipeline.execute

    def counted(self: redis.Redis, *args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        return execute_command(self, *args, **kwargs)

    def counted_pipeline(self: redis.client.Pipeline, *args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += len(self.command_stack)
        return execute(self, *args, **kwargs)

    registry = CollectorRegistry()
    registry.register(collector)
    with monkeypatch.context() as patched:
        patched.setattr(redis.Redis, "execute_command", counted)
        patched.setattr(redis.client.Pipeline, "execute", counted_pipeline)
        text = generate_latest(registry).decode()
    return count, text


def test_a_scrape_reads_counts_not_jobs(store: RedisJobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs by status come from the status index: a scrape issues as many Redis commands with 400 ended jobs in the
    store as with 100, and counts them right."""

    def ended_jobs(n: int) -> None:
        for _ in range(n):
            store.end(store.create(SPEC), JobStatus.COMPLETED)

    store.create(SPEC)
    ended_jobs(100)
    collector = JobsCollector(store)
    _commands_of_a_scrape(collector, monkeypatch)  # the first loads the scripts
    few, text = _commands_of_a_scrape(collector, monkeypatch)
    assert 'cascade_jobs{status="completed"} 100.0' in text
    assert 'cascade_jobs{status="validating"} 1.0' in text
    ended_jobs(300)
    many, text = _commands_of_a_scrape(collector, monkeypatch)
    assert 'cascade_jobs{status="completed"} 400.0' in text
    assert many == few
    assert few <= len(JobStatus) + len(QueueName) + 2
