"""The core's own configuration records, built from the process settings (``cascade.broker.settings``) and passed
in, so that the core never reads the environment nor depends on the settings' other fields. Light on purpose:
the CLI imports it before anything that sets up metrics or loads models."""

from pydantic import BaseModel, ConfigDict


class LLMConfig(BaseModel):
    """What the client needs to reach the LLM server: built from the settings' ``CASCADE_LLM_*`` (their defaults
    and limits are there, ``Settings.llm_config``)."""

    model_config = ConfigDict(frozen=True)

    url: str
    model: str
    api_key: str
    concurrency: int
    timeout: float
    max_retries: int
    max_tokens: int
