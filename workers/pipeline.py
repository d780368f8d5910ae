"""The path of one chunk, top to bottom: load → specialist → policy → (LLM) → result → store.

Plain functions: the Celery tasks in ``workers.tasks`` only wrap them, and tests call them without a broker.
"""

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from broker.exceptions import LLMError
from broker.jobs import EndCode, Item, ItemError, ItemResult, JobSpec, JobStatus, OnLLMError, Tier
from broker.store import JobStore, Recorded
from monitoring import metrics, observe
from workers.llm import LLMAnswer, LLMClient, estimate_tokens
from workers.policy import Route, route, route_with_policy, within_budget
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
    route: Route = Route.ESCALATE
    """``explore``: the LLM is asked to measure it, the specialist's answer stays final."""
    sampling_probability: float | None = None


def _correct(label: str, gold: str | None) -> bool | None:
    return None if gold is None else label == gold


def specialist_result(
    item: Item, label: str, confidence: float, route: Route = Route.ACCEPT, budget_limited: bool = False
) -> ItemResult:
    return ItemResult(
        custom_id=item.custom_id,
        line=item.line,
        label=label,
        confidence=confidence,
        tier=Tier.ABSTAIN if route is Route.ABSTAIN else Tier.SPECIALIST,
        route=route,
        specialist_label=label,
        specialist_confidence=confidence,
        budget_limited=budget_limited,
        gold=item.label,
        correct=_correct(label, item.label),
    )


def llm_result(esc: Escalation, answer: LLMAnswer) -> ItemResult:
    confidence = answer.confidence if math.isfinite(answer.confidence) else 0.0
    explored = esc.route is Route.EXPLORE
    label = esc.specialist_label if explored else answer.label
    return ItemResult(
        custom_id=esc.custom_id,
        line=esc.line,
        label=label,
        confidence=esc.specialist_confidence if explored else confidence,
        tier=Tier.SPECIALIST if explored else Tier.LLM,
        route=esc.route,
        specialist_label=esc.specialist_label,
        specialist_confidence=esc.specialist_confidence,
        candidates=esc.candidates,
        llm_label=answer.label,
        llm_confidence=confidence,
        llm_prompt_tokens=answer.prompt_tokens,
        llm_completion_tokens=answer.completion_tokens,
        sampling_probability=esc.sampling_probability,
        gold=esc.gold,
        correct=_correct(label, esc.gold),
    )


def llm_failure(esc: Escalation, error: LLMError, on_error: OnLLMError) -> ItemResult | ItemError:
    """An escalated item the LLM could not answer: the specialist's answer, marked, or an error record.

    An explored item keeps the specialist's answer whatever the job's policy: its LLM answer was never final."""
    if on_error is OnLLMError.FAIL and esc.route is not Route.EXPLORE:
        return ItemError(
            line=esc.line, custom_id=esc.custom_id, code="llm_error", message=str(error), llm_error_kind=error.kind
        )
    return ItemResult(
        custom_id=esc.custom_id,
        line=esc.line,
        label=esc.specialist_label,
        confidence=esc.specialist_confidence,
        tier=Tier.SPECIALIST,
        route=esc.route,
        specialist_label=esc.specialist_label,
        specialist_confidence=esc.specialist_confidence,
        candidates=esc.candidates,
        llm_error=str(error),
        llm_error_kind=error.kind,
        sampling_probability=esc.sampling_probability,
        gold=esc.gold,
        correct=_correct(esc.specialist_label, esc.gold),
    )


Reserve = Callable[[list[float]], int]
"""Given the costs of a chunk's escalations, best first, how many of them the job's budget still allows."""


@dataclass(frozen=True)
class Decision:
    item: Item
    label: str
    confidence: float
    route: Route
    row: NDArray[np.float64]


def decide(items: Sequence[Item], specialist: Specialist, spec: JobSpec) -> list[Decision]:
    """Run the specialist on a chunk and let the rule route every item."""
    if not items:
        return []
    labels = specialist.labels
    proba = specialist.predict_proba([i.text for i in items])
    best = proba.argmax(axis=1)
    decisions = []
    for item, row, b in zip(items, proba, best, strict=True):
        label, confidence = labels[int(b)], float(row[b])
        if spec.policy is not None:
            chosen = route_with_policy(spec.policy, item.custom_id, label, confidence)
        else:
            chosen = route(confidence, spec.threshold)
        decisions.append(Decision(item, label, confidence, chosen, row))
    return decisions


def _budgeted(decisions: list[Decision], spec: JobSpec, reserve: Reserve | None) -> set[int]:
    """Indices (into ``decisions``) of the escalations the budget keeps: best expected gain per cost first."""
    wanted = [i for i, d in enumerate(decisions) if d.route is Route.ESCALATE]
    if spec.max_escalation is None and spec.max_llm_cost is None:
        return set(wanted)
    policy = spec.policy
    gains = [
        policy.gain(decisions[i].label, decisions[i].confidence) if policy else 1.0 - decisions[i].confidence
        for i in wanted
    ]
    costs = [estimate_tokens(decisions[i].item.text, spec.top_k) * spec.usd_per_llm_token for i in wanted]
    max_items = len(wanted)
    if spec.max_escalation is not None:
        max_items = math.floor(spec.max_escalation * len(decisions))
    kept = within_budget(gains, costs, max_items, math.inf)
    if spec.max_llm_cost is not None and reserve is not None:
        kept = sorted(kept, key=lambda k: (-gains[k] / max(costs[k], 1e-12), k))
        kept = kept[: reserve([costs[k] for k in kept])]
    return {wanted[k] for k in kept}


def split_chunk(
    items: Sequence[Item], specialist: Specialist, spec: JobSpec, reserve: Reserve | None = None
) -> tuple[list[ItemResult], list[Escalation]]:
    """Run the specialist on a chunk; the rule and the budget split it into final answers and escalations."""
    decisions = decide(items, specialist, spec)
    allowed = _budgeted(decisions, spec, reserve)
    explore_p = spec.policy.explore_rate if spec.policy else None
    accepted: list[ItemResult] = []
    escalated: list[Escalation] = []
    for i, d in enumerate(decisions):
        if d.route is Route.EXPLORE or (d.route is Route.ESCALATE and i in allowed):
            escalated.append(
                Escalation(
                    custom_id=d.item.custom_id,
                    line=d.item.line,
                    text=d.item.text,
                    gold=d.item.label,
                    specialist_label=d.label,
                    specialist_confidence=d.confidence,
                    candidates=top_candidates(d.row, specialist.labels, spec.top_k),
                    route=d.route,
                    sampling_probability=explore_p if d.route is Route.EXPLORE else None,
                )
            )
        elif d.route is Route.ESCALATE:
            accepted.append(specialist_result(d.item, d.label, d.confidence, Route.ACCEPT, budget_limited=True))
        else:
            accepted.append(specialist_result(d.item, d.label, d.confidence, d.route))
    return accepted, escalated


def fail_chunk(store: JobStore, job_id: str, index: int, code: str, message: str) -> None:
    """Record every item of a chunk that has no record yet as failed (the store keeps the first record of each),
    when the chunk cannot be processed at all or its job ends early. Each message names its line."""
    errors = [
        ItemError(line=i.line, custom_id=i.custom_id, code=code, message=f"line {i.line}: {message}")
        for i in store.chunk(job_id, index)
    ]
    recorded = store.record(job_id, errors=errors)
    observe.failed_items(recorded.errors, tier="specialist")
    _finished(store, job_id, recorded)


def sweep_job(store: JobStore, job_id: str) -> JobStatus | None:
    """End a job that is ending early: every item still without a record goes to the error file with the end's
    code, then the job takes its final status (cancelled, expired). Running it again changes nothing. Returns the
    final status, or None when the job was not ending."""
    final = store.ending(job_id)
    if final is None:
        return None
    code = EndCode.CANCELLED if final is JobStatus.CANCELLED else EndCode.EXPIRED
    for index in range(store.chunk_count(job_id)):
        fail_chunk(store, job_id, index, code.value, f"the batch was {final.value} before this item was processed")
    if store.end(job_id, final):
        observe.job_finished(store.invalid_count(job_id))
    return final


def _finished(store: JobStore, job_id: str, recorded: Recorded) -> None:
    if recorded.finished:
        observe.job_finished(store.invalid_count(job_id))


def run_specialist_chunk(store: JobStore, specialist: Specialist, job_id: str, index: int) -> list[Escalation]:
    """Answer a stored chunk's confident items; return the escalations still without a record."""
    if not store.status(job_id).accepts_work:  # ended, or ending: its sweep takes the items
        return []
    spec = store.spec(job_id)
    start = time.perf_counter()

    def reserve(costs: list[float]) -> int:
        return store.reserve_budget(job_id, index, costs, spec.max_llm_cost or 0.0)

    items = store.chunk(job_id, index)
    metrics.IN_FLIGHT.labels(tier="specialist").inc(len(items))
    try:
        accepted, escalated = split_chunk(items, specialist, spec, reserve)
        new = store.mark_sent(
            job_id,
            [e.custom_id for e in escalated if e.route is Route.ESCALATE],
            [e.custom_id for e in escalated if e.route is Route.EXPLORE],
        )
        recorded = store.record(job_id, results=accepted)
    finally:
        metrics.IN_FLIGHT.labels(tier="specialist").dec(len(items))
    seconds = time.perf_counter() - start
    store.add_seconds(job_id, "specialist", seconds)
    sent = [(e.route, e.specialist_confidence) for e in escalated if e.custom_id in new]
    observe.specialist_chunk(spec, recorded, sent, seconds, spec.usd_per_cpu_second)
    _finished(store, job_id, recorded)
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
    if not store.status(job_id).accepts_work:
        return
    pending = set(store.unrecorded(job_id, [e.custom_id for e in escalations]))
    todo = [e for e in escalations if e.custom_id in pending]
    if not todo:
        return
    spec = store.spec(job_id)
    start = time.perf_counter()
    metrics.IN_FLIGHT.labels(tier="llm").inc(len(todo))
    try:
        results, errors = await answer_escalations(client, todo, spec.on_llm_error)
        recorded = store.record(job_id, results=results, errors=errors)
    finally:
        metrics.IN_FLIGHT.labels(tier="llm").dec(len(todo))
    seconds = time.perf_counter() - start
    store.add_seconds(job_id, "llm", seconds)
    observe.llm_chunk(spec, recorded, seconds)
    _finished(store, job_id, recorded)
