"""A job's summary: accuracy, escalation share and time per tier, from the store's counters."""

from pydantic import BaseModel

from cascade.workers.jobs import JobStats, JobView


class TierSummary(BaseModel):
    answered: int
    accuracy: float | None
    specialist_accuracy: float | None
    """The specialist's own accuracy on the items this tier answered: what escalating them changed."""
    task_seconds: float
    """Summed over the tier's tasks, which run concurrently."""


class Summary(BaseModel):
    job_id: str
    status: str
    total: int | None
    completed: int
    failed: int
    escalated: int
    escalation_share: float | None
    llm_errors: int
    accuracy: float | None
    """Over the completed items that carried a gold label."""
    specialist_only_accuracy: float | None
    """What the specialist alone would have scored on the same items."""
    labelled: int
    tiers: dict[str, TierSummary]
    wall_seconds: float | None
    llm_tokens: int = 0
    llm_cache_hits: int = 0
    """LLM answers taken from the answer cache (or shared within a chunk): no LLM request, no cost."""
    cost_usd: dict[str, float] = {}
    """Estimated cost by tier, from the cost model recorded in the job's spec."""
    cost_per_1000_items: float | None = None
    all_llm_cost_usd: float | None = None
    """What sending every item to the LLM would have cost, at the job's measured cost per LLM request."""


def summarize(job: JobView, stats: JobStats) -> Summary:
    tiers, llm_errors = stats.tiers, stats.llm_errors
    labelled = sum(t.labelled for t in tiers.values())
    correct = sum(t.correct for t in tiers.values())
    specialist_correct = sum(t.specialist_correct for t in tiers.values())
    seconds = {"specialist": job.specialist_seconds, "llm": job.llm_seconds}
    valid = job.counts.completed + job.counts.failed
    tokens, requests = stats.llm_tokens, stats.llm_requests
    cost = {
        "specialist": job.specialist_seconds * job.spec.usd_per_cpu_second,
        "llm": tokens * job.spec.usd_per_llm_token,
    }
    items = job.counts.completed + job.counts.failed
    return Summary(
        llm_tokens=tokens,
        llm_cache_hits=stats.llm_cache_hits,
        cost_usd=cost,
        cost_per_1000_items=1000 * sum(cost.values()) / items if items else None,
        all_llm_cost_usd=cost["llm"] / requests * items if requests else None,
        job_id=job.id,
        status=job.status.value,
        total=job.counts.total,
        completed=job.counts.completed,
        failed=job.counts.failed,
        escalated=job.counts.escalated,
        escalation_share=job.counts.escalated / valid if valid else None,
        llm_errors=llm_errors,
        accuracy=correct / labelled if labelled else None,
        specialist_only_accuracy=specialist_correct / labelled if labelled else None,
        labelled=labelled,
        tiers={
            name: TierSummary(
                answered=t.answered,
                accuracy=t.accuracy,
                specialist_accuracy=t.specialist_correct / t.labelled if t.labelled else None,
                task_seconds=seconds.get(name, 0.0),
            )
            for name, t in tiers.items()
        },
        wall_seconds=(job.finished_at - job.created_at) if job.finished_at else None,
    )
