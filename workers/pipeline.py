"""The path of one chunk, top to bottom: load → specialist → policy → (LLM) → result → store → metrics.

Plain functions over the ``JobStore`` contract: the Celery tasks in ``cascade.workers.tasks`` only wrap them, and
unit tests call them with the in-memory store, without Redis or a broker.
"""

import contextlib
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cascade.monitoring import metrics
from cascade.workers import instrument, lifecycle
from cascade.workers.answers import AnswerCache, CacheResult, Claiming, Question, Resolution, answer_key, resolve
from cascade.workers.blocks import SpecialistAnswers, is_correct
from cascade.workers.columns import ItemColumns
from cascade.workers.errors import LLMError
from cascade.workers.items import AnswerSource, ErrorCode, Escalation, Item, ItemError, ItemResult, Route, Tier
from cascade.workers.jobs import JobSpec, OnLLMError
from cascade.workers.llm import LLMAnswer, LLMClient, estimate_tokens
from cascade.workers.policy import by_value, route_with_policy, routes, within_budget
from cascade.workers.recall import AnswerMemory, MemoryRule, Recalled, pack
from cascade.workers.specialist import Specialist, top_candidates
from cascade.workers.storage import JobStore


def llm_result(esc: Escalation, answer: LLMAnswer, source: AnswerSource = AnswerSource.LLM) -> ItemResult:
    """An escalated item with its LLM answer. Only an answer bought for this item (``source`` llm) carries its
    tokens: an answer taken from the cache costs nothing."""
    confidence = answer.confidence if math.isfinite(answer.confidence) else 0.0
    explored = esc.route is Route.EXPLORE
    label = esc.specialist_label if explored else answer.label
    bought = source is AnswerSource.LLM
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
        llm_source=source,
        llm_prompt_tokens=answer.prompt_tokens if bought else None,
        llm_completion_tokens=answer.completion_tokens if bought else None,
        sampling_probability=esc.sampling_probability,
        gold=esc.gold,
        correct=is_correct(label, esc.gold),
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
        correct=is_correct(esc.specialist_label, esc.gold),
    )


Reserve = Callable[[list[float]], int]
"""Given the costs of a chunk's escalations, best first, how many of them the job's budget still allows."""


def memory_result(item: Item, label: str, confidence: float, candidates: list[str], recalled: Recalled) -> ItemResult:
    """An escalated item the answer memory answered: the LLM's earlier answer on its near neighbours."""
    return ItemResult(
        custom_id=item.custom_id,
        line=item.line,
        label=recalled.label,
        confidence=recalled.similarity,
        tier=Tier.LLM,
        route=Route.ESCALATE,
        specialist_label=label,
        specialist_confidence=confidence,
        candidates=candidates,
        llm_label=recalled.label,
        llm_source=AnswerSource.MEMORY,
        gold=item.label,
        correct=is_correct(recalled.label, item.label),
    )


def memory_rule(spec: JobSpec) -> MemoryRule | None:
    """The job's answer memory rule: its policy's calibrated one, else the similarity the job set, else none."""
    if spec.policy is not None and spec.policy.memory is not None:
        return spec.policy.memory
    if spec.memory_similarity is None:
        return None
    return MemoryRule(k=spec.memory_k, similarity=spec.memory_similarity)


@dataclass(frozen=True)
class Decisions:
    """The specialist's answers on a chunk and the rule's route for each, as columns (index ``i``: item ``i``)."""

    items: ItemColumns
    label: list[str]
    confidence: list[float]
    route: list[Route]
    proba: NDArray[np.float64]
    vectors: NDArray[np.float32] | None = None

    def wanting_llm(self) -> list[int]:
        """The items the rule sends to the LLM, to answer (escalate) or to measure (explore)."""
        return [i for i, r in enumerate(self.route) if r is Route.ESCALATE or r is Route.EXPLORE]


def decide(items: Sequence[Item], specialist: Specialist, spec: JobSpec) -> Decisions:
    """Run the specialist on a chunk and let the rule route every item."""
    chunk = ItemColumns.of(items)
    labels = np.asarray(specialist.labels, dtype=object)
    if not chunk:
        return Decisions(chunk, [], [], [], np.zeros((0, len(labels))))
    vectors = specialist.embed(chunk.text)
    proba = specialist.predict_proba(chunk.text, vectors)
    best = proba.argmax(axis=1)
    confidences = proba[np.arange(len(chunk)), best]
    label: list[str] = labels[best].tolist()
    confidence: list[float] = confidences.tolist()
    if spec.policy is not None:
        policy = spec.policy
        chosen = [
            route_with_policy(policy, c, lab, conf)
            for c, lab, conf in zip(chunk.custom_id, label, confidence, strict=True)
        ]
    else:
        chosen = routes(confidences, spec.threshold)
    return Decisions(chunk, label, confidence, chosen, proba, vectors)


def recall(
    decisions: Decisions, candidates: dict[int, list[str]], spec: JobSpec, memory: AnswerMemory | None
) -> dict[int, Recalled]:
    """Indices (into ``decisions``) of the escalated items the answer memory answers, with its answers: the
    neighbours agree, are similar enough, and their label is among the item's ``candidates``. An item with its own
    messages (a system prompt, earlier turns) is never answered from memory: its neighbours were answered without
    them."""
    rule = memory_rule(spec)
    if rule is None or memory is None or decisions.vectors is None:
        return {}
    contexts = decisions.items.context
    wanted = [
        i for i, r in enumerate(decisions.route) if r is Route.ESCALATE and (contexts is None or contexts[i] is None)
    ]
    if not wanted:
        return {}
    found = memory.lookup(decisions.vectors[wanted], rule)
    return {
        i: recalled
        for i, recalled in zip(wanted, found, strict=True)
        if recalled is not None and recalled.label in candidates[i]
    }


def _budgeted(decisions: Decisions, spec: JobSpec, reserve: Reserve | None, skip: Sequence[int] = ()) -> set[int]:
    """Indices (into ``decisions``) of the escalations the budget keeps: best expected gain per cost first.
    ``skip``: escalated items answered otherwise (the answer memory), which cost nothing."""
    wanted = [i for i, r in enumerate(decisions.route) if r is Route.ESCALATE and i not in skip]
    if spec.max_escalation is None and spec.max_llm_cost is None:
        return set(wanted)
    policy = spec.policy
    label, confidence, items = decisions.label, decisions.confidence, decisions.items
    gains = [policy.gain(label[i], confidence[i]) if policy else 1.0 - confidence[i] for i in wanted]
    costs = [
        estimate_tokens(items.text[i], spec.top_k, (items.context[i] if items.context else None) or ())
        * spec.usd_per_llm_token
        for i in wanted
    ]
    max_items = len(wanted)
    if spec.max_escalation is not None:
        max_items = math.floor(spec.max_escalation * len(items))
    kept = within_budget(gains, costs, max_items, math.inf)
    if spec.max_llm_cost is not None and reserve is not None:
        kept = [kept[i] for i in by_value([gains[k] for k in kept], [costs[k] for k in kept])]
        kept = kept[: reserve([costs[k] for k in kept])]
    return {wanted[k] for k in kept}


def _final(decisions: Decisions, budget_limited: Sequence[int] = ()) -> SpecialistAnswers:
    """The chunk's items whose specialist answer is final, as they are when nothing from the chunk goes on (every
    route accept or abstain; ``budget_limited``: escalations the budget kept with the specialist)."""
    limited = [False] * len(decisions.items)
    routes_ = list(decisions.route)
    for i in budget_limited:
        limited[i], routes_[i] = True, Route.ACCEPT
    items = decisions.items
    return SpecialistAnswers(
        items.custom_id, items.line, items.labels, decisions.label, decisions.confidence, routes_, limited
    )


def split_chunk(
    items: Sequence[Item],
    specialist: Specialist,
    spec: JobSpec,
    reserve: Reserve | None = None,
    memory: AnswerMemory | None = None,
) -> tuple[Sequence[ItemResult], list[Escalation]]:
    """Run the specialist on a chunk; the rule, the answer memory and the budget split it into final answers and
    escalations. ``memory``: the answer memory as of the chunk's start (with a ``minilm`` specialist). When nothing
    goes on from the chunk, its answers come as columns (``SpecialistAnswers``)."""
    decisions = decide(items, specialist, spec)
    wanting = decisions.wanting_llm()
    if not wanting:  # the common chunk: every answer is the specialist's
        return _final(decisions), []
    candidates = {  # the LLM's choices of every item that may reach it
        i: top_candidates(decisions.proba[i], specialist.labels, spec.top_k) for i in wanting
    }
    recalled = recall(decisions, candidates, spec, memory)
    allowed = _budgeted(decisions, spec, reserve, skip=list(recalled))
    explore_p = spec.policy.explore_rate if spec.policy else None
    answers = _final(decisions, [i for i in wanting if decisions.route[i] is Route.ESCALATE and i not in allowed])
    accepted: list[ItemResult] = []
    escalated: list[Escalation] = []
    chunk, vectors = decisions.items, decisions.vectors
    for i, (label, confidence, chosen) in enumerate(
        zip(decisions.label, decisions.confidence, decisions.route, strict=True)
    ):
        if i in recalled:
            accepted.append(memory_result(chunk[i], label, confidence, candidates[i], recalled[i]))
        elif chosen is Route.EXPLORE or (chosen is Route.ESCALATE and i in allowed):
            item = chunk[i]
            escalated.append(
                Escalation(
                    custom_id=item.custom_id,
                    line=item.line,
                    text=item.text,
                    gold=item.label,
                    specialist_label=label,
                    specialist_confidence=confidence,
                    candidates=candidates[i],
                    route=chosen,
                    sampling_probability=explore_p if chosen is Route.EXPLORE else None,
                    vector=None if vectors is None else pack(vectors[i]),
                    context=item.context,
                )
            )
        else:
            accepted.append(answers[i])
    return accepted, escalated


def run_specialist_chunk(
    store: JobStore,
    specialist: Specialist,
    job_id: str,
    index: int,
    memory: AnswerMemory | None = None,
    spec: JobSpec | None = None,
) -> list[Escalation]:
    """Answer a stored chunk's confident items (and those the answer memory, read at the chunk's start, answers);
    return the escalations still without a record. ``spec``: the job's, when the caller has read it already."""
    if not store.status(job_id).accepts_work:  # ended, or ending: its sweep takes the items
        return []
    spec = store.spec(job_id) if spec is None else spec
    start = time.perf_counter()

    def reserve(costs: list[float]) -> int:
        return store.reserve_budget(job_id, index, costs, spec.max_llm_cost or 0.0)

    items = store.chunk(job_id, index)
    metrics.IN_FLIGHT.labels(tier="specialist").inc(len(items))
    try:
        accepted, escalated = split_chunk(items, specialist, spec, reserve, memory)
        new = (  # a chunk that sends nothing has nothing to count (one round trip fewer)
            store.mark_sent(
                job_id,
                index,
                [e.custom_id for e in escalated if e.route is Route.ESCALATE],
                [e.custom_id for e in escalated if e.route is Route.EXPLORE],
            )
            if escalated
            else set()
        )
        recorded = store.record(job_id, index, results=accepted, whole=not escalated)
    finally:
        metrics.IN_FLIGHT.labels(tier="specialist").dec(len(items))
    seconds = time.perf_counter() - start
    store.add_seconds(job_id, "specialist", seconds)
    sent = [(e.route, e.specialist_confidence) for e in escalated if e.custom_id in new]
    instrument.specialist_chunk(spec, recorded.results, sent, seconds)
    lifecycle.finished(store, job_id, recorded)
    # A chunk that runs again sends on only what has no record yet.
    pending = set(store.unrecorded(job_id, index, [e.custom_id for e in escalated]))
    return [e for e in escalated if e.custom_id in pending]


CLAIM_SECONDS = 300.0
"""A claim's life when the caller gives none: the settings' default LLM timeout (60 s) times its tries (5)."""


class _Recorder:
    """Writes a chunk's LLM records as they come, in small groups: a worker killed mid-chunk loses (and pays
    again for) at most the requests in flight and one group."""

    def __init__(self, store: JobStore, job_id: str, chunk: int, spec: JobSpec, group: int, seconds: float) -> None:
        self.store, self.job_id, self.chunk, self.spec = store, job_id, chunk, spec
        self.group, self.seconds = group, seconds
        self.results: list[ItemResult] = []
        self.errors: list[ItemError] = []
        self.found: dict[str, CacheResult] = {}
        """custom_id -> how its LLM answer was found, for the records that reached the LLM tier."""
        self.last = time.monotonic()

    def add(self, record: ItemResult | ItemError, found: CacheResult | None = None) -> None:
        if isinstance(record, ItemResult):
            self.results.append(record)
        else:
            self.errors.append(record)
        if found is not None and record.custom_id is not None:
            self.found[record.custom_id] = found
        if len(self.results) + len(self.errors) >= self.group or time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if not self.results and not self.errors:
            return
        recorded = self.store.record(self.job_id, self.chunk, results=self.results, errors=self.errors)
        new = [r.custom_id for r in recorded.results] + [e.custom_id for e in recorded.errors]
        found = [self.found[c] for c in new if c is not None and c in self.found]
        self.results, self.errors, self.found, self.last = [], [], {}, time.monotonic()
        instrument.llm_answers(self.spec, recorded.results, recorded.errors)
        instrument.answer_cache(found)
        lifecycle.finished(self.store, self.job_id, recorded)


def _by_key(escalations: Sequence[Escalation], model: str, prompt_version: str) -> dict[str, list[Escalation]]:
    """The escalations by answer key, in order: the items of one key are asked about once."""
    groups: dict[str, list[Escalation]] = {}
    for esc in escalations:
        key = answer_key(model, prompt_version, esc.candidates, esc.text, esc.context)
        groups.setdefault(key, []).append(esc)
    return groups


def _fan_out(
    recorder: _Recorder, group: list[Escalation], resolved: Resolution, on_error: OnLLMError
) -> tuple[Escalation, LLMAnswer] | None:
    """Record one key's answer on each of its items; returns the item and answer the LLM was asked and paid for.

    An answer asked about here is the first item's own (``llm``, its tokens); its duplicates share it, as a cached
    answer (``cache``, no tokens, no cost), like every item of a key found in the cache or waited for."""
    first, answer = group[0], resolved.answer
    asked = resolved.result is CacheResult.MISS
    for n, esc in enumerate(group):
        found = resolved.result if n == 0 or not asked else CacheResult.SHARED
        if isinstance(answer, LLMError):
            recorder.add(llm_failure(esc, answer, on_error), found)
        else:
            source = AnswerSource.LLM if found is CacheResult.MISS else AnswerSource.CACHE
            recorder.add(llm_result(esc, answer, source), found)
    return (first, answer) if asked and isinstance(answer, LLMAnswer) else None


async def run_llm_chunk(
    store: JobStore,
    client: LLMClient,
    job_id: str,
    chunk: int,
    escalations: Sequence[Escalation],
    group: int = 16,
    group_seconds: float = 1.0,
    cache: AnswerCache | None = None,
    claiming: Claiming | None = None,
) -> list[tuple[Escalation, LLMAnswer]]:
    """Answer the escalations that still have no record, recording the answers as they arrive (at most ``group``
    answers or ``group_seconds`` between writes); returns the escalations the LLM was asked about (one per distinct
    answer key) with the answers it gave.

    Items with the same answer key (``answers.answer_key``) are asked about once. With a ``cache`` and the job's
    ``answer_cache``, an answer already bought is taken from it, a key another worker is asking about is waited
    for, and every answer bought here is added to it, as ``claiming`` says (default: a claim of this call only, for
    ``CLAIM_SECONDS``)."""
    if not store.status(job_id).accepts_work:
        return []
    pending = set(store.unrecorded(job_id, chunk, [e.custom_id for e in escalations]))
    todo = [e for e in escalations if e.custom_id in pending]
    if not todo:
        return []
    spec = store.spec(job_id)
    recorder = _Recorder(store, job_id, chunk, spec, group, group_seconds)
    groups = _by_key(todo, client.model, spec.prompt_version)
    requests = {key: Question(g[0].text, g[0].candidates, g[0].context or ()) for key, g in groups.items()}
    shared = cache if spec.answer_cache else None
    bought: list[tuple[Escalation, LLMAnswer]] = []
    start = time.perf_counter()
    metrics.IN_FLIGHT.labels(tier="llm").inc(len(todo))
    try:
        claim = claiming or Claiming(owner=uuid.uuid4().hex, seconds=CLAIM_SECONDS)
        async with contextlib.aclosing(resolve(client, requests, shared, claim, spec.prompt)) as answers:
            async for resolved in answers:
                asked = _fan_out(recorder, groups[resolved.key], resolved, spec.on_llm_error)
                if asked is not None:
                    bought.append(asked)
        recorder.flush()
    finally:
        metrics.IN_FLIGHT.labels(tier="llm").dec(len(todo))
    seconds = time.perf_counter() - start
    store.add_seconds(job_id, "llm", seconds)
    instrument.llm_chunk_seconds(seconds)
    return bought


def fail_escalations(
    store: JobStore, job_id: str, chunk: int, escalations: Sequence[Escalation], error: LLMError
) -> None:
    """Record every escalation still without a record as the LLM failing on it (the job's ``on_llm_error``
    decides: the specialist's answer, marked, or an error), when its LLM chunk cannot run at all."""
    spec = store.spec(job_id)
    pending = set(store.unrecorded(job_id, chunk, [e.custom_id for e in escalations]))
    recorder = _Recorder(store, job_id, chunk, spec, group=len(escalations) or 1, seconds=float("inf"))
    for esc in escalations:
        if esc.custom_id in pending:
            recorder.add(llm_failure(esc, error, spec.on_llm_error))
    recorder.flush()
