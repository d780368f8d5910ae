"""The one settings object. Built from ``CASCADE_*`` environment variables by ``Settings()`` and passed in."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    visibility_timeout: int = Field(default=3600, ge=60)
    """Seconds before Redis redelivers an unacknowledged task; longer than the longest chunk."""
    job_ttl: int = Field(default=7 * 24 * 3600, ge=60)
    """Seconds a job's keys are kept after it was created."""
