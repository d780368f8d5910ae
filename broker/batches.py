"""OpenAI's batch objects and output lines, from Cascade's jobs and records (pure)."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel

from cascade.workers.items import ItemError, ItemResult, Tier
from cascade.workers.jobs import JobSpec, JobStatus, JobView

OUTPUT_PREFIX = "file-out-"
ERRORS_PREFIX = "file-err-"


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    """Always 0: Cascade has no prompt cache (its answer cache skips the LLM altogether, at no token)."""


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0
    """Always 0: the LLM answers with a label, without reasoning tokens."""


class Usage(BaseModel):
    """OpenAI's batch usage: the LLM's tokens over the batch (the specialist's answers cost none)."""

    input_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    """Why a batch failed as a whole (no valid line in its input)."""

    object: Literal["list"] = "list"
    data: list[BatchError]


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: JobStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None
    model: str | None = None
    """The LLM that answers the escalated items (``CASCADE_LLM_MODEL``); each output line names its own answerer."""
    usage: Usage | None = None
    """Known once the batch has ended (``file_objects.rendered`` counts it from the records)."""


def _stamp(value: str | None) -> int | None:
    return int(float(value)) if value else None


_WITH_OUTPUT = {JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.EXPIRED}


def file_ids(job_id: str, status: JobStatus, completed: int, failed: int) -> tuple[str | None, str | None]:
    """The batch's output and error file ids: each once the batch has ended with a line for it (a cancelled or
    expired batch keeps what was answered), else None."""
    output = OUTPUT_PREFIX + job_id if status in _WITH_OUTPUT and completed else None
    return output, ERRORS_PREFIX + job_id if status.is_final and failed else None


def batch_view(job: JobView, extra: dict[str, str | None], usage: Usage | None = None) -> Batch:
    """``extra``: the job's API fields (input_file_id, endpoint, completion_window, metadata, and the timestamps
    started_at, expires_at, cancelling_at, finalizing_at); ``usage``: its tokens, once it has ended."""
    ended = int(job.finished_at) if job.finished_at else None
    status = job.status
    c = job.counts
    output_file_id, error_file_id = file_ids(job.id, status, c.completed, c.failed)
    return Batch(
        id=job.id,
        endpoint=extra.get("endpoint") or "/v1/chat/completions",
        errors=BatchErrors(data=[BatchError(code="invalid_input", message=job.error)]) if job.error else None,
        input_file_id=extra.get("input_file_id") or "",
        completion_window=extra.get("completion_window") or "24h",
        status=status,
        output_file_id=output_file_id,
        error_file_id=error_file_id,
        created_at=int(job.created_at),
        in_progress_at=_stamp(extra.get("started_at")),
        expires_at=_stamp(extra.get("expires_at")),
        finalizing_at=_stamp(extra.get("finalizing_at")),
        completed_at=ended if status is JobStatus.COMPLETED else None,
        failed_at=ended if status is JobStatus.FAILED else None,
        expired_at=ended if status is JobStatus.EXPIRED else None,
        cancelling_at=_stamp(extra.get("cancelling_at")),
        cancelled_at=ended if status is JobStatus.CANCELLED else None,
        request_counts=RequestCounts(total=c.total or 0, completed=c.completed, failed=c.failed),
        metadata=json.loads(meta) if (meta := extra.get("metadata")) else None,
        model=job.spec.llm_model,
        usage=usage,
    )


def _request_id(job_id: str, custom_id: str | None, line: int) -> str:
    return "batch_req_" + hashlib.sha256(f"{job_id}\0{custom_id}\0{line}".encode()).hexdigest()[:24]


_DETAILS = {
    "tier",
    "route",
    "confidence",
    "specialist_label",
    "specialist_confidence",
    "candidates",
    "llm_label",
    "llm_confidence",
    "llm_source",
    "llm_error",
    "line",
}
"""The fields of a result shown under ``response.body.cascade``."""


SPECIALIST_MODEL = "cascade-specialist"
"""The prefix of the model name of the lines the specialist answered."""


@dataclass(frozen=True)
class Answerers:
    """The model names a batch's output lines carry, by the tier that answered them (the job pins both)."""

    llm: str
    """The LLM's served name (``JobSpec.llm_model``)."""
    specialist: str
    """``cascade-specialist/<model folder>@<first 12 hex digits of its identity>``: the specialist's version."""

    @classmethod
    def of(cls, spec: JobSpec) -> "Answerers":
        """A job runs one specialist, the folder and identity pinned at submission (a worker refuses any other)."""
        folder = PurePath(spec.model_path).name
        return cls(llm=spec.llm_model, specialist=f"{SPECIALIST_MODEL}/{folder}@{spec.model_sha256[:12]}")

    def model(self, tier: Tier) -> str:
        """The LLM's name when its answer is final; the specialist's for its own answers and its abstentions."""
        return self.llm if tier is Tier.LLM else self.specialist


def output_line(job_id: str, answerers: Answerers, created: int, r: ItemResult) -> dict[str, Any]:
    """A results record as an OpenAI batch output line: a chat completion whose content is the label, from the
    model of the tier that answered it."""
    prompt, completion = r.llm_prompt_tokens or 0, r.llm_completion_tokens or 0
    rid = _request_id(job_id, r.custom_id, r.line)
    body = {
        "id": "chatcmpl-" + rid.removeprefix("batch_req_"),
        "object": "chat.completion",
        "created": created,
        "model": answerers.model(r.tier),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": r.label},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        "cascade": r.model_dump(mode="json", include=_DETAILS),
    }
    return {
        "id": rid,
        "custom_id": r.custom_id,
        "response": {"status_code": 200, "request_id": rid, "body": body},
        "error": None,
    }


def error_line(job_id: str, e: ItemError) -> dict[str, Any]:
    return {
        "id": _request_id(job_id, e.custom_id, e.line),
        "custom_id": e.custom_id,
        "response": None,
        "error": {"code": e.code.value, "message": e.message, "line": e.line},
    }
