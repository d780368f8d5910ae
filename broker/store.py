"""The job store in Redis: the ``JobStore`` contract (``cascade.workers.storage``) for production.

Every write of a record is idempotent and keyed by job and ``custom_id`` (one script, ``scripts.RECORD``): the
first record written for an item wins, and an item is never in both the results and the errors. A chunk that runs
twice changes nothing. Keys come from ``keys``; every key of a job expires ``job_ttl`` seconds after creation.
"""

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, cast

import redis
from pydantic import TypeAdapter

from cascade.broker import keys, scripts
from cascade.broker.keys import JobKeys
from cascade.workers.errors import JobError, NotFoundError
from cascade.workers.items import Item, ItemError, ItemResult
from cascade.workers.jobs import INTERIM, Counts, JobSpec, JobStats, JobStatus, JobView, TierStats
from cascade.workers.storage import IntakeOutcome, Recorded

_ITEMS = TypeAdapter(list[Item])
_TIER_COUNTERS = ("answered", "labelled", "correct", "specialist_correct")
if TYPE_CHECKING:
    _Value = bytes | bytearray | memoryview[int] | str | int | float  # what redis-py's typing accepts in a mapping


def _args(**fields: object) -> str:
    return json.dumps(fields)


def _result_record(r: ItemResult) -> dict[str, object]:
    return {
        "kind": "result",
        "id": r.custom_id,
        "record": r.model_dump_json(),
        "tier": r.tier.value,
        "route": r.route.value,
        "labelled": r.correct is not None,
        "correct": bool(r.correct),
        "specialist_correct": r.gold is not None and r.specialist_label == r.gold,
        "llm_error": bool(r.llm_error),
        "llm_tokens": r.llm_tokens,
    }


def _error_record(e: ItemError) -> dict[str, object]:
    if e.custom_id is None:
        raise ValueError("an item error needs its custom_id")
    return {"kind": "error", "id": e.custom_id, "record": e.model_dump_json()}


class RedisJobStore:
    """Jobs and their records in one Redis database."""

    def __init__(self, client: redis.Redis, job_ttl: int) -> None:
        self.redis = client
        self.job_ttl = job_ttl
        self._record = client.register_script(scripts.RECORD)
        self._finish = client.register_script(scripts.FINISH)
        self._end = client.register_script(scripts.END)
        self._reserve = client.register_script(scripts.RESERVE)
        self._intake_done = client.register_script(scripts.INTAKE_DONE)
        self._request_end = client.register_script(scripts.REQUEST_END)
        self._claim = client.register_script(scripts.CLAIM)

    @classmethod
    def from_url(cls, url: str, job_ttl: int) -> "RedisJobStore":
        return cls(redis.Redis.from_url(url, decode_responses=True), job_ttl)

    # --- jobs ---------------------------------------------------------------------------------------------

    def create(
        self, spec: JobSpec, owner: str = "", extra: dict[str, str] | None = None, window: float | None = None
    ) -> str:
        """A new job, validating. ``owner`` scopes who may see it (the API's caller); ``extra`` is kept as is;
        ``window``: seconds after which the job expires if it has not ended (its completion window)."""
        job_id = "batch_" + uuid.uuid4().hex
        now = time.time()
        key = JobKeys(job_id).job
        fields: dict[_Value, _Value] = {
            "spec": spec.model_dump_json(),
            "status": JobStatus.VALIDATING.value,
            "created_at": repr(now),
            "owner": owner,
        }
        if window is not None:
            fields["expires_at"] = repr(now + window)
        fields.update(extra or {})
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.job_ttl)
            pipe.zadd(keys.JOBS, {job_id: now})
            pipe.zadd(keys.owner(owner), {job_id: now})
            pipe.expire(keys.owner(owner), self.job_ttl)
            pipe.execute()
        return job_id

    def fields(self, job_id: str, *names: str) -> list[str | None]:
        return [None if v is None else str(v) for v in self.redis.hmget(JobKeys(job_id).job, list(names))]

    def owned_ids(self, owner: str, limit: int = 100, after: str | None = None) -> list[str]:
        """The owner's jobs, newest first; ``after`` pages on from a job id."""
        ids = [str(v) for v in self.redis.zrevrange(keys.owner(owner), 0, -1)]
        if after is not None and after in ids:
            ids = ids[ids.index(after) + 1 :]
        return [i for i in ids if self.redis.exists(JobKeys(i).job)][:limit]

    def spec(self, job_id: str) -> JobSpec:
        raw = self.redis.hget(JobKeys(job_id).job, "spec")
        if raw is None:
            raise NotFoundError(f"no job {job_id!r}")
        return JobSpec.model_validate_json(raw)

    def status(self, job_id: str) -> JobStatus:
        raw = self.redis.hget(JobKeys(job_id).job, "status")
        if raw is None:
            raise NotFoundError(f"no job {job_id!r}")
        return JobStatus(str(raw))

    def get(self, job_id: str) -> JobView:
        k = JobKeys(job_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(k.job)
            pipe.hlen(k.results)
            pipe.hlen(k.errors)
            pipe.hlen(k.invalid)
            pipe.scard(k.escalated)
            fields, n_results, n_errors, n_invalid, n_escalated = pipe.execute()
        if not fields:
            raise NotFoundError(f"no job {job_id!r}")
        h: dict[str, str] = fields
        return JobView(
            id=job_id,
            status=JobStatus(h["status"]),
            spec=JobSpec.model_validate_json(h["spec"]),
            counts=Counts(
                total=int(h["total"]) if "total" in h else None,
                completed=n_results,
                failed=n_errors + n_invalid,
                escalated=n_escalated,
            ),
            created_at=float(h["created_at"]),
            finished_at=float(h["finished_at"]) if "finished_at" in h else None,
            specialist_seconds=float(h.get("specialist_seconds", 0.0)),
            llm_seconds=float(h.get("llm_seconds", 0.0)),
            error=h.get("error"),
            expires_at=float(h["expires_at"]) if "expires_at" in h else None,
            progress_at=float(h["progress_at"]) if "progress_at" in h else None,
            lines_read=int(h.get("lines_read", 0)),
            chunks_sent=int(h.get("chunks_sent", 0)),
            reaps=int(h.get("reaps", 0)),
        )

    def wait(self, job_id: str, timeout: float, poll: float = 0.1) -> JobView:
        """Block until the job has ended; ``JobError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.get(job_id)
            if view.status.is_final:
                return view
            if time.monotonic() > deadline:
                raise JobError(f"job {job_id} did not end within {timeout} s: {view.status.value}")
            time.sleep(poll)

    def stats(self, job_id: str) -> JobStats:
        h = {str(k): str(v) for k, v in self.redis.hgetall(JobKeys(job_id).job).items()}
        tiers: dict[str, TierStats] = {}
        for name, value in h.items():
            counter, _, tier = name.partition(":")
            if counter in _TIER_COUNTERS:
                setattr(tiers.setdefault(tier, TierStats()), counter, int(value))
        return JobStats(
            tiers=dict(sorted(tiers.items())),
            routes={k.split(":", 1)[1]: int(v) for k, v in h.items() if k.startswith("route:")},
            llm_errors=int(h.get("llm_errors", 0)),
            llm_tokens=int(h.get("llm_tokens", 0)),
            llm_requests=int(h.get("llm_requests", 0)),
        )

    def reserve_budget(self, job_id: str, chunk: int, costs: list[float], budget: float) -> int:
        args = _args(chunk=chunk, budget=budget, costs=costs)
        return cast(int, self._reserve(keys=[JobKeys(job_id).job], args=[args]))

    def statuses(self) -> list[JobStatus]:
        """The status of every job still in the store."""
        ids = self.redis.zrange(keys.JOBS, 0, -1)
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(JobKeys(str(job_id)).job, "status")
            return [JobStatus(s) for s in pipe.execute() if s is not None]

    def add_seconds(self, job_id: str, tier: str, seconds: float) -> None:
        self.redis.hincrbyfloat(JobKeys(job_id).job, f"{tier}_seconds", seconds)

    # --- intake -------------------------------------------------------------------------------------------

    def put_chunk(self, job_id: str, index: int, items: Sequence[Item]) -> None:
        self.redis.set(JobKeys(job_id).chunk(index), _ITEMS.dump_json(list(items)), ex=self.job_ttl)

    def chunk(self, job_id: str, index: int) -> list[Item]:
        raw = self.redis.get(JobKeys(job_id).chunk(index))
        return [] if raw is None else _ITEMS.validate_json(raw)

    def chunk_count(self, job_id: str) -> int:
        return int(self.redis.hget(JobKeys(job_id).job, "chunks") or 0)

    def put_invalid(self, job_id: str, errors: Sequence[ItemError]) -> None:
        if not errors:
            return
        key = JobKeys(job_id).invalid
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={str(e.line): e.model_dump_json() for e in errors})
            pipe.expire(key, self.job_ttl)
            pipe.execute()

    def invalid_count(self, job_id: str) -> int:
        return int(self.redis.hlen(JobKeys(job_id).invalid))

    def claim_ids(self, job_id: str, items: Sequence[Item]) -> list[bool]:
        """Kept in Redis, not in the reading process's memory, so reading a file of millions of lines takes the
        memory of a small one."""
        if not items:
            return []
        args = _args(ttl=self.job_ttl, ids=[i.custom_id for i in items], lines=[i.line for i in items])
        duplicates = cast(list[int], self._claim(keys=[JobKeys(job_id).ids], args=[args]))
        taken = {int(i) - 1 for i in duplicates}
        return [i not in taken for i in range(len(items))]

    def chunks_sent(self, job_id: str) -> int:
        return int(self.redis.hget(JobKeys(job_id).job, "chunks_sent") or 0)

    def chunk_sent(self, job_id: str, index: int, lines_read: int) -> None:
        progress: dict[_Value, _Value] = {"chunks_sent": index + 1, "lines_read": lines_read}
        progress["progress_at"] = time.time()
        self.redis.hset(JobKeys(job_id).job, mapping=progress)

    def finish_intake(self, job_id: str, total: int, chunks: int) -> IntakeOutcome:
        args = _args(total=total, chunks=chunks, now=repr(time.time()))
        outcome = IntakeOutcome(str(self._intake_done(keys=[JobKeys(job_id).job], args=[args])))
        if outcome is IntakeOutcome.STARTED:
            self._try_finish(job_id)
        return outcome

    # --- records ------------------------------------------------------------------------------------------

    def mark_sent(self, job_id: str, escalated: Sequence[str], explored: Sequence[str] = ()) -> set[str]:
        k = JobKeys(job_id)
        new: set[str] = set()
        for key, ids in ((k.escalated, escalated), (k.explored, explored)):
            if not ids:
                continue
            with self.redis.pipeline(transaction=False) as pipe:
                for cid in ids:
                    pipe.sadd(key, cid)
                pipe.expire(key, self.job_ttl)
                added = pipe.execute()[:-1]
            new |= {cid for cid, a in zip(ids, added, strict=True) if a}
        return new

    def unrecorded(self, job_id: str, custom_ids: Sequence[str]) -> list[str]:
        if not custom_ids:
            return []
        k = JobKeys(job_id)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(k.results, list(custom_ids))
            pipe.hmget(k.errors, list(custom_ids))
            results, errors = pipe.execute()
        return [c for c, r, e in zip(custom_ids, results, errors, strict=True) if r is None and e is None]

    def record(self, job_id: str, results: Sequence[ItemResult] = (), errors: Sequence[ItemError] = ()) -> Recorded:
        records = [_result_record(r) for r in results] + [_error_record(e) for e in errors]
        if not records:
            return Recorded([], [], finished=False)
        k = JobKeys(job_id)
        args = _args(now=repr(time.time()), records=records)
        added = cast(list[int], self._record(keys=[k.job, k.results, k.errors], args=[args]))
        positions = {int(p) - 1 for p in added}
        with self.redis.pipeline() as pipe:
            pipe.expire(k.results, self.job_ttl)
            pipe.expire(k.errors, self.job_ttl)
            pipe.execute()
        n = len(results)
        return Recorded(
            results=[r for i, r in enumerate(results) if i in positions],
            errors=[e for i, e in enumerate(errors) if i + n in positions],
            finished=self._try_finish(job_id),
        )

    def _try_finish(self, job_id: str) -> bool:
        k = JobKeys(job_id)
        if not self._finish(keys=[k.job, k.results, k.errors, k.invalid], args=[_args(now=repr(time.time()))]):
            return False
        self._drop_chunks(job_id)
        return True

    def iter_results(self, job_id: str) -> Iterator[ItemResult]:
        for _, raw in self.redis.hscan_iter(JobKeys(job_id).results, count=1000):
            yield ItemResult.model_validate_json(raw)

    def iter_errors(self, job_id: str) -> Iterator[ItemError]:
        k = JobKeys(job_id)
        for key in (k.invalid, k.errors):
            for _, raw in self.redis.hscan_iter(key, count=1000):
                yield ItemError.model_validate_json(raw)

    # --- ending -------------------------------------------------------------------------------------------

    def request_end(
        self, job_id: str, final: JobStatus, only_if_due: bool = False, reason: str | None = None
    ) -> bool:
        interim = INTERIM[final].value
        now = repr(time.time())
        args = _args(interim=interim, final=final.value, now=now, only_if_due=only_if_due, reason=reason)
        outcome = str(self._request_end(keys=[JobKeys(job_id).job], args=[args]))
        if outcome == "missing":
            raise NotFoundError(f"no job {job_id!r}")
        return outcome == "sweep"

    def ending(self, job_id: str) -> JobStatus | None:
        status, ending = self.redis.hmget(JobKeys(job_id).job, ["status", "ending"])
        if status not in {s.value for s in INTERIM.values()} or ending is None:
            return None
        return JobStatus(str(ending))

    def end(self, job_id: str, status: JobStatus, error: str | None = None) -> bool:
        args = _args(status=status.value, now=repr(time.time()), error=error)
        changed = cast(int, self._end(keys=[JobKeys(job_id).job], args=[args]))
        if changed == -1:
            raise NotFoundError(f"no job {job_id!r}")
        if changed:
            self._drop_chunks(job_id)
        return bool(changed)

    # --- the reaper's view ---------------------------------------------------------------------------------

    def active_ids(self) -> list[str]:
        ids = [str(i) for i in self.redis.zrange(keys.JOBS, 0, -1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(JobKeys(job_id).job, "status")
            statuses = pipe.execute()
        return [i for i, s in zip(ids, statuses, strict=True) if s is not None and not JobStatus(s).is_final]

    def count_delivery(self, job_id: str, task: str) -> int:
        return int(self.redis.hincrby(JobKeys(job_id).job, f"deliveries:{task}", 1))

    def count_reap(self, job_id: str) -> int:
        key = JobKeys(job_id).job
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, "reaps", 1)
            pipe.hset(key, "progress_at", repr(time.time()))
            reaps, _ = pipe.execute()
        return int(reaps)

    def _drop_chunks(self, job_id: str) -> None:
        k = JobKeys(job_id)
        chunks = self.chunk_count(job_id)
        self.redis.delete(k.ids, *(k.chunk(i) for i in range(chunks)))
