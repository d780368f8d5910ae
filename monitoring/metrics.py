"""Every Prometheus metric Cascade exports, declared once, prefix ``cascade_``.

The client library appends ``_total`` to counters (``cascade_items`` is exported as ``cascade_items_total``);
``METRIC_NAMES`` pins every exported family name, and a test checks it against what is registered.

Celery's prefork pool runs tasks in child processes, so workers use the client's multiprocess mode: the CLI sets
``PROMETHEUS_MULTIPROC_DIR`` (and wipes it) before this module is imported anywhere in the worker.
Counts move only for records that are new in the store, so a chunk that runs twice counts once.
"""

from prometheus_client import Counter, Gauge, Histogram

ITEMS = Counter(
    "cascade_items",
    "Items by the tier that handled them and the outcome there. Every valid item is counted once in the "
    "specialist tier (answered, escalated or abstained); refused input lines once in the intake tier (failed); "
    "escalated items once more in the llm tier (answered or failed).",
    ["tier", "outcome"],
)
ESCALATIONS = Counter("cascade_escalations", "Items sent to the LLM, by reason.", ["reason"])
LLM_ERRORS = Counter("cascade_llm_errors", "LLM requests that failed after their retries, by kind.", ["kind"])
LLM_TOKENS = Counter("cascade_llm_tokens", "LLM tokens, from the responses' usage.", ["kind"])
LLM_CACHE = Counter(
    "cascade_llm_cache",
    "Items of the LLM tier by how they got their LLM answer: hit (from the answer cache), shared (a duplicate in "
    "its chunk, or another worker's request waited for), memory (the answer memory: near neighbours' LLM answers), "
    "miss (the LLM was asked: one request each).",
    ["result"],
)
COST = Counter("cascade_cost_usd", "Estimated cost in USD by tier, from the cost model in settings.", ["tier"])
LABELLED = Counter(
    "cascade_labelled_items",
    "Final answers on items that came with a gold label, by the tier that answered and whether it was right.",
    ["tier", "correct"],
)
AGREEMENT = Counter(
    "cascade_tier_agreement",
    "Items answered by both tiers (escalated or explored), by whether the specialist and the LLM agreed.",
    ["route", "agree"],
)
CONFIDENCE = Histogram(
    "cascade_specialist_confidence",
    "The specialist's confidence in its best label.",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
STAGE_SECONDS = Histogram(
    "cascade_stage_duration_seconds",
    "Time spent per job stage: a specialist chunk, an LLM chunk, one LLM request.",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
QUEUE_WAIT = Histogram(
    "cascade_queue_wait_seconds",
    "Time a task waited in its queue, from enqueue to start.",
    ["queue"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)
IN_FLIGHT = Gauge(
    "cascade_items_in_flight", "Items in chunks being processed now.", ["tier"], multiprocess_mode="livesum"
)
POLICY = Gauge(
    "cascade_policy_info",
    "1 for each escalation policy version a worker has applied (info-style).",
    ["version", "target"],
    multiprocess_mode="liveall",
)

POLICY_TARGET = Gauge(
    "cascade_policy_target_accuracy",
    "The accuracy target of each policy version a worker has applied.",
    ["version"],
    multiprocess_mode="liveall",
)

JOBS = "cascade_jobs"
"""Gauge family served by the jobs collector (``monitoring.exporter``): jobs by status, read from Redis."""
QUEUE_LENGTH = "cascade_queue_length"
"""Gauge family served by the jobs collector: tasks waiting in each Celery queue (Redis list length)."""
QUEUE_RESERVED = "cascade_queue_reserved"
"""Gauge family served by the jobs collector: tasks of each queue delivered to a worker and not yet acknowledged
(running, or prefetched); with the waiting ones, the work a queue's workers have (deploy/: their autoscaling)."""

METRIC_NAMES = {
    "cascade_items_total",
    "cascade_escalations_total",
    "cascade_llm_errors_total",
    "cascade_llm_tokens_total",
    "cascade_llm_cache_total",
    "cascade_cost_usd_total",
    "cascade_labelled_items_total",
    "cascade_tier_agreement_total",
    "cascade_specialist_confidence",
    "cascade_stage_duration_seconds",
    "cascade_queue_wait_seconds",
    "cascade_items_in_flight",
    "cascade_policy_info",
    "cascade_policy_target_accuracy",
    JOBS,
    QUEUE_LENGTH,
    QUEUE_RESERVED,
}
"""Every family Cascade exports (histograms also export ``_bucket``, ``_sum`` and ``_count`` series)."""
