"""The ``/metrics`` endpoint of a worker: every process's metrics (multiprocess mode) and jobs by status."""

import glob
import os
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector

from broker.celery_app import QueueName
from broker.jobs import JobStatus
from broker.store import JobStore
from monitoring.metrics import JOBS, QUEUE_LENGTH


class JobsCollector(Collector):
    """Jobs by status, read from the job store at each scrape."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(JOBS, "Jobs in the job store, by status.", labels=["status"])
        counts = dict.fromkeys((s.value for s in JobStatus), 0)
        for job_status in self.store.statuses():
            counts[job_status.value] += 1
        for name, n in counts.items():
            family.add_metric([name], n)
        yield family
        queues = GaugeMetricFamily(QUEUE_LENGTH, "Tasks waiting in each Celery queue.", labels=["queue"])
        for queue in QueueName:
            queues.add_metric([queue.value], self.store.redis.llen(queue.value))
        yield queues


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


def serve(port: int, store: JobStore, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from the pod network
    """Serve ``/metrics`` from a background thread of this (the worker's main) process."""
    registry = CollectorRegistry()
    registry.register(CompactingCollector(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    registry.register(JobsCollector(store))
    start_http_server(port, addr=addr, registry=registry)
