"""``cascade doctor``: is this deployment set up as the README demands? One ``Check`` per line, each ok, WARN, FAIL
or skip, saying what was found and, when it is not ok, what to change. The CLI prints them and exits 1 on a FAIL.

In order: Redis answers (a refused or missing password FAILs, saying which setting to change); it wants a password
(WARN without: the local stack's Redis); it persists (``appendonly yes``) and never evicts (``maxmemory-policy
noeviction``); the LLM server answers and constrains its output (the check a worker makes before it serves the llm
queue); the model folder loads (manifest, checksum, library versions); the files folder and the result store take a
probe file and give it back; the visibility timeout exceeds one LLM request's retry budget; a worker consumes each
queue.

An edge, like the CLI: nothing of the queue side imports it. Light at import (the CLI imports it for ``consumers``):
the LLM client (which loads prometheus_client) and the specialist (scikit-learn) are imported inside their checks.
"""

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from cascade.broker import blobs, connections
from cascade.broker.celery_app import QueueName
from cascade.broker.settings import Settings
from cascade.workers.config import LLMConfig
from cascade.workers.errors import LLMError, ModelError

LLM_CHECK_SECONDS = 30.0
"""At most this long for the LLM's answer (``CASCADE_LLM_TIMEOUT`` when shorter), without retries."""


class Outcome(str, Enum):
    OK = "ok"
    WARN = "WARN"
    """Works, but not as production needs (a Redis that keeps nothing on disk); does not change the exit code."""
    FAIL = "FAIL"
    SKIP = "skip"
    """Not checked: nothing to check (no model named), or a check it needs failed (no Redis, no workers to ask)."""


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    outcome: Outcome
    detail: str
    """What was found; for WARN and FAIL, also what to change."""


def redacted(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def run(settings: Settings, celery: Celery, model: Path | None, timeout: float = 2.0) -> Iterator[Check]:
    """Every check, each yielded when done. ``celery``: the app configured from ``settings``; ``model``: the folder
    to load (None: skipped); ``timeout``: seconds for Redis and the workers to answer."""
    client = connections.client(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
    )
    try:
        reached = redis_answers(client, settings.redis_url)
        yield reached
        if reached.outcome is Outcome.OK:
            yield redis_password(settings.redis_url, timeout)
            yield from redis_config(client)
    finally:
        client.close()
    yield llm(settings.llm_config())
    yield model_loads(model)
    yield from storage(settings)
    yield visibility(settings)
    if reached.outcome is Outcome.OK:
        yield from workers(celery, timeout)
    else:
        yield Check("queues", Outcome.SKIP, "not checked: the workers are asked through Redis, which does not answer")


def redis_answers(client: redis.Redis, url: str) -> Check:
    try:
        client.ping()
    except connections.AuthError as e:  # says where, the password masked, and what to set
        return Check("redis", Outcome.FAIL, str(e))
    except redis.RedisError as e:
        return Check(
            "redis",
            Outcome.FAIL,
            f"no answer at {redacted(url)} ({type(e).__name__}: {e}): start Redis, or set CASCADE_REDIS_URL",
        )
    return Check("redis", Outcome.OK, f"answers at {redacted(url)}")


def redis_password(url: str, timeout: float = 2.0) -> Check:
    """Called once Redis answered with ``url``'s login (``CASCADE_REDIS_PASSWORD`` included): whether Redis also
    answers a connection that gives none. A login that Redis does not require (an ACL user beside a default user
    without a password, as the local stack's) protects nothing."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    if parts.password is not None:
        anonymous = redis.Redis.from_url(
            urlunsplit(parts._replace(netloc=host)), socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            anonymous.ping()
        except redis.AuthenticationError:  # NOAUTH, or the default user is off: a password is required
            return Check("redis password", Outcome.OK, "Redis wants a password, and takes the one given")
        except redis.RedisError:
            return Check("redis password", Outcome.OK, "Redis takes the password given")
        finally:
            anonymous.close()
        found = (
            "the password given is not needed: Redis answers without one too (its default user has no password), "
            "so anyone who reaches its port reads and changes every job"
        )
    else:
        found = "no password: anyone who reaches its port reads and changes every job"
    if parts.hostname in ("127.0.0.1", "localhost", "::1"):
        found += " (a Redis on this machine, like the local stack's, bound to 127.0.0.1: fine for trying Cascade)"
    return Check(
        "redis password",
        Outcome.WARN,
        f"{found}; never for production: run Redis with --requirepass, and set CASCADE_REDIS_PASSWORD "
        "(deploy/README.md)",
    )


def redis_config(client: redis.Redis) -> list[Check]:
    """Persistence and eviction, as "Production Redis" in the README demands."""
    try:
        found = {
            str(k): str(v) for name in ("appendonly", "save", "maxmemory-policy") for k, v in _config(client, name)
        }
    except redis.RedisError as e:  # a managed Redis may refuse CONFIG
        return [
            Check(
                "redis config",
                Outcome.WARN,
                f"CONFIG GET refused ({e}): check by hand that appendonly is yes and maxmemory-policy noeviction",
            )
        ]
    return [
        _persistence(found.get("appendonly", ""), found.get("save", "")),
        _eviction(found.get("maxmemory-policy", "")),
    ]


def _config(client: redis.Redis, name: str) -> list[tuple[object, object]]:
    return list(client.config_get(name).items())


def _persistence(appendonly: str, save: str) -> Check:
    name = "redis persistence"
    if appendonly == "yes":
        return Check(name, Outcome.OK, "appendonly yes: every write is logged to disk")
    if not save.strip():
        return Check(
            name,
            Outcome.WARN,
            "keeps nothing on disk (appendonly no, no RDB snapshots: the local stack's Redis): a restart loses "
            "every job and queued task; fine for trying Cascade, never for production: set appendonly yes",
        )
    return Check(
        name,
        Outcome.FAIL,
        f"appendonly no, RDB snapshots only (save {save!r}): a restart loses the minutes since the last snapshot, "
        "and with them tasks and records; set appendonly yes (appendfsync everysec)",
    )


def _eviction(policy: str) -> Check:
    name = "redis eviction"
    if policy == "noeviction":
        return Check(name, Outcome.OK, "maxmemory-policy noeviction: under memory pressure writes are refused")
    return Check(
        name,
        Outcome.FAIL,
        f"maxmemory-policy {policy}: under memory pressure Redis silently drops queued tasks and job records; "
        "set maxmemory-policy noeviction",
    )


def llm_constrained(config: LLMConfig) -> None:
    """Raise ``LLMError`` unless the server answers and constrains its output to the choices it is given (what a
    worker checks before it serves the llm queue)."""
    from cascade.workers.llm import LLMClient

    async def check() -> None:
        async with LLMClient(config) as client:
            await client.check_constrained()

    asyncio.run(check())


def llm(config: LLMConfig) -> Check:
    quick = config.model_copy(update={"max_retries": 0, "timeout": min(config.timeout, LLM_CHECK_SECONDS)})
    try:
        llm_constrained(quick)
    except LLMError as e:
        return Check("llm", Outcome.FAIL, f"{e}; set CASCADE_LLM_URL and CASCADE_LLM_MODEL to a vLLM server's")
    return Check("llm", Outcome.OK, f"{config.url} (model {config.model!r}) answers and constrains its output")


def model_loads(folder: Path | None) -> Check:
    if folder is None:
        return Check("model", Outcome.SKIP, "no model named: set CASCADE_MODEL_DIR or pass --model")
    from cascade.workers import specialist

    try:
        loaded = specialist.load(folder)
    except ModelError as e:
        return Check("model", Outcome.FAIL, str(e))
    manifest = loaded.manifest
    return Check(
        "model",
        Outcome.OK,
        f"{folder}: manifest, checksum and library versions match ({len(manifest.labels)} labels, "
        f"features {manifest.features.value})",
    )


def storage(settings: Settings) -> list[Check]:
    """The uploads' folder and the result store (``broker/results.py``'s default: ``results`` under the former)."""
    results = settings.results_location()
    return [
        _probe(settings, "files", "CASCADE_FILES_DIR", settings.files_dir),
        _probe(settings, "results", "CASCADE_RESULTS_URL", results),
    ]


def _probe(settings: Settings, name: str, variable: str, url: str) -> Check:
    """Write a small file at ``url``, read it back, remove it."""
    payload = f"cascade doctor {uuid.uuid4().hex}".encode()
    try:
        fs, root = blobs.filesystem(url, blobs.options(settings, url))
        path = f"{root}/.cascade-doctor-{uuid.uuid4().hex}"
        fs.pipe_file(path, payload)
        try:
            back = fs.cat_file(path)
        finally:
            fs.rm_file(path)
    except Exception as e:  # fsspec's backends raise many kinds (OSError, PermissionError, botocore's)
        return Check(
            name,
            Outcome.FAIL,
            f"{variable} {url}: a probe file cannot be written, read and removed ({type(e).__name__}: {e}); make "
            f"it writable by this user, or set {variable}",
        )
    if back != payload:
        return Check(name, Outcome.FAIL, f"{variable} {url}: a probe file read back differs from what was written")
    return Check(name, Outcome.OK, f"{variable} {url}: a probe file was written, read back and removed")


def visibility(settings: Settings) -> Check:
    budget = settings.answer_claim_seconds()
    found = (
        f"CASCADE_VISIBILITY_TIMEOUT {settings.visibility_timeout} s, LLM retry budget {budget:g} s "
        f"(CASCADE_LLM_TIMEOUT {settings.llm_timeout:g} x (CASCADE_LLM_MAX_RETRIES {settings.llm_max_retries} + 1))"
    )
    if settings.visibility_timeout > budget:
        return Check("visibility timeout", Outcome.OK, found)
    return Check(
        "visibility timeout",
        Outcome.FAIL,
        f"{found}: Redis would deliver an LLM chunk again while one of its requests still retries; raise "
        f"CASCADE_VISIBILITY_TIMEOUT above {budget:g}, or lower the LLM timeout or retries",
    )


def consumers(celery: Celery, timeout: float) -> dict[str, list[str]]:
    """Each queue's consumers: the workers that answer Celery's ``inspect().active_queues()`` within ``timeout``."""
    replies = celery.control.inspect(timeout=timeout).active_queues() or {}
    found: dict[str, list[str]] = {queue.value: [] for queue in QueueName}
    for worker, queues in sorted(replies.items()):
        for queue in queues or []:
            found.setdefault(str(queue["name"]), []).append(worker)
    return found


def workers(celery: Celery, timeout: float) -> list[Check]:
    try:
        found = consumers(celery, timeout)
    except (redis.RedisError, OperationalError) as e:
        return [Check("queues", Outcome.FAIL, f"the workers could not be asked through Redis ({e})")]
    return [_consumed(queue.value, found[queue.value], timeout) for queue in QueueName]


def _consumed(queue: str, names: list[str], timeout: float) -> Check:
    name = f"queue {queue}"
    if not names:
        return Check(
            name,
            Outcome.FAIL,
            f"no worker consumes the {queue} queue (none answered within {timeout:g} s): start one, "
            f"`cascade worker --queues {queue}`",
        )
    return Check(name, Outcome.OK, f"consumed by {len(names)} worker(s): {', '.join(names)}")


__all__ = ["Check", "Outcome", "consumers", "llm_constrained", "redacted", "run"]
