"""Celery tasks: thin wrappers that give the plain functions of ``cascade.workers.pipeline`` their resources.

Every task body is guarded: Redis unreachable is waited for, in the task (its message is never dropped); anything
else a chunk raises ends its items in the error file with a code (``internal_error``, ``time_limit``), never a lost
chunk; a chunk started more than ``CASCADE_MAX_DELIVERIES`` times (its worker died on it each time) fails its items
(``delivery_limit``). What even this cannot record, the reaper (``cascade.broker.reaper``) finds.
"""

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from functools import lru_cache, partial, wraps
from typing import Any, ParamSpec, TypeVar

import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import worker_process_shutdown
from kombu.exceptions import OperationalError
from prometheus_client import multiprocess

from cascade.broker.answer_cache import RedisAnswerCache
from cascade.broker.celery_app import TaskName, app, send_llm_chunk, send_specialist_chunk, send_sweep
from cascade.broker.fair import FairEnqueue, FairQueue
from cascade.broker.files import open_files
from cascade.broker.recall_store import RedisMemoryStore
from cascade.broker.results import open_parts
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.submit import submit_file
from cascade.workers import instrument, lifecycle
from cascade.workers import specialist as specialist_model
from cascade.workers.answers import Claiming
from cascade.workers.errors import CascadeError, LLMError, ModelError
from cascade.workers.items import ErrorCode, Escalation
from cascade.workers.jobs import JobSpec
from cascade.workers.llm import LLMAnswer, LLMClient
from cascade.workers.manifest import read_manifest
from cascade.workers.pipeline import fail_escalations, memory_rule, run_llm_chunk, run_specialist_chunk
from cascade.workers.recall import AnswerMemory, Remembered, memory_name
from cascade.workers.storage import JobStore, chunk_task

# Redis unreachable (redis-py's errors; kombu's OperationalError when a task sends another one).
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OperationalError)
log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def _until_redis_answers(run: Callable[P, R]) -> Callable[P, R]:
    """Run an idempotent task body again, in the same process, with backoff, while Redis does not answer.

    Not Celery's retry: it publishes a new message, which fails while Redis is down, and Celery then rejects the
    delivered message without requeue, deleting its only copy from Redis's unacked hash. Here the delivered message
    stays unacknowledged until the body has run. Past half the visibility timeout (before Redis would deliver it
    again to another worker) the message is rejected with requeue: back to the queue, or, Redis still down, left in
    the unacked hash and delivered again after the visibility timeout."""

    @wraps(run)
    def patient(*args: P.args, **kwargs: P.kwargs) -> R:
        deadline = time.monotonic() + _settings().visibility_timeout / 2
        delay = 0.5
        while True:
            try:
                return run(*args, **kwargs)
            except _TRANSIENT as e:
                if time.monotonic() + delay > deadline:
                    raise Reject(f"Redis unreachable: {e}", requeue=True) from e
                log.warning("Redis unreachable (%s); running the task again in %.1f s", e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    return patient


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
    return RedisJobStore.from_url(url, ttl, open_parts(_settings()))


@lru_cache(maxsize=1)
def _fair(url: str, ttl: int, depth: int) -> FairQueue:
    return FairQueue(_store(url, ttl).redis, depth)


def _fair_queue(settings: Settings) -> FairQueue:
    """The fair queue of specialist chunks (``cascade.broker.fair``), over the job store's connection."""
    return _fair(settings.redis_url, settings.job_ttl, settings.dispatch_depth)


@lru_cache(maxsize=1)
def _answer_cache(url: str, ttl: int, max_entries: int) -> RedisAnswerCache:
    return RedisAnswerCache.from_url(url, ttl, max_entries)


def _answers(settings: Settings) -> RedisAnswerCache:
    return _answer_cache(settings.redis_url, settings.answer_cache_ttl, settings.answer_cache_max)


def _claiming(job_id: str, chunk: int) -> Claiming:
    """The LLM chunk's claims on answer keys: named after the chunk, so that the chunk delivered again (its worker
    died) takes its own claims back at once instead of waiting for them to lapse."""
    return Claiming(owner=f"{job_id}:llm:{chunk}", seconds=_settings().answer_claim_seconds())


@lru_cache(maxsize=4)
def _specialist(path: str, sha256: str) -> specialist_model.Specialist:
    return specialist_model.load(path, expected_sha256=sha256, threads=_settings().encoder_threads)


def _memory_store(settings: Settings) -> RedisMemoryStore:
    """The answer memories, over the job store's connection."""
    client = _store(settings.redis_url, settings.job_ttl).redis
    return RedisMemoryStore(client, settings.memory_max, settings.memory_ttl)


_replicas: dict[str, AnswerMemory] = {}
"""This process's replicas of the answer memories, by name, brought up to date at each chunk's start."""


def _memory(model: specialist_model.Specialist, spec: JobSpec) -> AnswerMemory | None:
    """The answer memory of the job's encoder and LLM as of now, when the job uses one."""
    encoder = model.manifest.encoder
    if encoder is None or memory_rule(spec) is None:
        return None
    settings = _settings()
    name = memory_name(encoder.sha256, spec.llm_model, spec.prompt_version)
    replica = _replicas.setdefault(name, AnswerMemory(encoder.dimension, settings.memory_max))
    replica.sync(_memory_store(settings), name)
    return replica


@lru_cache(maxsize=16)
def _encoder_sha256(model_path: str, identity: str) -> str | None:
    """The encoder checksum of a job's specialist, from its manifest (the model itself is not loaded)."""
    manifest = read_manifest(model_path)
    return None if manifest.encoder is None or manifest.identity != identity else manifest.encoder.sha256


def _remember(store: JobStore, job_id: str, llm_model: str, answered: Sequence[tuple[Escalation, LLMAnswer]]) -> None:
    """Add the LLM's new answers, with their texts' embeddings, to the answer memory of the job's encoder, of the
    LLM that answered and of the job's prompt (``minilm`` specialists: their escalations carry the embeddings). An
    answer given with the line's own messages (a system prompt, earlier turns) is not remembered: it answered more
    than the text."""
    entries = [
        Remembered(answer.label, e.vector) for e, answer in answered if e.vector is not None and e.context is None
    ]
    if not entries:
        return
    spec = store.spec(job_id)
    encoder = _encoder_sha256(spec.model_path, spec.model_sha256)
    if encoder is not None:
        _memory_store(_settings()).append(memory_name(encoder, llm_model, spec.prompt_version), entries)


def _sweep(job_id: str) -> None:
    send_sweep(app, job_id)


def _failure(e: BaseException) -> tuple[ErrorCode, str]:
    """The code and message of a chunk that raised: what the error file says about its items."""
    if isinstance(e, SoftTimeLimitExceeded):
        return ErrorCode.TIME_LIMIT, "the chunk ran past its time limit (CASCADE_VISIBILITY_TIMEOUT)"
    return ErrorCode.INTERNAL_ERROR, f"processing failed ({type(e).__name__}: {e})"


def _over_delivered(store: JobStore, job_id: str, task: str, limit: int) -> int | None:
    """How often the task has started, when that is more than ``limit`` (each start counts: a redelivery after
    its worker died; a message redelivered before it ever started does not), else None."""
    starts = store.count_delivery(job_id, task)
    return starts if starts > limit else None


@app.task(name=TaskName.INTAKE.value)  # type: ignore[untyped-decorator]
@_until_redis_answers
def intake_file(job_id: str, file_id: str) -> None:
    """Read an uploaded file into its job: the API only stores the file, so that a job never waits on the API
    process. The file store is shared by the API and the specialist workers. Delivered again after a crash, it
    skips the chunks already enqueued."""
    settings = _settings()
    store = _store(settings.redis_url, settings.job_ttl)
    if store.status(job_id).is_final:  # delivered again after its job ended
        return
    files = open_files(store.redis, settings)
    if not files.exists(file_id):  # nothing to read, now or on a retry: the batch fails, saying why
        message = (
            f"input file {file_id} is not in {files.root} on this worker: CASCADE_FILES_DIR must be shared by "
            "the API and the specialist workers"
        )
        lifecycle.fail_job(store, job_id, message)
        return
    enqueue = FairEnqueue(_fair_queue(settings), store, partial(send_specialist_chunk, app))
    try:
        submit_file(store, enqueue, settings, partial(files.open, file_id), store.spec(job_id), job_id, sweep=_sweep)
    except _TRANSIENT:
        raise
    except (OSError, CascadeError) as e:  # a file that cannot be read: the batch fails saying why, not stuck
        lifecycle.fail_intake(store, _sweep, job_id, f"reading input file {file_id} failed: {e}")
    except Exception as e:  # the last resort: the batch ends, saying why
        log.exception("intake of %s failed", job_id)
        lifecycle.fail_intake(store, _sweep, job_id, f"reading input file {file_id} failed: {_failure(e)[1]}")


@app.task(name=TaskName.SWEEP.value)  # type: ignore[untyped-decorator]
@_until_redis_answers
def sweep(job_id: str) -> None:
    settings = _settings()
    lifecycle.sweep_job(_store(settings.redis_url, settings.job_ttl), job_id)


@app.task(name=TaskName.SPECIALIST.value)  # type: ignore[untyped-decorator]
@_until_redis_answers
def specialist_chunk(job_id: str, index: int, sent_at: float | None = None) -> int:
    """One chunk through the specialist; then, its place in the queue freed, more chunks are dispatched from the
    fair queue, whatever became of this one."""
    try:
        return _guarded_specialist_chunk(job_id, index, sent_at)
    finally:
        _fair_queue(_settings()).dispatch(partial(send_specialist_chunk, app))


def _guarded_specialist_chunk(job_id: str, index: int, sent_at: float | None) -> int:
    instrument.queue_waited("specialist", sent_at, time.time())
    settings = _settings()
    store = _store(settings.redis_url, settings.job_ttl)
    lifecycle.expire_if_due(store, _sweep, job_id)
    delivered = _over_delivered(store, job_id, chunk_task("specialist", index), settings.max_deliveries)
    if delivered is not None:
        message = f"the chunk was started {delivered} times without finishing (CASCADE_MAX_DELIVERIES)"
        lifecycle.fail_chunk(store, job_id, index, ErrorCode.DELIVERY_LIMIT, message)
        return 0
    try:
        return _specialist_chunk(store, job_id, index)
    except _TRANSIENT:
        raise
    except Exception as e:  # the last resort: the chunk's items end in the error file, saying why
        log.exception("specialist chunk %s of %s failed", index, job_id)
        lifecycle.fail_chunk(store, job_id, index, *_failure(e))
        return 0


def _specialist_chunk(store: RedisJobStore, job_id: str, index: int) -> int:
    spec = store.spec(job_id)
    try:
        model = _specialist(spec.model_path, spec.model_sha256)
    except ModelError as e:  # every item of the chunk still ends in exactly one place: the error file
        lifecycle.fail_chunk(store, job_id, index, ErrorCode.MODEL_ERROR, str(e))
        return 0
    escalations = run_specialist_chunk(store, model, job_id, index, _memory(model, spec), spec)
    if escalations:
        send_llm_chunk(app, job_id, escalations, index)
    return len(escalations)


@app.task(name=TaskName.LLM.value)  # type: ignore[untyped-decorator]
@_until_redis_answers
def llm_chunk(job_id: str, escalations: list[dict[str, Any]], sent_at: float | None = None, *, chunk: int) -> None:
    """``escalations``: ``Escalation`` records as JSON (the message body); validated back into records here.
    ``chunk``: the specialist chunk they come from."""
    instrument.queue_waited("llm", sent_at, time.time())
    settings = _settings()
    store = _store(settings.redis_url, settings.job_ttl)
    lifecycle.expire_if_due(store, _sweep, job_id)  # a job whose specialist chunks are all done still expires
    items = [Escalation.model_validate(e) for e in escalations]
    delivered = _over_delivered(store, job_id, chunk_task("llm", chunk), settings.max_deliveries)
    if delivered is not None:
        message = f"its LLM chunk was started {delivered} times without finishing (CASCADE_MAX_DELIVERIES)"
        fail_escalations(store, job_id, chunk, items, LLMError(message, kind=ErrorCode.DELIVERY_LIMIT.value))
        return

    async def run() -> None:
        async with LLMClient(settings.llm_config()) as client:
            answered = await run_llm_chunk(
                store, client, job_id, chunk, items, cache=_answers(settings), claiming=_claiming(job_id, chunk)
            )
            _remember(store, job_id, client.model, answered)

    try:
        asyncio.run(run())
    except _TRANSIENT:
        raise
    except Exception as e:  # the last resort: each unanswered item gets its LLM error, saying why
        log.exception("LLM chunk %s of %s failed", chunk, job_id)
        code, message = _failure(e)
        fail_escalations(store, job_id, chunk, items, LLMError(message, kind=code.value))
