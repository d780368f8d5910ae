"""A job store in process memory: the ``JobStore`` contract without Redis, for unit tests and local runs.

Same semantics as the Redis store (the contract tests run over both); one process only, nothing persisted.
``MemoryAnswerCache`` is the same kind of fake for the answer cache (``cascade.workers.answers``).
"""

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from cascade.workers.answers import CachedAnswer, Claim
from cascade.workers.columns import ItemColumns
from cascade.workers.errors import NotFoundError
from cascade.workers.items import AnswerSource, Item, ItemError, ItemResult
from cascade.workers.jobs import INTERIM, Counts, JobSpec, JobStats, JobStatus, JobView, TierStats
from cascade.workers.storage import IntakeOutcome, Recorded


@dataclass
class _Job:
    spec: JobSpec
    owner: str
    created_at: float
    expires_at: float | None
    status: JobStatus = JobStatus.VALIDATING
    ending: JobStatus | None = None
    total: int | None = None
    chunks: int = 0
    chunks_sent: int = 0
    finished_at: float | None = None
    error: str | None = None
    progress_at: float | None = None
    lines_read: int = 0
    reaps: int = 0
    deliveries: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    budget_spent: float = 0.0
    budget_taken: dict[int, int] = field(default_factory=dict)
    items: dict[int, list[Item]] = field(default_factory=dict)
    invalid: dict[int, ItemError] = field(default_factory=dict)
    results: dict[str, ItemResult] = field(default_factory=dict)
    errors: dict[str, ItemError] = field(default_factory=dict)
    chunk_of: dict[str, int] = field(default_factory=dict)
    """custom_id -> the chunk its record was written for (records are served chunk by chunk)."""
    sent: set[int] = field(default_factory=set)
    escalated: int = 0
    explored: int = 0
    stats: JobStats = field(default_factory=JobStats)


class MemoryJobStore:
    """Jobs and their records in a dict."""

    def __init__(self) -> None:
        self.jobs: dict[str, _Job] = {}

    def _job(self, job_id: str) -> _Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFoundError(f"no job {job_id!r}") from None

    def create(
        self, spec: JobSpec, owner: str = "", extra: dict[str, str] | None = None, window: float | None = None
    ) -> str:
        job_id = "batch_" + uuid.uuid4().hex
        now = time.time()
        self.jobs[job_id] = _Job(spec, owner, now, None if window is None else now + window)
        return job_id

    def status(self, job_id: str) -> JobStatus:
        return self._job(job_id).status

    def spec(self, job_id: str) -> JobSpec:
        return self._job(job_id).spec

    def get(self, job_id: str) -> JobView:
        job = self._job(job_id)
        counts = Counts(
            total=job.total,
            completed=len(job.results),
            failed=len(job.errors) + len(job.invalid),
            escalated=job.escalated,
        )
        return JobView(
            id=job_id,
            status=job.status,
            spec=job.spec,
            counts=counts,
            created_at=job.created_at,
            finished_at=job.finished_at,
            specialist_seconds=job.seconds.get("specialist", 0.0),
            llm_seconds=job.seconds.get("llm", 0.0),
            error=job.error,
            expires_at=job.expires_at,
            progress_at=job.progress_at,
            lines_read=job.lines_read,
            chunks_sent=job.chunks_sent,
            reaps=job.reaps,
        )

    def stats(self, job_id: str) -> JobStats:
        return self._job(job_id).stats.model_copy(deep=True)

    def add_seconds(self, job_id: str, tier: str, seconds: float) -> None:
        job = self._job(job_id)
        job.seconds[tier] = job.seconds.get(tier, 0.0) + seconds

    def reserve_budget(self, job_id: str, chunk: int, costs: list[float], budget: float) -> int:
        job = self._job(job_id)
        if chunk in job.budget_taken:
            return job.budget_taken[chunk]
        taken, cost = 0, 0.0
        for c in costs:
            if job.budget_spent + cost + c > budget:
                break
            cost += c
            taken += 1
        job.budget_spent += cost
        job.budget_taken[chunk] = taken
        return taken

    def put_chunk(self, job_id: str, index: int, items: Sequence[Item]) -> None:
        self._job(job_id).items[index] = list(items)

    def chunk(self, job_id: str, index: int) -> ItemColumns:
        return ItemColumns.of(self._job(job_id).items.get(index, []))

    def chunk_count(self, job_id: str) -> int:
        return self._job(job_id).chunks

    def chunks_done(self, job_id: str) -> int:
        job = self._job(job_id)
        recorded = job.results.keys() | job.errors.keys()
        return sum(all(i.custom_id in recorded for i in items) for items in job.items.values())

    def put_invalid(self, job_id: str, errors: Sequence[ItemError]) -> None:
        self._job(job_id).invalid.update({e.line: e for e in errors})

    def invalid_count(self, job_id: str) -> int:
        return len(self._job(job_id).invalid)

    def chunks_sent(self, job_id: str) -> int:
        return self._job(job_id).chunks_sent

    def chunk_sent(self, job_id: str, index: int, lines_read: int) -> None:
        job = self._job(job_id)
        job.chunks_sent, job.lines_read, job.progress_at = index + 1, lines_read, time.time()

    def finish_intake(self, job_id: str, total: int, chunks: int) -> IntakeOutcome:
        job = self._job(job_id)
        job.total, job.chunks = total, chunks
        if job.status is JobStatus.VALIDATING:
            if chunks == 0:
                return IntakeOutcome.EMPTY
            job.status = JobStatus.IN_PROGRESS
            self._try_finish(job)
            return IntakeOutcome.STARTED
        if job.status in INTERIM.values():
            return IntakeOutcome.SWEEP
        return IntakeOutcome.ENDED

    def mark_sent(self, job_id: str, chunk: int, escalated: Sequence[str], explored: Sequence[str] = ()) -> set[str]:
        job = self._job(job_id)
        if chunk in job.sent:
            return set()
        job.sent.add(chunk)
        job.escalated += len(escalated)
        job.explored += len(explored)
        return {*escalated, *explored}

    def unrecorded(self, job_id: str, chunk: int, custom_ids: Sequence[str]) -> list[str]:
        job = self._job(job_id)
        return [c for c in custom_ids if c not in job.results and c not in job.errors]

    def record(
        self,
        job_id: str,
        chunk: int,
        results: Sequence[ItemResult] = (),
        errors: Sequence[ItemError] = (),
        whole: bool = False,
    ) -> Recorded:
        job = self._job(job_id)
        new_results = [r for r in results if self._add_result(job, r)]
        new_errors = []
        for e in errors:
            if e.custom_id is None:
                raise ValueError("an item error needs its custom_id")
            if e.custom_id not in job.results and e.custom_id not in job.errors:
                job.errors[e.custom_id] = e
                new_errors.append(e)
        for custom_id in [*(r.custom_id for r in new_results), *(e.custom_id for e in new_errors)]:
            job.chunk_of[str(custom_id)] = chunk
        if new_results or new_errors:
            job.progress_at = time.time()
        finished = bool(results or errors) and self._try_finish(job)
        return Recorded(new_results, new_errors, finished)

    @staticmethod
    def _add_result(job: _Job, r: ItemResult) -> bool:
        if r.custom_id in job.results or r.custom_id in job.errors:
            return False
        job.results[r.custom_id] = r
        stats = job.stats
        tier = stats.tiers.setdefault(r.tier.value, TierStats())
        tier.answered += 1
        if r.correct is not None:
            tier.labelled += 1
            tier.correct += int(r.correct)
            tier.specialist_correct += int(r.specialist_label == r.gold)
        stats.llm_errors += int(bool(r.llm_error))
        stats.routes[r.route.value] = stats.routes.get(r.route.value, 0) + 1
        if r.llm_tokens > 0:
            stats.llm_tokens += r.llm_tokens
            stats.llm_requests += 1
        stats.llm_cache_hits += int(r.llm_source is AnswerSource.CACHE)
        return True

    def _try_finish(self, job: _Job) -> bool:
        if job.status is not JobStatus.IN_PROGRESS or job.total is None:
            return False
        if len(job.results) + len(job.errors) + len(job.invalid) < job.total:
            return False
        job.status, job.finished_at = JobStatus.COMPLETED, time.time()
        return True

    def iter_results(self, job_id: str) -> Iterator[ItemResult]:
        job = self._job(job_id)
        yield from sorted(job.results.values(), key=lambda r: (job.chunk_of[r.custom_id], r.line))

    def iter_errors(self, job_id: str) -> Iterator[ItemError]:
        job = self._job(job_id)
        yield from sorted(job.invalid.values(), key=lambda e: e.line)
        yield from sorted(job.errors.values(), key=lambda e: (job.chunk_of[str(e.custom_id)], e.line))

    def texts(self, job_id: str, custom_ids: Sequence[str]) -> dict[str, str]:
        job = self._job(job_id)
        wanted = {c for c in custom_ids if c in job.results and job.results[c].llm_label is not None}
        return {i.custom_id: i.text for items in job.items.values() for i in items if i.custom_id in wanted}

    def request_end(self, job_id: str, final: JobStatus, only_if_due: bool = False, reason: str | None = None) -> bool:
        job = self._job(job_id)
        if not job.status.accepts_work:
            return False
        if only_if_due and (job.expires_at is None or job.expires_at > time.time()):
            return False
        job.status, job.ending = INTERIM[final], final
        job.error = reason or job.error
        return job.total is not None

    def ending(self, job_id: str) -> JobStatus | None:
        job = self._job(job_id)
        return job.ending if job.status in INTERIM.values() else None

    def end(self, job_id: str, status: JobStatus, error: str | None = None) -> bool:
        job = self._job(job_id)
        if job.status.is_final:
            return False
        job.status, job.finished_at, job.error = status, time.time(), error or job.error
        return True

    def active_ids(self) -> list[str]:
        return [job_id for job_id, job in self.jobs.items() if not job.status.is_final]

    def count_delivery(self, job_id: str, task: str) -> int:
        deliveries = self._job(job_id).deliveries
        deliveries[task] = deliveries.get(task, 0) + 1
        return deliveries[task]

    def count_reap(self, job_id: str) -> int:
        job = self._job(job_id)
        job.reaps, job.progress_at = job.reaps + 1, time.time()
        return job.reaps


class MemoryAnswerCache:
    """The answer cache in a dict (a fake for unit tests): no TTL nor size bound; claims lapse on the clock."""

    def __init__(self) -> None:
        self.answers: dict[str, CachedAnswer] = {}
        self.claims: dict[str, tuple[str, float]] = {}
        """key -> (owner, monotonic time the claim lapses)."""

    def get(self, keys: Sequence[str]) -> dict[str, CachedAnswer]:
        return {k: self.answers[k] for k in keys if k in self.answers}

    def claim(self, keys: Sequence[str], owner: str, seconds: float) -> dict[str, CachedAnswer | Claim]:
        now = time.monotonic()
        outcome: dict[str, CachedAnswer | Claim] = {}
        for key in keys:
            holder, until = self.claims.get(key, ("", now))
            if key in self.answers:
                outcome[key] = self.answers[key]
            elif holder in {"", owner} or until <= now:
                self.claims[key] = (owner, now + seconds)
                outcome[key] = Claim.MINE
            else:
                outcome[key] = Claim.THEIRS
        return outcome

    def put(self, answers: Mapping[str, CachedAnswer]) -> None:
        for key, answer in answers.items():
            self.answers.setdefault(key, answer)
            self.claims.pop(key, None)

    def release(self, keys: Sequence[str], owner: str) -> None:
        for key in keys:
            if self.claims.get(key, ("", 0.0))[0] == owner:
                del self.claims[key]
