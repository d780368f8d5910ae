"""The item model: what an input line becomes, where it is routed, and the one record it ends as.

Every valid input line becomes an ``Item``; the escalation rule gives it a ``Route``; it ends as exactly one
record, an ``ItemResult`` (the results file) or an ``ItemError`` (the error file, with an ``ErrorCode``).
"""

from dataclasses import dataclass
from enum import Enum

from pydantic import BaseModel, ConfigDict


class Route(str, Enum):
    """What the escalation rule decided for an item."""

    ACCEPT = "accept"
    """The specialist's answer is final."""
    ESCALATE = "escalate"
    """The item goes to the LLM, whose answer is final."""
    EXPLORE = "explore"
    """The specialist's answer is final, and the LLM is asked too, to keep the tiers' accuracy measured."""
    ABSTAIN = "abstain"
    """Neither tier is likely right: the item goes to the abstain list for human review."""


class Tier(str, Enum):
    """Which tier gave an item its final label."""

    SPECIALIST = "specialist"
    LLM = "llm"
    ABSTAIN = "abstain"
    """Neither tier is trusted: the label is the specialist's, provisional, for human review."""


class AnswerSource(str, Enum):
    """Where an item's LLM answer (``llm_label``) came from."""

    LLM = "llm"
    """The LLM was asked about this item (and paid for)."""
    CACHE = "cache"
    """An earlier LLM answer on the same normalised text, candidates, model and prompt (``answers.answer_key``):
    no LLM call, no cost."""
    MEMORY = "memory"
    """The answer memory: the agreeing LLM answers of the item's nearest remembered neighbours (embeddings), above
    the calibrated similarity. No LLM call, no cost."""


class ErrorCode(str, Enum):
    """Every code of the error file: why a line was refused or an item failed."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    DUPLICATE_ID = "duplicate_custom_id"
    TEXT_TOO_LONG = "text_too_long"
    FIELD_TOO_LONG = "field_too_long"
    """A ``custom_id`` or ``label`` over its limit (``custom_id``: 512 characters by default)."""
    INVALID_UNICODE = "invalid_unicode"
    """A string that cannot be encoded as UTF-8 (a lone surrogate such as ``\\ud800``), so not stored."""
    TOO_DEEP = "too_deep"
    """JSON nested deeper than the intake's limit."""
    LINE_TOO_LONG = "line_too_long"
    """A line of more bytes than the intake's limit; it is skipped without being held in memory."""
    INVALID_LINE = "invalid_line"
    """A line the intake could not read for a reason it has no code for (the message names the exception)."""
    BATCH_CANCELLED = "batch_cancelled"
    """The job was cancelled before the item was processed."""
    BATCH_EXPIRED = "batch_expired"
    """The job's completion window passed before the item was processed."""
    LLM_ERROR = "llm_error"
    """The LLM failed after its retries, and the job asked to fail such items (``--on-llm-error fail``)."""
    MODEL_ERROR = "model_error"
    """The job's specialist could not be loaded on the worker."""
    BATCH_FAILED = "batch_failed"
    """The job failed before the item was processed: its intake or its chunks stopped (see the job's error)."""
    DELIVERY_LIMIT = "delivery_limit"
    """The item's chunk was delivered ``CASCADE_MAX_DELIVERIES`` times without finishing (its worker died on it)."""
    TIME_LIMIT = "time_limit"
    """The item's chunk ran past its time limit (``CASCADE_VISIBILITY_TIMEOUT``)."""
    INTERNAL_ERROR = "internal_error"
    """An unexpected error in Cascade while processing the item's chunk (the message says which)."""


class Role(str, Enum):
    """Who wrote a message of an OpenAI input line's conversation."""

    SYSTEM = "system"
    """Also OpenAI's ``developer`` role, read as a system message."""
    USER = "user"
    ASSISTANT = "assistant"


class Message(BaseModel):
    """One message of an input line's conversation, other than the text classified (its last user message)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Item:
    """One valid input line (checked by the intake, so built without validation: a million lines a second and
    more)."""

    custom_id: str
    text: str
    line: int
    label: str | None = None
    context: list[Message] | None = None
    """An OpenAI line's other messages (its system messages, earlier turns), in order; None when the line has only
    the one user message (and for a line with ``text``)."""


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
    llm_source: AnswerSource | None = None
    """Where ``llm_label`` came from: the LLM, the answer cache or the answer memory (None: no LLM answer)."""
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

    @property
    def llm_tokens(self) -> int:
        return (self.llm_prompt_tokens or 0) + (self.llm_completion_tokens or 0)


class ItemError(BaseModel):
    """One line of the error file: an input line that was refused, or an item that failed."""

    line: int
    custom_id: str | None
    code: ErrorCode
    message: str
    llm_error_kind: str | None = None


class Escalation(BaseModel):
    """An item on its way to the LLM, with what the specialist said about it."""

    custom_id: str
    line: int
    text: str
    gold: str | None
    specialist_label: str
    specialist_confidence: float
    candidates: list[str]
    route: Route = Route.ESCALATE
    """``explore``: the LLM is asked to measure it, the specialist's answer stays final."""
    sampling_probability: float | None = None
    vector: str | None = None
    """The specialist's embedding of the text (base64 float16), with a ``minilm`` specialist: the LLM worker adds
    it, with the LLM's answer, to the answer memory."""
    context: list[Message] | None = None
    """The line's own messages (``Item.context``): the LLM reads them with the text."""
