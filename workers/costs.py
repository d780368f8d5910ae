"""The cost model: prices in USD, and the one place they are converted (per token, per CPU or GPU second)."""

from pydantic import BaseModel, ConfigDict, Field

SECONDS_PER_HOUR = 3600
TOKENS_PER_MILLION = 1_000_000


class Prices(BaseModel):
    """What LLM tokens, a CPU core and a GPU cost (settings ``CASCADE_*_USD_*``)."""

    model_config = ConfigDict(frozen=True)

    usd_per_million_tokens: float = Field(default=0.20, ge=0)
    cpu_usd_per_hour: float = Field(default=0.04, ge=0)
    gpu_usd_per_hour: float = Field(default=1.50, ge=0)

    @property
    def usd_per_token(self) -> float:
        return self.usd_per_million_tokens / TOKENS_PER_MILLION

    @property
    def usd_per_cpu_second(self) -> float:
        return self.cpu_usd_per_hour / SECONDS_PER_HOUR

    @property
    def usd_per_gpu_second(self) -> float:
        return self.gpu_usd_per_hour / SECONDS_PER_HOUR

    def llm_usd_per_1000_items(self, tokens_per_request: float, escalation_share: float) -> float:
        """LLM spend per 1,000 items when ``escalation_share`` of them are sent, at the measured tokens each."""
        return 1000 * escalation_share * tokens_per_request * self.usd_per_token
