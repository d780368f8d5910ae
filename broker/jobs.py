"""The job model: what a job asks for, its status, and the records it produces for each input line."""

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from workers.policy import Policy, Route


class JobStatus(str, Enum):
    """OpenAI's batch statuses. A job runs ``validating`` (its input is read) → ``in_progress`` → ``completed``;
    or ends early: ``failed`` (no valid line), ``cancelling`` → ``cancelled``, or ``finalizing`` → ``expired``
    (its completion window passed). While cancelling or finalizing, the items that have no record yet are written
    to the error file (``batch_cancelled``, ``batch_expired``), so that every line still ends in exactly one place.
    """

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED}

    @property
    def accepts_work(self) -> bool:
        """Chunks of the job may still start (the input is read and chunks run while validating)."""
        return self in {JobStatus.VALIDATING, JobStatus.IN_PROGRESS}


class EndCode(str, Enum):
    """Error codes of the items a job's early end left without a record."""

    CANCELLED = "batch_cancelled"
    EXPIRED = "batch_expired"


class Tier(str, Enum):
    """Which tier gave an item its final label."""

    SPECIALIST = "specialist"
    LLM = "llm"
    ABSTAIN = "abstain"
    """Neither tier is trusted: the label is the specialist's, provisional, for human review."""


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
    policy: Policy | None = None
    """A calibrated policy (``cascade calibrate``); when set, it decides instead of ``threshold``."""
    max_escalation: float | None = Field(default=None, ge=0.0, le=1.0)
    """Budget: at most this share of each chunk's items goes to the LLM."""
    max_llm_cost: float | None = Field(default=None, ge=0.0)
    """Budget: at most this many USD of estimated LLM cost for the whole job, spent in arrival order."""
    usd_per_llm_token: float = Field(default=0.0, ge=0.0)
    """The cost model's LLM price at submission, for budgets and the cost metric."""
    usd_per_cpu_second: float = Field(default=0.0, ge=0.0)
    """The cost model's CPU price at submission, for the cost metric."""

    @property
    def policy_version(self) -> str | None:
        return self.policy.version if self.policy else None


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
    route: Route
    """What the rule decided: accept, escalate, explore (LLM asked to measure, specialist final) or abstain."""
    specialist_label: str
    specialist_confidence: float
    candidates: list[str] | None = None
    llm_label: str | None = None
    llm_confidence: float | None = None
    llm_error: str | None = None
    llm_error_kind: str | None = None
    """timeout, connection, status_4xx, status_5xx, contract."""
    llm_prompt_tokens: int | None = None
    llm_completion_tokens: int | None = None
    sampling_probability: float | None = None
    """For explored items: the probability with which a confident item was sent to the LLM."""
    budget_limited: bool = False
    """The rule escalated the item, but the job's budget kept it with the specialist."""
    gold: str | None = None
    correct: bool | None = None


class ItemError(BaseModel):
    """One line of the error file: an input line that was refused, or an item that failed."""

    line: int
    custom_id: str | None
    code: str
    message: str
    llm_error_kind: str | None = None


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
