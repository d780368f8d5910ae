"""The ``/metrics`` endpoint of a worker: every process's metrics (multiprocess mode) and jobs by status."""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
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


def serve(port: int, store: JobStore, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from the pod network
    """Serve ``/metrics`` from a background thread of this (the worker's main) process."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(JobsCollector(store))
    start_http_server(port, addr=addr, registry=registry)
