"""The job model: what a job asks for, its status, and the records it produces for each input line."""

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(str, Enum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}


class Tier(str, Enum):
    """Which tier gave an item its final label."""

    SPECIALIST = "specialist"
    LLM = "llm"


class OnLLMError(str, Enum):
    """What happens to an escalated item when the LLM still fails after its retries."""

    KEEP = "keep"
    """Keep the specialist's answer and mark the item ``llm_error``."""
    FAIL = "fail"
    """Put the item in the error file."""


class JobSpec(BaseModel):
    """What a job asks for; fixed at submission."""

    model_config = ConfigDict(frozen=True)

    model_path: str
    model_sha256: str
    threshold: float = Field(ge=0.0, le=1.0)
    top_k: int = Field(ge=0)
    on_llm_error: OnLLMError = OnLLMError.KEEP
    llm_model: str


class Item(BaseModel):
    """One valid input line."""

    model_config = ConfigDict(frozen=True)

    custom_id: str
    text: str
    line: int
    label: str | None = None


class ItemResult(BaseModel):
    """One line of the results file."""

    custom_id: str
    line: int
    label: str
    confidence: float
    tier: Tier
    specialist_label: str
    specialist_confidence: float
    candidates: list[str] | None = None
    llm_label: str | None = None
    llm_confidence: float | None = None
    llm_error: str | None = None
    gold: str | None = None
    correct: bool | None = None


class ItemError(BaseModel):
    """One line of the error file: an input line that was refused, or an item that failed."""

    line: int
    custom_id: str | None
    code: str
    message: str


class Counts(BaseModel):
    total: int | None
    completed: int
    failed: int
    escalated: int


class JobView(BaseModel):
    """A job as ``cascade status`` shows it."""

    id: str
    status: JobStatus
    spec: JobSpec
    counts: Counts
    created_at: float
    finished_at: float | None = None
    specialist_seconds: float = 0.0
    llm_seconds: float = 0.0
    error: str | None = None
