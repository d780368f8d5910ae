"""Turning what a chunk wrote into metric updates. Called with only the records that were new in the store, so a
chunk that runs twice counts once. Which route counts as which tier is decided here, next to the records."""

from collections import Counter
from collections.abc import Sequence

import numpy as np
from prometheus_client import Histogram

from cascade.monitoring import metrics
from cascade.workers.answers import CacheResult
from cascade.workers.blocks import SpecialistAnswers, grouped
from cascade.workers.items import AnswerSource, ItemError, ItemResult, Route, Tier
from cascade.workers.jobs import JobSpec


def observe_all(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every value, as one update per bucket and one of the sum: a chunk's hundreds
    of observations cost a few updates (each a locked write to a file in the workers' multiprocess mode). What
    ``Histogram.observe`` does, counted first: a value goes to the first bucket whose upper bound it does not
    exceed (prometheus_client keeps per-bucket counts, summed at collection)."""
    if not values:
        return
    histogram._raise_if_not_observable()  # type: ignore[no-untyped-call]
    bounds = np.asarray(histogram._upper_bounds, dtype=np.float64)
    found = np.asarray(values, dtype=np.float64)
    counts = np.bincount(np.searchsorted(bounds, found, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(found.sum()))
    for bucket, n in zip(histogram._buckets, counts.tolist(), strict=False):
        if n:
            bucket.inc(n)


def _labelled(results: Sequence[ItemResult]) -> None:
    counted: Counter[tuple[str, str]] = Counter()
    for r, n in grouped(results):
        if r.correct is not None:
            counted[r.tier.value, str(r.correct).lower()] += n
    for (tier, correct), n in counted.items():
        metrics.LABELLED.labels(tier=tier, correct=correct).inc(n)


def specialist_chunk(
    spec: JobSpec, results: Sequence[ItemResult], sent: Sequence[tuple[Route, float]], seconds: float
) -> None:
    """A specialist chunk: its new final answers, and the items it newly sent to the LLM (route, confidence)."""
    items: Counter[tuple[str, str]] = Counter()  # counted first: one update per label set, not per item
    for r, n in grouped(results):
        if r.llm_source is AnswerSource.MEMORY:  # escalated, and answered by the answer memory
            items.update({("specialist", "escalated"): n, ("llm", "answered"): n})
            metrics.LLM_CACHE.labels(result=CacheResult.MEMORY.value).inc(n)
            continue
        items["specialist", "abstained" if r.tier is Tier.ABSTAIN else "answered"] += n
    for (tier, outcome), n in items.items():
        metrics.ITEMS.labels(tier=tier, outcome=outcome).inc(n)
    confidences = (
        results.confidence if isinstance(results, SpecialistAnswers) else [r.specialist_confidence for r in results]
    )
    observe_all(metrics.CONFIDENCE, [*confidences, *(c for _, c in sent)])
    for route, _ in sent:
        if route is Route.ESCALATE:
            metrics.ITEMS.labels(tier="specialist", outcome="escalated").inc()
        reason = {Route.EXPLORE: "exploration"}.get(route, "policy_band" if spec.policy else "low_confidence")
        metrics.ESCALATIONS.labels(reason=reason).inc()
    _labelled(results)
    metrics.STAGE_SECONDS.labels(stage="specialist_chunk").observe(seconds)
    metrics.COST.labels(tier="specialist").inc(seconds * spec.usd_per_cpu_second)
    if spec.policy is not None:
        metrics.POLICY.labels(version=spec.policy.version, target=str(spec.policy.target_accuracy)).set(1)
        metrics.POLICY_TARGET.labels(version=spec.policy.version).set(spec.policy.target_accuracy)


def llm_answers(spec: JobSpec, results: Sequence[ItemResult], errors: Sequence[ItemError]) -> None:
    """New records of escalated and explored items, as the LLM tier answered them."""
    tokens = 0
    for r in results:
        if r.route is Route.ESCALATE:
            metrics.ITEMS.labels(tier="llm", outcome="failed" if r.llm_error else "answered").inc()
        else:  # explored: the specialist's answer is final
            metrics.ITEMS.labels(tier="specialist", outcome="answered").inc()
        if r.llm_error:
            metrics.LLM_ERRORS.labels(kind=r.llm_error_kind or "other").inc()
        if r.llm_label is not None:
            metrics.AGREEMENT.labels(route=r.route.value, agree=str(r.llm_label == r.specialist_label).lower()).inc()
            metrics.LLM_TOKENS.labels(kind="prompt").inc(r.llm_prompt_tokens or 0)
            metrics.LLM_TOKENS.labels(kind="completion").inc(r.llm_completion_tokens or 0)
            tokens += r.llm_tokens
    for e in errors:
        metrics.ITEMS.labels(tier="llm", outcome="failed").inc()
        metrics.LLM_ERRORS.labels(kind=e.llm_error_kind or "other").inc()
    _labelled(results)
    metrics.COST.labels(tier="llm").inc(tokens * spec.usd_per_llm_token)


def answer_cache(found: Sequence[CacheResult]) -> None:
    """How new records of the LLM tier got their answer: from the cache, shared with another request, or asked."""
    for result in found:
        metrics.LLM_CACHE.labels(result=result.value).inc()


def llm_chunk_seconds(seconds: float) -> None:
    metrics.STAGE_SECONDS.labels(stage="llm_chunk").observe(seconds)


def failed_items(errors: Sequence[ItemError], tier: str) -> None:
    for _ in errors:
        metrics.ITEMS.labels(tier=tier, outcome="failed").inc()


def job_ended(invalid_lines: int) -> None:
    """Lines refused at intake, counted once, by the worker that ended the job."""
    if invalid_lines:
        metrics.ITEMS.labels(tier="intake", outcome="failed").inc(invalid_lines)


def queue_waited(queue: str, sent_at: float | None, now: float) -> None:
    """A task started: how long it waited in its queue."""
    if sent_at is not None:
        metrics.QUEUE_WAIT.labels(queue=queue).observe(max(now - sent_at, 0.0))
