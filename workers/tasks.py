"""Celery tasks: thin wrappers that give the plain functions of ``workers.pipeline`` their resources."""

import asyncio
import os
import time
from functools import lru_cache, partial
from typing import Any

import redis
from celery.signals import worker_process_shutdown
from prometheus_client import multiprocess

from cascade.broker.celery_app import TaskName, app, send_llm_chunk, send_specialist_chunk, send_sweep
from cascade.broker.files import FileStore
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.submit import submit_file
from cascade.workers import instrument, lifecycle
from cascade.workers import specialist as specialist_model
from cascade.workers.errors import CascadeError, ModelError
from cascade.workers.items import ErrorCode, Escalation
from cascade.workers.llm import LLMClient
from cascade.workers.pipeline import run_llm_chunk, run_specialist_chunk

# Redis unreachable: the task is retried with backoff until Redis answers again.
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError)


def _settings() -> Settings:
    if app.settings is None:  # a worker started without `cascade worker`
        app.settings = Settings()
    return app.settings


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _process_gone(**_: object) -> None:
    """A pool process exits: drop its live gauges from the multiprocess directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


@lru_cache(maxsize=1)
def _store(url: str, ttl: int) -> RedisJobStore:
    return RedisJobStore.from_url(url, ttl)


@lru_cache(maxsize=4)
def _specialist(path: str, sha256: str) -> specialist_model.Specialist:
    return specialist_model.load(path, expected_sha256=sha256)


def _sweep(job_id: str) -> None:
    send_sweep(app, job_id)


@app.task(name=TaskName.INTAKE.value, autoretry_for=_TRANSIENT, retry_backoff=True, max_retries=None)  # type: ignore[untyped-decorator]
def intake_file(job_id: str, file_id: str) -> None:
    """Read an uploaded file into its job: the API only stores the file, so that a job never waits on the API
    process. The file store is shared by the API and the specialist workers. Delivered again after a crash, it
    skips the chunks already enqueued."""
    settings = _settings()
    store = _store(settings.redis_url, settings.job_ttl)
    if store.status(job_id).is_final:  # delivered again after its job ended
        return
    path = FileStore(store.redis, settings.files_dir, settings.job_ttl).path(file_id)
    if not path.is_file():  # nothing to read, now or on a retry: the batch fails, saying why
        message = (
            f"input file {file_id} is not in {path.parent} on this worker: CASCADE_FILES_DIR must be shared by "
            "the API and the specialist workers"
        )
        lifecycle.fail_job(store, job_id, message)
        return
    enqueue = partial(send_specialist_chunk, app)
    try:
        submit_file(store, enqueue, settings, path, store.spec(job_id), job_id, sweep=_sweep)
    except (OSError, CascadeError) as e:  # a file that cannot be read: the batch fails saying why, not stuck
        lifecycle.fail_job(store, job_id, f"reading input file {file_id} failed: {e}")


@app.task(name=TaskName.SWEEP.value, autoretry_for=_TRANSIENT, retry_backoff=True, max_retries=None)  # type: ignore[untyped-decorator]
def sweep(job_id: str) -> None:
    settings = _settings()
    lifecycle.sweep_job(_store(settings.redis_url, settings.job_ttl), job_id)


@app.task(name=TaskName.SPECIALIST.value, autoretry_for=_TRANSIENT, retry_backoff=True, max_retries=None)  # type: ignore[untyped-decorator]
def specialist_chunk(job_id: str, index: int, sent_at: float | None = None) -> int:
    instrument.queue_waited("specialist", sent_at, time.time())
    settings = _settings()
    store = _store(settings.redis_url, settings.job_ttl)
    lifecycle.expire_if_due(store, _sweep, job_id)
    spec = store.spec(job_id)
    try:
        model = _specialist(spec.model_path, spec.model_sha256)
    except ModelError as e:  # every item of the chunk still ends in exactly one place: the error file
        lifecycle.fail_chunk(store, job_id, index, ErrorCode.MODEL_ERROR, str(e))
        return 0
    escalations = run_specialist_chunk(store, model, job_id, index)
    if escalations:
        send_llm_chunk(app, job_id, escalations)
    return len(escalations)


@app.task(name=TaskName.LLM.value, autoretry_for=_TRANSIENT, retry_backoff=True, max_retries=None)  # type: ignore[untyped-decorator]
def llm_chunk(job_id: str, escalations: list[dict[str, Any]], sent_at: float | None = None) -> None:
    """``escalations``: ``Escalation`` records as JSON (the message body); validated back into records here."""
    instrument.queue_waited("llm", sent_at, time.time())
    settings = _settings()
    store = _store(settings.redis_url, settings.job_ttl)
    lifecycle.expire_if_due(store, _sweep, job_id)  # a job whose specialist chunks are all done still expires
    items = [Escalation.model_validate(e) for e in escalations]

    async def run() -> None:
        async with LLMClient(settings.llm_config()) as client:
            await run_llm_chunk(store, client, job_id, items)

    asyncio.run(run())
