"""The path of one chunk, top to bottom: load → specialist → policy → (LLM) → result → store → metrics.

Plain functions over the ``JobStore`` contract: the Celery tasks in ``cascade.workers.tasks`` only wrap them, and
unit tests call them with the in-memory store, without Redis or a broker.
"""

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cascade.monitoring import metrics
from cascade.workers import instrument, lifecycle
from cascade.workers.errors import LLMError
from cascade.workers.items import ErrorCode, Escalation, Item, ItemError, ItemResult, Route, Tier
from cascade.workers.jobs import JobSpec, OnLLMError
from cascade.workers.llm import LLMAnswer, LLMClient, estimate_tokens
from cascade.workers.policy import by_value, route, route_with_policy, within_budget
from cascade.workers.specialist import Specialist, top_candidates
from cascade.workers.storage import JobStore


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
            line=esc.line,
            custom_id=esc.custom_id,
            code=ErrorCode.LLM_ERROR,
            message=str(error),
            llm_error_kind=error.kind,
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
        kept = [kept[i] for i in by_value([gains[k] for k in kept], [costs[k] for k in kept])]
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
    instrument.specialist_chunk(spec, recorded.results, sent, seconds)
    lifecycle.finished(store, job_id, recorded)
    # A chunk that runs again sends on only what has no record yet.
    pending = set(store.unrecorded(job_id, [e.custom_id for e in escalated]))
    return [e for e in escalated if e.custom_id in pending]


def llm_record(esc: Escalation, answer: LLMAnswer | LLMError, on_error: OnLLMError) -> ItemResult | ItemError:
    return llm_result(esc, answer) if isinstance(answer, LLMAnswer) else llm_failure(esc, answer, on_error)


class _Recorder:
    """Writes a chunk's LLM records as they come, in small groups: a worker killed mid-chunk loses (and pays
    again for) at most the requests in flight and one group."""

    def __init__(self, store: JobStore, job_id: str, spec: JobSpec, group: int, seconds: float) -> None:
        self.store, self.job_id, self.spec = store, job_id, spec
        self.group, self.seconds = group, seconds
        self.results: list[ItemResult] = []
        self.errors: list[ItemError] = []
        self.last = time.monotonic()

    def add(self, record: ItemResult | ItemError) -> None:
        if isinstance(record, ItemResult):
            self.results.append(record)
        else:
            self.errors.append(record)
        if len(self.results) + len(self.errors) >= self.group or time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if not self.results and not self.errors:
            return
        recorded = self.store.record(self.job_id, results=self.results, errors=self.errors)
        self.results, self.errors, self.last = [], [], time.monotonic()
        instrument.llm_answers(self.spec, recorded.results, recorded.errors)
        lifecycle.finished(self.store, self.job_id, recorded)


async def run_llm_chunk(
    store: JobStore,
    client: LLMClient,
    job_id: str,
    escalations: Sequence[Escalation],
    group: int = 16,
    group_seconds: float = 1.0,
) -> None:
    """Ask the LLM about the escalations that still have no record, recording the answers as they arrive (at most
    ``group`` answers or ``group_seconds`` between writes)."""
    if not store.status(job_id).accepts_work:
        return
    pending = set(store.unrecorded(job_id, [e.custom_id for e in escalations]))
    todo = [e for e in escalations if e.custom_id in pending]
    if not todo:
        return
    spec = store.spec(job_id)
    recorder = _Recorder(store, job_id, spec, group, group_seconds)
    start = time.perf_counter()
    metrics.IN_FLIGHT.labels(tier="llm").inc(len(todo))
    try:
        async for i, answer in client.classify_each([(e.text, e.candidates) for e in todo]):
            recorder.add(llm_record(todo[i], answer, spec.on_llm_error))
        recorder.flush()
    finally:
        metrics.IN_FLIGHT.labels(tier="llm").dec(len(todo))
    seconds = time.perf_counter() - start
    store.add_seconds(job_id, "llm", seconds)
    instrument.llm_chunk_seconds(seconds)


def fail_escalations(store: JobStore, job_id: str, escalations: Sequence[Escalation], error: LLMError) -> None:
    """Record every escalation still without a record as the LLM failing on it (the job's ``on_llm_error``
    decides: the specialist's answer, marked, or an error), when its LLM chunk cannot run at all."""
    spec = store.spec(job_id)
    pending = set(store.unrecorded(job_id, [e.custom_id for e in escalations]))
    recorder = _Recorder(store, job_id, spec, group=len(escalations) or 1, seconds=float("inf"))
    for esc in escalations:
        if esc.custom_id in pending:
            recorder.add(llm_failure(esc, error, spec.on_llm_error))
    recorder.flush()
