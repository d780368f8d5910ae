"""OpenAI's batch objects and output lines, from Cascade's jobs and records (pure)."""

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from cascade.workers.items import ItemError, ItemResult
from cascade.workers.jobs import JobStatus, JobView

OUTPUT_PREFIX = "file-out-"
ERRORS_PREFIX = "file-err-"


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class Batch(BaseModel):
    id: str
    object: str = "batch"
    endpoint: str
    errors: dict[str, Any] | None = None
    input_file_id: str
    completion_window: str
    status: str
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


def _stamp(value: str | None) -> int | None:
    return int(float(value)) if value else None


def batch_view(job: JobView, extra: dict[str, str | None]) -> Batch:
    """``extra``: the job's API fields (input_file_id, endpoint, completion_window, metadata, and the timestamps
    started_at, expires_at, cancelling_at, finalizing_at)."""
    ended = int(job.finished_at) if job.finished_at else None
    status = job.status
    c = job.counts
    with_output = {JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.EXPIRED}
    return Batch(
        id=job.id,
        endpoint=extra.get("endpoint") or "/v1/chat/completions",
        errors={"object": "list", "data": [{"code": "invalid_input", "message": job.error}]} if job.error else None,
        input_file_id=extra.get("input_file_id") or "",
        completion_window=extra.get("completion_window") or "24h",
        status=status.value,
        output_file_id=OUTPUT_PREFIX + job.id if status in with_output and c.completed else None,
        error_file_id=ERRORS_PREFIX + job.id if status.is_final and c.failed else None,
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
    "llm_error",
    "line",
}
"""The fields of a result shown under ``response.body.cascade``."""


def output_line(job_id: str, model: str, created: int, r: ItemResult) -> dict[str, Any]:
    """A results record as an OpenAI batch output line: a chat completion whose content is the label."""
    prompt, completion = r.llm_prompt_tokens or 0, r.llm_completion_tokens or 0
    rid = _request_id(job_id, r.custom_id, r.line)
    body = {
        "id": "chatcmpl-" + rid.removeprefix("batch_req_"),
        "object": "chat.completion",
        "created": created,
        "model": model,
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
