"""The one settings object. Built from ``CASCADE_*`` environment variables by ``Settings()`` and passed in."""

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cascade.workers.config import LLMConfig
from cascade.workers.costs import Prices
from cascade.workers.errors import InputError, SettingsError
from cascade.workers.jobs import parse_window


def _token_error(position: int, problem: str) -> SettingsError:
    return SettingsError(f"CASCADE_API_TOKENS: entry {position} {problem}")


def _token_entry(position: int, entry: str) -> tuple[str, str]:
    """One ``token=owner`` entry of ``CASCADE_API_TOKENS``, both sides trimmed and not empty."""
    token, sep, owner = (part.strip() for part in entry.partition("="))
    if not sep:
        raise _token_error(position, "is not token=owner")
    if not token:
        raise _token_error(position, "has an empty token (expected token=owner)")
    if not owner:  # "" is the owner of the CLI's jobs: no caller may ever be it
        raise _token_error(position, "has an empty owner (expected token=owner)")
    return token, owner


class Settings(BaseSettings):
    """Every setting Cascade reads. Nothing reads the environment at import time: build one and pass it in."""

    model_config = SettingsConfigDict(env_prefix="CASCADE_", frozen=True, extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Broker and job store."""

    llm_url: str = "http://127.0.0.1:8000/v1"
    """vLLM's OpenAI-compatible API."""
    llm_model: str = "SmolLM2-135M-Instruct"
    """Model name the vLLM server serves (``--served-model-name``)."""
    llm_api_key: str = "EMPTY"
    llm_concurrency: int = Field(default=64, ge=1)
    """Requests in flight per LLM chunk; vLLM batches what is in flight."""
    llm_timeout: float = Field(default=60.0, gt=0)
    """Seconds for one LLM request before it is retried."""
    llm_max_retries: int = Field(default=4, ge=0)
    """Retries per request, with exponential backoff, before the item is marked ``llm_error``."""
    llm_max_tokens: int = Field(default=24, ge=1)

    chunk_size: int = Field(default=500, ge=1, le=100_000)
    """Items per specialist task."""
    max_text_chars: int = Field(default=20_000, ge=1)
    """Longer texts are rejected at intake."""
    encoder_threads: int = Field(default=1, ge=1)
    """torch threads of a process that encodes texts for a ``minilm`` specialist (a worker runs several)."""
    max_id_chars: int = Field(default=512, ge=1)
    """Longer ``custom_id``s (and labels) are rejected at intake."""
    top_k: int = Field(default=5, ge=0)
    """Candidate labels the LLM chooses from; 0 means all labels."""

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
    """Bearer tokens of the HTTP API and their owners: ``token1=team-a,token2=team-b``. A caller sees only its
    own files and batches. The API refuses to start without any."""
    files_dir: str = "var/files"
    """Where the API keeps uploaded input files (relative to the working directory, or absolute)."""
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

    @model_validator(mode="after")
    def _window_fits_the_job_lifetime(self) -> "Settings":
        try:
            parse_window(self.completion_window, self.job_ttl)
        except InputError as e:
            raise ValueError(f"CASCADE_COMPLETION_WINDOW: {e}") from e
        return self
