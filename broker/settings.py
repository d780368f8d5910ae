"""The one settings object. Built from ``CASCADE_*`` environment variables by ``Settings()`` and passed in."""

import hashlib
import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cascade.workers.config import LLMConfig
from cascade.workers.costs import Prices
from cascade.workers.errors import InputError, SettingsError
from cascade.workers.jobs import parse_window


def _token_error(position: int, problem: str) -> SettingsError:
    return SettingsError(f"CASCADE_API_TOKENS: entry {position} {problem}")


HASHED = "sha256:"
"""Prefix of a token given by its SHA-256 (64 hex digits) in ``CASCADE_API_TOKENS``, not in clear."""


def token_digest(token: str) -> bytes:
    """The SHA-256 a token is compared by: the one given (``sha256:HEX``), or the token's own."""
    if token.startswith(HASHED):
        return bytes.fromhex(token.removeprefix(HASHED))
    return hashlib.sha256(token.encode()).digest()


def redis_url_with(url: str, password: str, ca_file: str) -> str:
    """``url`` with ``password`` in it when it has none, and ``ca_file`` as ``ssl_ca_certs`` (redis-py reads both
    from the URL) when it is a ``rediss://`` URL without one. Other schemes (``unix://``) are returned as they are."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return url
    if password and parts.password is None:
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if ca_file and parts.scheme == "rediss" and "ssl_ca_certs" not in dict(query):
        parts = parts._replace(query=urlencode([*query, ("ssl_ca_certs", ca_file)]))
    return urlunsplit(parts)


def _secret(value: object) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value or "")


def _token_entry(position: int, entry: str) -> tuple[str, str]:
    """One ``token=owner`` entry of ``CASCADE_API_TOKENS``, both sides trimmed and not empty."""
    token, sep, owner = (part.strip() for part in entry.partition("="))
    if not sep:
        raise _token_error(position, "is not token=owner")
    if not token:
        raise _token_error(position, "has an empty token (expected token=owner)")
    if token.startswith(HASHED) and not re.fullmatch(r"[0-9a-fA-F]{64}", token.removeprefix(HASHED)):
        raise _token_error(position, f"has a {HASHED} token that is not 64 hex digits (a SHA-256)")
    if not owner:  # "" is the owner of the CLI's jobs: no caller may ever be it
        raise _token_error(position, "has an empty owner (expected token=owner)")
    return token, owner


class Settings(BaseSettings):
    """Every setting Cascade reads. Nothing reads the environment at import time: build one and pass it in."""

    model_config = SettingsConfigDict(env_prefix="CASCADE_", frozen=True, extra="ignore")

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    """Broker and job store: ``redis://[:PASSWORD@]HOST:PORT/DB``, or ``rediss://`` for TLS. Holds the password of
    ``redis_password`` and the CA file of ``redis_ca_file`` once built (``_redis_credentials``): every Redis client
    and the Celery broker are built from it, so never print it (``cascade.broker.doctor.redacted`` masks it)."""
    redis_password: SecretStr = SecretStr("")
    """Redis's password (its ``requirepass``), from a Kubernetes Secret (``cascade-redis``), never the repository;
    used when ``CASCADE_REDIS_URL`` has none (a password in the URL wins)."""
    redis_ca_file: str = ""
    """With a ``rediss://`` URL: the CA certificate (PEM file) that Redis's server certificate must chain to; empty:
    the system's CAs. The certificate is always verified."""

    llm_url: str = "http://127.0.0.1:8000/v1"
    """vLLM's OpenAI-compatible API."""
    llm_model: str = "SmolLM2-135M-Instruct"
    """Model name the vLLM server serves (``--served-model-name``)."""
    llm_model_aliases: str = ""
    """Other names that mean the configured LLM in an OpenAI input line's ``body.model``, comma-separated (e.g.
    ``gpt-3.5-turbo-0125``), so that an existing batch file runs unchanged; a line naming any other model is
    refused (``invalid_field``)."""
    llm_api_key: str = "EMPTY"
    llm_concurrency: int = Field(default=64, ge=1)
    """Requests in flight per LLM chunk; vLLM batches what is in flight."""
    llm_timeout: float = Field(default=60.0, gt=0)
    """Seconds for one LLM request before it is retried."""
    llm_max_retries: int = Field(default=4, ge=0)
    """Retries per request, with exponential backoff, before the item is marked ``llm_error``."""
    llm_max_tokens: int = Field(default=24, ge=1)

    chunk_size: int | None = Field(default=None, ge=1, le=100_000)
    """Items per specialist task. Unset: as many as the job's specialist predicts in ``chunk_seconds``, by the speed
    its manifest recorded at training, within ``CHUNK_SIZES`` (``submit.chunk_size``)."""
    chunk_seconds: float = Field(default=0.05, gt=0)
    """Prediction time per specialist task that an unset ``chunk_size`` aims at: long enough that a task's fixed
    costs (its Redis round trips, Celery's delivery, its part file) stay a few percent of it."""
    intake_ahead: int = Field(default=200_000, ge=0)
    """Items an intake may store ahead of the workers (in chunks not yet done); it then waits for them, so that Redis
    holds about this many items' texts per job however long its input (~30 MB here). 0: no limit (the whole input is
    stored as fast as it is read)."""
    intake_patience: float = Field(default=60.0, gt=0)
    """Seconds an intake waits for the workers to finish one more of its job's chunks before it stops waiting and
    stores the rest of its input at once: workers too busy to take its chunks (the intake's own slot among them)
    never stall it."""
    dispatch_depth: int = Field(default=8, ge=1)
    """Specialist chunks that may wait in the Celery queue; the rest wait in the fair queue (``broker/fair.py``),
    which hands them out round-robin across owners. Deeper: idle workers wait less for a dispatch; shallower: a new
    owner's first chunk waits behind fewer."""
    max_text_chars: int = Field(default=20_000, ge=1)
    """Longer texts are rejected at intake."""
    encoder_threads: int = Field(default=1, ge=1)
    """torch threads of a process that encodes texts for a ``minilm`` specialist (a worker runs several)."""
    max_id_chars: int = Field(default=512, ge=1)
    """Longer ``custom_id``s (and labels) are rejected at intake."""
    top_k: int = Field(default=5, ge=0)
    """Candidate labels the LLM chooses from; 0 means all labels."""
    memory_max: int = Field(default=50_000, ge=1)
    """Entries per answer memory (LLM answers with their texts' embeddings, ``minilm`` specialists): the oldest
    beyond it are dropped. About 1.2 KB of Redis memory each."""
    memory_ttl: int = Field(default=30 * 86_400, ge=1)
    """Seconds an answer memory is kept after its last new entry."""

    # The cost model (USD). Defaults: a hosted 7-8B model's price per million tokens, and on-demand cloud prices
    # for one CPU core and one mid-range GPU; set them to your own.
    llm_usd_per_million_tokens: float = Field(default=0.20, ge=0)
    """Price of LLM tokens (prompt and completion alike)."""
    cpu_usd_per_hour: float = Field(default=0.04, ge=0)
    """One CPU core-hour, for the specialist tier."""
    gpu_usd_per_hour: float = Field(default=1.50, ge=0)
    """One GPU-hour, for self-hosted vLLM (used by `cascade evaluate` when tokens have no price)."""
    explore_rate: float = Field(default=0.0, ge=0, le=1)
    """Share of confident items also sent to the LLM under a policy, to keep tier accuracies measured."""

    api_tokens: SecretStr = SecretStr("")
    """Bearer tokens of the HTTP API and their owners: ``token1=team-a,token2=team-b``; a token may be given by its
    SHA-256 instead, ``sha256:<64 hex digits>=team-a``, so that the Secret need not hold it in clear. A caller sees
    only its own files and batches. The API refuses to start without any."""
    metrics_token: SecretStr = SecretStr("")
    """When set, the API's ``/metrics`` answers only ``Authorization: Bearer <this token>`` (401 otherwise), for a
    Prometheus that sends it (deploy/base/monitoring.yaml). Empty: ``/metrics`` is open. Not the workers' port."""
    files_dir: str = "var/files"
    """Where the API keeps uploaded input files (relative to the working directory, or absolute)."""
    results_url: str = ""
    """Where finished chunks' results are committed as part files (``cascade.broker.results``): a folder, or any
    fsspec URL, e.g. ``s3://bucket/cascade/results`` for an S3-compatible object store that every worker and the
    API share. Empty: ``results`` under ``files_dir``."""
    s3_endpoint_url: str = ""
    """The S3 endpoint of a store that is not AWS (SeaweedFS, MinIO, Ceph): ``http://host:8333``."""
    s3_access_key_id: str = ""
    """The object store's access key; empty: the usual AWS chain (environment, profile, instance role)."""
    s3_secret_access_key: SecretStr = SecretStr("")
    """Its secret (from a Kubernetes Secret, never the repository)."""
    model_dir: str = ""
    """The specialist that the API's batches use (a folder written by `cascade train`)."""
    policy_file: str = ""
    """A policy file for the API's batches; empty: the threshold."""
    threshold: float = Field(default=0.5, ge=0, le=1)
    """Escalation threshold for the API's batches without a policy (metadata ``cascade_threshold`` overrides)."""

    def llm_config(self) -> LLMConfig:
        """The LLM client's part of the settings."""
        return LLMConfig(
            url=self.llm_url,
            model=self.llm_model,
            api_key=self.llm_api_key,
            concurrency=self.llm_concurrency,
            timeout=self.llm_timeout,
            max_retries=self.llm_max_retries,
            max_tokens=self.llm_max_tokens,
        )

    def llm_models(self, llm_model: str | None = None) -> frozenset[str]:
        """The ``body.model`` values an input line may name: ``llm_model`` (default: the configured LLM) and the
        aliases."""
        aliases = (name.strip() for name in self.llm_model_aliases.split(","))
        return frozenset([llm_model or self.llm_model, *(name for name in aliases if name)])

    def prices(self) -> Prices:
        """The cost model's part of the settings."""
        return Prices(
            usd_per_million_tokens=self.llm_usd_per_million_tokens,
            cpu_usd_per_hour=self.cpu_usd_per_hour,
            gpu_usd_per_hour=self.gpu_usd_per_hour,
        )

    def owners(self) -> dict[str, str]:
        """Bearer token -> owner, from ``api_tokens`` (blank entries skipped). An entry without ``=``, an empty
        token or owner, or a token given twice is a ``SettingsError`` naming the entry's position, never the token."""
        owners: dict[str, str] = {}
        positions: dict[str, int] = {}
        for position, entry in enumerate(self.api_tokens.get_secret_value().split(","), start=1):
            if not entry.strip():
                continue
            token, owner = _token_entry(position, entry)
            if token in positions:
                raise _token_error(position, f"repeats the token of entry {positions[token]}")
            same = [p for t, p in positions.items() if token_digest(t) == token_digest(token)]
            if same:  # the same token, once in clear and once hashed
                raise _token_error(position, f"repeats the token of entry {same[0]} (hashed)")
            owners[token], positions[token] = owner, position
        return owners

    metrics_port: int = Field(default=9808, ge=0, le=65535)
    """Port of a worker's /metrics endpoint; 0 turns it off."""
    metrics_dir: str = ""
    """Prometheus multiprocess directory of a worker, wiped at start; default: a per-port folder under /tmp."""

    visibility_timeout: int = Field(default=3600, ge=1)
    """Seconds before Redis redelivers an unacknowledged task; longer than the longest chunk."""
    job_ttl: int = Field(default=7 * 24 * 3600, ge=60)
    """Seconds a job's keys are kept after it was created."""
    file_retention: int | None = Field(default=None, ge=1)
    """Seconds an uploaded file (content and metadata) is kept after its upload and after the end of every batch
    that reads it; the reaper then deletes it. Unset: ``job_ttl``. OpenAI's ``expires_after`` on upload shortens it
    per file."""

    def results_location(self) -> str:
        """The result store's URL: ``results_url``, else ``results`` under ``files_dir``."""
        return self.results_url or self.files_dir.rstrip("/") + "/results"

    def file_retention_seconds(self) -> int:
        return self.job_ttl if self.file_retention is None else self.file_retention

    answer_cache_ttl: int = Field(default=30 * 24 * 3600, ge=1)
    """Seconds an LLM answer stays in the answer cache (shared by every job) after it was stored."""
    answer_cache_max: int = Field(default=200_000, ge=1)
    """Entries the answer cache keeps at most; beyond, the oldest go first (about 570 bytes of Redis each)."""

    def answer_claim_seconds(self) -> float:
        """How long a worker's claim on an answer key holds (renewed while its request waits): the longest one LLM
        request may take, its retries included."""
        return self.llm_timeout * (self.llm_max_retries + 1)

    # Nothing stranded: limits on redelivery, and the reaper that watches the jobs nobody watches.
    completion_window: str = "24h"
    """The completion window of jobs submitted without one (the CLI's; the API's batches give theirs)."""
    max_deliveries: int = Field(default=5, ge=1)
    """A chunk delivered more often than this (its worker died on it each time, e.g. out of memory) fails its
    items (``delivery_limit``) instead of looping."""
    stall_seconds: float = Field(default=3600.0, gt=0)
    """A running job with no progress for this long has lost tasks: the reaper re-sends its missing chunks. Longer
    than any chunk can take, queue waits included (a re-sent chunk that was only waiting runs twice, harmlessly but
    at a cost)."""
    max_reaps: int = Field(default=3, ge=0)
    """Re-sends of a stalled job's missing work before the reaper fails it (its unfinished items: ``batch_failed``)."""
    reaper_interval: float = Field(default=60.0, gt=0)
    """Seconds between two looks of the reaper at the active jobs (one worker at a time, under a Redis lock)."""
    soft_shutdown_seconds: float = Field(default=10.0, ge=0)
    """On a warm shutdown (SIGTERM), running chunks get this long before they go back to the queue; keep it below
    the pod's termination grace period."""

    @model_validator(mode="before")
    @classmethod
    def _redis_credentials(cls, data: Any) -> Any:
        """``redis_password`` and ``redis_ca_file`` folded into ``redis_url``, where every client finds them."""
        if not isinstance(data, dict):
            return data
        url = str(data.get("redis_url", cls.model_fields["redis_url"].default))
        ca_file = str(data.get("redis_ca_file") or "")
        if ca_file and urlsplit(url).scheme != "rediss":
            raise ValueError("CASCADE_REDIS_CA_FILE is set, but CASCADE_REDIS_URL is not a rediss:// (TLS) URL")
        return {**data, "redis_url": redis_url_with(url, _secret(data.get("redis_password")), ca_file)}

    @model_validator(mode="after")
    def _window_fits_the_job_lifetime(self) -> "Settings":
        try:
            parse_window(self.completion_window, self.job_ttl)
        except InputError as e:
            raise ValueError(f"CASCADE_COMPLETION_WINDOW: {e}") from e
        return self
