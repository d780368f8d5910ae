"""The Celery app, its queues and its reliability settings.

The app is created bare at import (tasks register on it) and configured from a ``Settings`` by ``configure``,
called once by the CLI before a worker starts or a job is submitted; for Celery's own command line and Flower,
``cascade.broker.celery_cli`` is the same app configured from the environment at import.
"""

import ssl
import time
from collections.abc import Sequence
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from cascade.broker.settings import Settings
from cascade.workers.items import Escalation


class QueueName(str, Enum):
    SPECIALIST = "specialist"
    """CPU-bound: chunks of a few hundred items through the specialist."""
    LLM = "llm"
    """I/O-bound: the escalated items of a chunk, sent to vLLM concurrently."""


class TaskName(str, Enum):
    INTAKE = "cascade.intake_file"
    """Reads an uploaded file (the API's batches) into a job's chunks; on the specialist queue."""
    SPECIALIST = "cascade.specialist_chunk"
    LLM = "cascade.llm_chunk"
    SWEEP = "cascade.sweep_job"
    """Ends a cancelled or expired job; on the specialist queue."""


class CascadeCelery(Celery):  # type: ignore[misc]
    settings: Settings | None = None


app = CascadeCelery("cascade", include=["cascade.workers.tasks"])


def _queue(name: QueueName) -> Queue:
    # Each queue its own exchange and routing key: queues declared bare would share the default exchange and
    # key, and every message would then be delivered to both queues.
    return Queue(name.value, Exchange(name.value, type="direct"), routing_key=name.value)  # type: ignore[no-untyped-call]


def _time_limits(settings: Settings) -> dict[str, float]:
    return {"soft_time_limit": 0.8 * settings.visibility_timeout, "time_limit": 0.9 * settings.visibility_timeout}


def _broker_ssl(settings: Settings) -> dict[str, Any] | None:
    """TLS for a ``rediss://`` URL, the server's certificate always verified (kombu would otherwise connect without
    verifying it), against ``redis_ca_file`` when set; None for ``redis://``."""
    if urlsplit(settings.redis_url).scheme != "rediss":
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_file:
        options["ssl_ca_certs"] = settings.redis_ca_file
    return options


def configure(celery: CascadeCelery, settings: Settings) -> CascadeCelery:
    celery.settings = settings
    celery.conf.update(
        broker_url=settings.redis_url,  # with the password of CASCADE_REDIS_PASSWORD (Settings)
        broker_use_ssl=_broker_ssl(settings),
        # kombu's Redis transport, but a channel whose connection was lost can still acknowledge, reject and
        # restore its messages, and a message popped as Redis died is put back (cascade.broker.redis_transport).
        broker_transport="cascade.broker.redis_transport:Transport",
        broker_connection_retry_on_startup=True,
        # Reliability: a task is acknowledged only when it has finished, and goes back to the queue when its
        # worker dies. Redis redelivers a task not acknowledged within the visibility timeout, so that timeout
        # must be longer than the longest chunk.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # kombu looks for overdue unacknowledged tasks every 10 s but, by default, scans Redis only on every
            # 10th look: a dead worker's task would wait up to ~100 s past its visibility timeout. One ZRANGE per
            # worker every 10 s is cheap.
            "unacked_restore_throttle": 1,
        },
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[_queue(q) for q in QueueName],
        task_default_queue=QueueName.SPECIALIST.value,
        task_routes={
            TaskName.INTAKE.value: {"queue": QueueName.SPECIALIST.value},
            TaskName.SPECIALIST.value: {"queue": QueueName.SPECIALIST.value},
            TaskName.LLM.value: {"queue": QueueName.LLM.value},
            TaskName.SWEEP.value: {"queue": QueueName.SPECIALIST.value},
        },
        worker_hijack_root_logger=False,
        # A task running when Redis goes away waits for it (cascade.workers.tasks) and acknowledges its message on
        # its old channel; cancelling it would leave its chunk to the visibility timeout.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # A chunk never outlives its visibility timeout (else Redis would deliver it again while it runs): at 80%
        # the task is told (SoftTimeLimitExceeded: its items fail as time_limit), at 90% its process is killed.
        # Reading an input file (intake) and sweeping a job take time in proportion to the job: not limited.
        task_annotations={name.value: _time_limits(settings) for name in (TaskName.SPECIALIST, TaskName.LLM)},
        # Stopping a worker (a pod's SIGTERM): running chunks get this long to finish, then go back to the queue
        # at once (Celery's soft shutdown, instead of waiting out the visibility timeout). Chunks are idempotent.
        worker_soft_shutdown_timeout=settings.soft_shutdown_seconds,
        worker_enable_soft_shutdown_on_idle=True,
        # Task events, for Flower and `celery events`: 4 a task (sent, received, started, succeeded or failed),
        # each one Redis PUBLISH of a few hundred bytes that Redis stores nowhere; a task is a chunk of items. An LLM
        # chunk's events name its escalations without their texts (send_llm_chunk).
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return celery


def send_specialist_chunk(celery: Celery, job_id: str, index: int) -> None:
    celery.send_task(
        TaskName.SPECIALIST.value,
        args=[job_id, index],
        kwargs={"sent_at": time.time()},
        queue=QueueName.SPECIALIST.value,
    )


def send_intake(celery: Celery, job_id: str, file_id: str) -> None:
    celery.send_task(TaskName.INTAKE.value, args=[job_id, file_id], queue=QueueName.SPECIALIST.value)


def send_sweep(celery: Celery, job_id: str) -> None:
    celery.send_task(TaskName.SWEEP.value, args=[job_id], queue=QueueName.SPECIALIST.value)


def send_llm_chunk(celery: Celery, job_id: str, escalations: Sequence[Escalation], chunk: int) -> None:
    payload = [e.model_dump(mode="json") for e in escalations]
    kwargs = {"sent_at": time.time(), "chunk": chunk}
    # What events, logs and Flower show of the arguments: the items' texts stay in the message body.
    shown = f"[{job_id!r}, <{len(payload)} escalations>]"
    celery.send_task(
        TaskName.LLM.value, args=[job_id, payload], kwargs=kwargs, queue=QueueName.LLM.value, argsrepr=shown
    )
