"""The job model: what a job asks for, its status and counts. Its items and records are in ``items``."""

import re
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from cascade.workers.errors import InputError
from cascade.workers.policy import Policy
from cascade.workers.prompts import DEFAULT_PROMPT, Prompt

_WINDOW = re.compile(r"^([0-9]+)([smh])$")  # ASCII digits only: a full-width "1h" is refused, not read as 1h
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


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


INTERIM = {
    JobStatus.CANCELLED: JobStatus.CANCELLING,
    JobStatus.EXPIRED: JobStatus.FINALIZING,
    JobStatus.FAILED: JobStatus.FINALIZING,
}
"""A job that ends early passes through an interim status (no new chunk starts, its sweep runs) to its final one:
cancelled by its owner, expired past its window, or failed by the reaper (its intake or its chunks stalled)."""


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
    answer_cache: bool = True
    """Take LLM answers from the answer cache (same normalised text, candidates, model and prompt), and add the
    job's own answers to it (``--no-answer-cache`` turns both off)."""
    memory_similarity: float | None = Field(default=None, ge=-1.0, le=1.0)
    """The answer memory (a ``minilm`` specialist only): an escalated item whose ``memory_k`` nearest remembered
    neighbours all carry the same LLM answer, each at cosine similarity at least this, takes that answer instead of
    the LLM's. None: no answer memory, unless the job's policy has a calibrated ``memory`` rule (which wins)."""
    memory_k: int = Field(default=3, ge=1, le=50)
    prompt: Prompt | None = None
    """The job's prompt file (``cascade submit --prompt``, or the model folder's ``prompt.json``), checked against
    the model's labels at submission; None: Cascade's default prompt."""

    @property
    def policy_version(self) -> str | None:
        return self.policy.version if self.policy else None

    @property
    def prompt_version(self) -> str:
        """The identity of the prompt the job's LLM answers are given under (``Prompt.version``)."""
        return (self.prompt or DEFAULT_PROMPT).version


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
    expires_at: float | None = None
    """When the job's completion window ends."""
    progress_at: float | None = None
    """When the job last moved: a chunk stored by the intake, a record written, a re-send by the reaper."""
    lines_read: int = 0
    """The input line up to which the intake has stored every line (as an item of a chunk, or a refusal)."""
    chunks_sent: int = 0
    """Chunks the intake has stored and enqueued so far."""
    reaps: int = 0
    """How many times the reaper re-sent the job's missing work."""


class TierStats(BaseModel):
    """What one tier answered; ``specialist_correct`` counts the specialist's own answers on those same items."""

    answered: int = 0
    labelled: int = 0
    correct: int = 0
    specialist_correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


class JobStats(BaseModel):
    """A job's counters: per tier, by route, and the LLM's errors and usage (what summaries and reports read)."""

    tiers: dict[str, TierStats] = {}
    routes: dict[str, int] = {}
    llm_errors: int = 0
    llm_tokens: int = 0
    """Prompt + completion tokens of the LLM answers recorded."""
    llm_requests: int = 0
    """LLM answers recorded (requests that were answered)."""
    llm_cache_hits: int = 0
    """LLM answers recorded that were taken from the answer cache or shared within a chunk: no request, no cost."""


def parse_window(window: str, max_seconds: int) -> int:
    """A completion window (``24h``, ``90m``, ``30s``) in seconds; at most ``max_seconds`` (the job's lifetime)."""
    match = _WINDOW.match(window.strip())
    if match is None:
        raise InputError(f"completion_window {window!r}: expected a duration such as 24h, 90m or 30s")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 0 < seconds <= max_seconds:
        raise InputError(f"completion_window {window!r}: must be between 1s and {max_seconds}s (CASCADE_JOB_TTL)")
    return seconds
