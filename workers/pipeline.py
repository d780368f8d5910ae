"""The path of one chunk, top to bottom: load → specialist → policy → (LLM) → result → store.

Plain functions: the Celery tasks in ``workers.tasks`` only wrap them, and tests call them without a broker.
"""

import math
import time
from collections.abc import Sequence

from pydantic import BaseModel

from broker.exceptions import LLMError
from broker.jobs import Item, ItemError, ItemResult, JobSpec, JobStatus, OnLLMError, Tier
from broker.store import JobStore
from workers.llm import LLMAnswer, LLMClient
from workers.policy import Route, route
from workers.specialist import Specialist, top_candidates


class Escalation(BaseModel):
    """An item on its way to the LLM, with what the specialist said about it."""

    custom_id: str
    line: int
    text: str
    gold: str | None
    specialist_label: str
    specialist_confidence: float
    candidates: list[str]


def _correct(label: str, gold: str | None) -> bool | None:
    return None if gold is None else label == gold


def specialist_result(item: Item, label: str, confidence: float) -> ItemResult:
    return ItemResult(
        custom_id=item.custom_id,
        line=item.line,
        label=label,
        confidence=confidence,
        tier=Tier.SPECIALIST,
        specialist_label=label,
        specialist_confidence=confidence,
        gold=item.label,
        correct=_correct(label, item.label),
    )


def llm_result(esc: Escalation, answer: LLMAnswer) -> ItemResult:
    confidence = answer.confidence if math.isfinite(answer.confidence) else 0.0
    return ItemResult(
        custom_id=esc.custom_id,
        line=esc.line,
        label=answer.label,
        confidence=confidence,
        tier=Tier.LLM,
        specialist_label=esc.specialist_label,
        specialist_confidence=esc.specialist_confidence,
        candidates=esc.candidates,
        llm_label=answer.label,
        llm_confidence=confidence,
        gold=esc.gold,
        correct=_correct(answer.label, esc.gold),
    )


def llm_failure(esc: Escalation, error: LLMError, on_error: OnLLMError) -> ItemResult | ItemError:
    """An escalated item the LLM could not answer: the specialist's answer, marked, or an error record."""
    if on_error is OnLLMError.FAIL:
        return ItemError(line=esc.line, custom_id=esc.custom_id, code="llm_error", message=str(error))
    return ItemResult(
        custom_id=esc.custom_id,
        line=esc.line,
        label=esc.specialist_label,
        confidence=esc.specialist_confidence,
        tier=Tier.SPECIALIST,
        specialist_label=esc.specialist_label,
        specialist_confidence=esc.specialist_confidence,
        candidates=esc.candidates,
        llm_error=str(error),
        gold=esc.gold,
        correct=_correct(esc.specialist_label, esc.gold),
    )


def split_chunk(
    items: Sequence[Item], specialist: Specialist, spec: JobSpec
) -> tuple[list[ItemResult], list[Escalation]]:
    """Run the specialist on a chunk; the policy splits it into final answers and escalations."""
    if not items:
        return [], []
    labels = specialist.labels
    proba = specialist.predict_proba([i.text for i in items])
    accepted: list[ItemResult] = []
    escalated: list[Escalation] = []
    for item, row in zip(items, proba, strict=True):
        best = int(row.argmax())
        label, confidence = labels[best], float(row[best])
        if route(confidence, spec.threshold) is Route.ACCEPT:
            accepted.append(specialist_result(item, label, confidence))
        else:
            escalated.append(
                Escalation(
                    custom_id=item.custom_id,
                    line=item.line,
                    text=item.text,
                    gold=item.label,
                    specialist_label=label,
                    specialist_confidence=confidence,
                    candidates=top_candidates(row, labels, spec.top_k),
                )
            )
    return accepted, escalated


def fail_chunk(store: JobStore, job_id: str, index: int, code: str, message: str) -> None:
    """Record every item of a chunk as failed, when the chunk cannot be processed at all."""
    errors = [
        ItemError(line=i.line, custom_id=i.custom_id, code=code, message=message) for i in store.chunk(job_id, index)
    ]
    store.record(job_id, errors=errors)


def run_specialist_chunk(store: JobStore, specialist: Specialist, job_id: str, index: int) -> list[Escalation]:
    """Answer a stored chunk's confident items; return the escalations still without a record."""
    if store.status(job_id) is JobStatus.CANCELLED:
        return []
    spec = store.spec(job_id)
    start = time.perf_counter()
    accepted, escalated = split_chunk(store.chunk(job_id, index), specialist, spec)
    store.mark_escalated(job_id, [e.custom_id for e in escalated])
    store.record(job_id, results=accepted)
    store.add_seconds(job_id, "specialist", time.perf_counter() - start)
    # A chunk that runs again sends on only what has no record yet.
    pending = set(store.unrecorded(job_id, [e.custom_id for e in escalated]))
    return [e for e in escalated if e.custom_id in pending]


async def answer_escalations(
    client: LLMClient, escalations: Sequence[Escalation], on_error: OnLLMError
) -> tuple[list[ItemResult], list[ItemError]]:
    answers = await client.classify_many([(e.text, e.candidates) for e in escalations])
    results: list[ItemResult] = []
    errors: list[ItemError] = []
    for esc, answer in zip(escalations, answers, strict=True):
        record = llm_result(esc, answer) if isinstance(answer, LLMAnswer) else llm_failure(esc, answer, on_error)
        if isinstance(record, ItemResult):
            results.append(record)
        else:
            errors.append(record)
    return results, errors


async def run_llm_chunk(store: JobStore, client: LLMClient, job_id: str, escalations: Sequence[Escalation]) -> None:
    """Ask the LLM about the escalations that still have no record, and store the answers."""
    if store.status(job_id) is JobStatus.CANCELLED:
        return
    pending = set(store.unrecorded(job_id, [e.custom_id for e in escalations]))
    todo = [e for e in escalations if e.custom_id in pending]
    if not todo:
        return
    spec = store.spec(job_id)
    start = time.perf_counter()
    results, errors = await answer_escalations(client, todo, spec.on_llm_error)
    store.record(job_id, results=results, errors=errors)
    store.add_seconds(job_id, "llm", time.perf_counter() - start)
