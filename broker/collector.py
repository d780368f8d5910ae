"""The ``/metrics`` endpoint of a worker: every process's metrics (multiprocess mode) and jobs by status."""

import glob
import os
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector

from cascade.broker.celery_app import QueueName
from cascade.broker.fair import FairQueue
from cascade.broker.store import RedisJobStore
from cascade.monitoring.metrics import JOBS, QUEUE_LENGTH, QUEUE_RESERVED

UNACKED_KEY = "unacked"
"""Celery's Redis transport (kombu) keeps every delivered, not yet acknowledged message in this one hash, for all
queues: field the delivery tag, value the JSON ``[message, exchange, routing_key]``. Cascade routes each queue
through its own exchange with the queue's name as routing key (``broker.celery_app``)."""

# Count the reserved messages by routing key inside Redis: only the counts travel, not the messages (an LLM chunk
# carries its items' texts), and a scrape sees one consistent state.
_RESERVED_BY_QUEUE = """
local counts = {}
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do
  local queue = cjson.decode(value)[3]
  counts[queue] = (counts[queue] or 0) + 1
end
local flat = {}
for queue, n in pairs(counts) do
  flat[#flat + 1] = queue
  flat[#flat + 1] = n
end
return flat
"""


class JobsCollector(Collector):
    """Jobs by status, and the tasks waiting in and reserved from each queue, read from Redis at each scrape: a
    fixed number of commands, however many jobs the store holds (jobs by status come from the status index)."""

    def __init__(self, store: RedisJobStore) -> None:
        self.store = store
        self._reserved = store.redis.register_script(_RESERVED_BY_QUEUE)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(JOBS, "Jobs in the job store, by status.", labels=["status"])
        for job_status, n in self.store.status_counts().items():  # one count per status, not every job
            family.add_metric([job_status.value], n)
        yield family
        queues = GaugeMetricFamily(
            QUEUE_LENGTH,
            "Tasks waiting in each queue (the specialist's: in Celery, and in the owners' fair queues).",
            labels=["queue"],
        )
        fair = FairQueue(self.store.redis, depth=1)  # read only: what waits for its owner's turn (broker/fair.py)
        for queue in QueueName:
            waiting = fair.waiting() if queue is QueueName.SPECIALIST else 0
            queues.add_metric([queue.value], self.store.redis.llen(queue.value) + waiting)
        yield queues
        found = self.reserved()
        reserved = GaugeMetricFamily(
            QUEUE_RESERVED, "Tasks delivered to a worker and not yet acknowledged, by queue.", labels=["queue"]
        )
        for queue in QueueName:
            reserved.add_metric([queue.value], found.get(queue.value, 0))
        yield reserved

    def reserved(self) -> dict[str, int]:
        """Tasks delivered to a worker and not yet acknowledged, by queue (see ``UNACKED_KEY``)."""
        flat = self._reserved(keys=[UNACKED_KEY])
        return {str(k): int(n) for k, n in zip(flat[::2], flat[1::2], strict=True)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def compact_dead(folder: str) -> int:
    """Merge the counter and histogram files of dead processes into one archive file per type, then delete them.

    Counters keep their totals (no reset seen by Prometheus), and a scrape reads a bounded number of files however
    many pool processes were recycled. Only the process that serves /metrics calls this, before it reads the
    folder, so no reader sees a value twice. Returns how many files were merged.
    """
    merged = 0
    for typ in ("counter", "histogram"):
        archive: MmapedDict | None = None
        for path in glob.glob(os.path.join(folder, f"{typ}_*.db")):
            pid = os.path.basename(path)[len(typ) + 1 : -3]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            archive = archive or MmapedDict(os.path.join(folder, f"{typ}_archive.db"))
            for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(path):
                archive.write_value(key, archive.read_value(key)[0] + value, timestamp)
            os.remove(path)
            merged += 1
        if archive is not None:
            archive.close()
    return merged


class CompactingCollector(Collector):
    """The multiprocess collector, after dead processes' files were compacted."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.lock = threading.Lock()
        self.inner = multiprocess.MultiProcessCollector(None, path=folder)

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            compact_dead(self.folder)
            yield from self.inner.collect()


def serve(port: int, store: RedisJobStore, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from the pod network
    """Serve ``/metrics`` from a background thread of this (the worker's main) process."""
    registry = CollectorRegistry()
    registry.register(CompactingCollector(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    registry.register(JobsCollector(store))
    start_http_server(port, addr=addr, registry=registry)
