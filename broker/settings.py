"""The one settings object. Built from ``CASCADE_*`` environment variables by ``Settings()`` and passed in."""

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from cascade.workers.config import LLMConfig
from cascade.workers.costs import Prices


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
        """Bearer token -> owner, from ``api_tokens``."""
        pairs = [p.split("=", 1) for p in self.api_tokens.get_secret_value().split(",") if p.strip()]
        return {token.strip(): owner.strip() for token, owner in pairs}

    metrics_port: int = Field(default=9808, ge=0, le=65535)
    """Port of a worker's /metrics endpoint; 0 turns it off."""
    metrics_dir: str = ""
    """Prometheus multiprocess directory of a worker, wiped at start; default: a per-port folder under /tmp."""

    visibility_timeout: int = Field(default=3600, ge=1)
    """Seconds before Redis redelivers an unacknowledged task; longer than the longest chunk."""
    job_ttl: int = Field(default=7 * 24 * 3600, ge=60)
    """Seconds a job's keys are kept after it was created."""
