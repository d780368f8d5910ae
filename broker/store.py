"""The job store in Redis: the ``JobStore`` contract (``cascade.workers.storage``) for production.

Every write of a record is idempotent and keyed by job, chunk and ``custom_id`` (one script, ``scripts.RECORD``):
the first record written for an item wins, and an item is never in both the results and the errors. A chunk that
runs twice changes nothing. Redis holds the records of the chunks in flight only: once every item of a chunk has
its record, the chunk is committed to the result store as part files (``cascade.broker.results``) and its records
and items leave Redis; a job keeps its counters and one commit record per chunk. Keys come from ``keys``; every
key of a job expires ``job_ttl`` seconds after creation, and the reaper then drops its id from the indexes and its
parts from the result store (``trim``). Jobs are counted by status from the status index (``keys.status``), which
the scripts that change a status keep, so no reader walks every job.
"""

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, cast

import redis
from pydantic import TypeAdapter

from cascade.broker import connections, keys, scripts
from cascade.broker.keys import JobKeys
from cascade.broker.results import Part, PartStore
from cascade.workers.blocks import SpecialistAnswers, grouped
from cascade.workers.columns import ItemColumns
from cascade.workers.errors import JobError, NotFoundError, StorageError
from cascade.workers.items import AnswerSource, Item, ItemError, ItemResult
from cascade.workers.jobs import INTERIM, Counts, JobSpec, JobStats, JobStatus, JobView, TierStats
from cascade.workers.storage import IntakeOutcome, Recorded, chunk_task

log = logging.getLogger(__name__)
_ITEMS = TypeAdapter(list[Item])
_TIER_COUNTERS = ("answered", "labelled", "correct", "specialist_correct")
_STATUS_KEYS = [keys.status(s.value) for s in JobStatus]
_ACTIVE = [s for s in JobStatus if not s.is_final]
TRIM_BATCH = 500
"""Ids the reaper looks at per Redis round trip when it trims the indexes."""
if TYPE_CHECKING:
    _Value = bytes | bytearray | memoryview[int] | str | int | float  # what redis-py's typing accepts in a mapping


def _args(**fields: object) -> str:
    return json.dumps(fields)


def _indexed(job_id: str, *own: str) -> tuple[list[str], dict[str, object]]:
    """A status-changing script's KEYS (its own, then the status index) and the fields of ARGV[1] that
    ``scripts._INDEX`` reads."""
    index = {s.value: len(own) + i + 1 for i, s in enumerate(JobStatus)}
    return [*own, *_STATUS_KEYS], {"id": job_id, "index": index}


def _bumps(r: ItemResult | ItemError) -> dict[str, int]:
    """What one new record adds to its job's counters: the one rule, for records written one by one
    (``scripts.RECORD``) and for a chunk committed whole (``scripts.COMMIT_WHOLE``)."""
    if isinstance(r, ItemError):
        return {"n_errors": 1}
    tier = r.tier.value
    bumps = {"n_results": 1, f"answered:{tier}": 1, f"route:{r.route.value}": 1}
    if r.correct is not None:
        bumps[f"labelled:{tier}"] = 1
        bumps[f"correct:{tier}"] = int(r.correct)
        bumps[f"specialist_correct:{tier}"] = int(r.gold is not None and r.specialist_label == r.gold)
    if r.llm_error:
        bumps["llm_errors"] = 1
    if r.llm_tokens > 0:
        bumps["llm_tokens"] = r.llm_tokens
        bumps["llm_requests"] = 1
    if r.llm_source is AnswerSource.CACHE:
        bumps["llm_cache_hits"] = 1
    return bumps


def _done(chunk: int) -> list[str]:
    """The job's fields of a chunk in flight, dropped when it commits: a job keeps nothing per chunk but its commit
    record. Its items left to record, whether it has counted its items sent to the LLM (``scripts.MARK_SENT``),
    and its tasks' deliveries (``count_delivery``): a committed chunk delivered again records and counts nothing."""
    tasks = [f"deliveries:{chunk_task(tier, chunk)}" for tier in ("specialist", "llm")]
    return [f"left:{chunk}", f"sent:{chunk}", *tasks]


def _record(r: ItemResult | ItemError) -> dict[str, object]:
    if r.custom_id is None:
        raise ValueError("an item error needs its custom_id")
    kind = "result" if isinstance(r, ItemResult) else "error"
    return {"kind": kind, "id": r.custom_id, "record": r.model_dump_json(), "bumps": _bumps(r)}


class RedisJobStore:
    """Jobs and their records in one Redis database, finished chunks' records in the result store."""

    def __init__(self, client: redis.Redis, job_ttl: int, parts: PartStore) -> None:
        self.redis = client
        self.job_ttl = job_ttl
        self.parts = parts
        self._record = client.register_script(scripts.RECORD)
        self._commit = client.register_script(scripts.COMMIT)
        self._commit_whole = client.register_script(scripts.COMMIT_WHOLE)
        self._mark_sent = client.register_script(scripts.MARK_SENT)
        self._finish = client.register_script(scripts.FINISH)
        self._end = client.register_script(scripts.END)
        self._reserve = client.register_script(scripts.RESERVE)
        self._intake_done = client.register_script(scripts.INTAKE_DONE)
        self._request_end = client.register_script(scripts.REQUEST_END)
        self._drop_owner = client.register_script(scripts.DROP_OWNER)

    @classmethod
    def from_url(cls, url: str, job_ttl: int, parts: PartStore) -> "RedisJobStore":
        return cls(connections.client(url, decode_responses=True), job_ttl, parts)

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
            pipe.zadd(keys.status(JobStatus.VALIDATING.value), {job_id: now})
            pipe.zadd(keys.owner(owner), {job_id: now})
            pipe.expire(keys.owner(owner), self.job_ttl)
            pipe.zadd(keys.OWNERS, {owner: now})
            pipe.execute()
        return job_id

    def fields(self, job_id: str, *names: str) -> list[str | None]:
        return [None if v is None else str(v) for v in self.redis.hmget(JobKeys(job_id).job, list(names))]

    def owned_ids(self, owner: str, limit: int = 100, after: str | None = None) -> list[str]:
        """The owner's jobs still in the store, newest first; ``after`` pages on from a job id. Reads pages of the
        owner's index until ``limit`` ids are found, skipping jobs that have expired."""
        key = keys.owner(owner)
        rank = cast(int | None, self.redis.zrevrank(key, after)) if after is not None else None
        start = 0 if rank is None else rank + 1
        found: list[str] = []
        while len(found) < limit:
            page = [str(i) for i in self.redis.zrevrange(key, start, start + max(limit, 10) - 1)]
            if not page:
                break
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in page:
                    pipe.exists(JobKeys(job_id).job)
                found += [i for i, there in zip(page, pipe.execute(), strict=True) if there]
            start += len(page)
        return found[:limit]

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
            pipe.hlen(k.invalid)
            fields, n_invalid = pipe.execute()
        if not fields:
            raise NotFoundError(f"no job {job_id!r}")
        h: dict[str, str] = fields
        return JobView(
            id=job_id,
            status=JobStatus(h["status"]),
            spec=JobSpec.model_validate_json(h["spec"]),
            counts=Counts(
                total=int(h["total"]) if "total" in h else None,
                completed=int(h.get("n_results", 0)),
                failed=int(h.get("n_errors", 0)) + n_invalid,
                escalated=int(h.get("escalated", 0)),
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
            llm_cache_hits=int(h.get("llm_cache_hits", 0)),
        )

    def reserve_budget(self, job_id: str, chunk: int, costs: list[float], budget: float) -> int:
        args = _args(chunk=chunk, budget=budget, costs=costs)
        return cast(int, self._reserve(keys=[JobKeys(job_id).job], args=[args]))

    def status_counts(self) -> dict[JobStatus, int]:
        """How many jobs of each status the store holds: one count per status from the status index (jobs older
        than the TTL are left out, trimmed or not), whatever the number of jobs."""
        cutoff = f"({time.time() - self.job_ttl!r}"
        with self.redis.pipeline(transaction=False) as pipe:
            for status in JobStatus:
                pipe.zcount(keys.status(status.value), cutoff, "+inf")
            return {s: int(n) for s, n in zip(JobStatus, pipe.execute(), strict=True)}

    def add_seconds(self, job_id: str, tier: str, seconds: float) -> None:
        self.redis.hincrbyfloat(JobKeys(job_id).job, f"{tier}_seconds", seconds)

    # --- intake -------------------------------------------------------------------------------------------

    def put_chunk(self, job_id: str, index: int, items: Sequence[Item]) -> None:
        """Stored as columns (``ItemColumns``): a worker reads thousands of items without one object each."""
        k = JobKeys(job_id)
        with self.redis.pipeline() as pipe:
            pipe.set(k.chunk(index), ItemColumns.of(items).dump_json(), ex=self.job_ttl)
            pipe.hsetnx(k.job, f"left:{index}", len(items))  # stored again by an intake delivered twice: the same
            pipe.execute()

    def chunk(self, job_id: str, index: int) -> ItemColumns:
        raw = self.redis.get(JobKeys(job_id).chunk(index))
        if raw is None:
            return ItemColumns.of([])
        if raw.startswith(b"[") if isinstance(raw, bytes) else raw.startswith("["):  # stored before an upgrade
            return ItemColumns.of(_ITEMS.validate_json(raw))
        return ItemColumns.load_json(raw)

    def chunk_count(self, job_id: str) -> int:
        return int(self.redis.hget(JobKeys(job_id).job, "chunks") or 0)

    def chunks_done(self, job_id: str) -> int:
        """The chunks committed to the result store (a chunk the result store refused stays in Redis, not done)."""
        return int(self.redis.hlen(JobKeys(job_id).parts))

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

    def chunks_sent(self, job_id: str) -> int:
        return int(self.redis.hget(JobKeys(job_id).job, "chunks_sent") or 0)

    def chunk_sent(self, job_id: str, index: int, lines_read: int) -> None:
        progress: dict[_Value, _Value] = {"chunks_sent": index + 1, "lines_read": lines_read}
        progress["progress_at"] = time.time()
        self.redis.hset(JobKeys(job_id).job, mapping=progress)

    def finish_intake(self, job_id: str, total: int, chunks: int) -> IntakeOutcome:
        k = JobKeys(job_id)
        names, index = _indexed(job_id, k.job)
        args = _args(total=total, chunks=chunks, now=repr(time.time()), **index)
        outcome = IntakeOutcome(str(self._intake_done(keys=names, args=[args])))
        if outcome is IntakeOutcome.STARTED:
            self._try_finish(job_id)
        return outcome

    # --- records ------------------------------------------------------------------------------------------

    def mark_sent(self, job_id: str, chunk: int, escalated: Sequence[str], explored: Sequence[str] = ()) -> set[str]:
        args = _args(chunk=chunk, escalated=len(escalated), explored=len(explored))
        counted = self._mark_sent(keys=[JobKeys(job_id).job], args=[args])
        return {*escalated, *explored} if counted else set()

    def unrecorded(self, job_id: str, chunk: int, custom_ids: Sequence[str]) -> list[str]:
        if not custom_ids:
            return []
        k = JobKeys(job_id)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hexists(k.parts, str(chunk))
            pipe.hmget(k.results, list(custom_ids))
            pipe.hmget(k.errors, list(custom_ids))
            committed, results, errors = pipe.execute()
        if committed:
            return []
        return [c for c, r, e in zip(custom_ids, results, errors, strict=True) if r is None and e is None]

    def record(
        self,
        job_id: str,
        chunk: int,
        results: Sequence[ItemResult] = (),
        errors: Sequence[ItemError] = (),
        whole: bool = False,
    ) -> Recorded:
        # No texts to keep (no LLM answer, as in a chunk's specialist answers): straight to a part.
        if whole and (isinstance(results, SpecialistAnswers) or not any(r.llm_label is not None for r in results)):
            committed = self._write_whole(job_id, chunk, results, errors)
            if committed is not None:
                return committed
        records = [_record(r) for r in results] + [_record(e) for e in errors]
        if not records:
            return Recorded([], [], finished=False)
        k = JobKeys(job_id)
        args = _args(now=repr(time.time()), chunk=chunk, records=records)
        left, *added = cast(list[int], self._record(keys=[k.job, k.results, k.errors, k.parts], args=[args]))
        positions = {int(p) - 1 for p in added}
        with self.redis.pipeline() as pipe:
            pipe.expire(k.results, self.job_ttl)
            pipe.expire(k.errors, self.job_ttl)
            pipe.execute()
        if left == 0 and positions:
            self._commit_quietly(job_id, chunk)
        n = len(results)
        return Recorded(
            results=[r for i, r in enumerate(results) if i in positions],
            errors=[e for i, e in enumerate(errors) if i + n in positions],
            finished=self._try_finish(job_id),
        )

    def _write_whole(
        self, job_id: str, chunk: int, results: Sequence[ItemResult], errors: Sequence[ItemError]
    ) -> Recorded | None:
        """The records of a whole chunk, none in Redis yet, written to a part and committed in one step; None when
        the chunk has records in Redis already (or the result store fails): they go one by one instead."""
        k = JobKeys(job_id)
        try:
            part = self.parts.write(job_id, chunk, results, errors, {})
        except StorageError as e:
            log.warning("chunk %d of job %s goes to Redis: %s", chunk, job_id, e)
            return None
        bumps: Counter[str] = Counter()
        for result, n in grouped(results):  # records that count alike, counted once each
            bumps.update({name: value * n for name, value in _bumps(result).items()})
        for error in errors:
            bumps.update(_bumps(error))
        size = len(results) + len(errors)
        part_json, now = self.parts.record(job_id, part), repr(time.time())
        args = _args(chunk=chunk, part=part_json, size=size, bumps=bumps, now=now, ttl=self.job_ttl, done=_done(chunk))
        outcome = int(self._commit_whole(keys=[k.job, k.parts, k.chunk(chunk)], args=[args]))
        if outcome != 1:
            self.parts.discard(part)
        if outcome == -1:
            return None
        if outcome == 0:
            return Recorded([], [], finished=False)
        return Recorded(results, list(errors), finished=self._try_finish(job_id))

    def _try_finish(self, job_id: str) -> bool:
        k = JobKeys(job_id)
        names, index = _indexed(job_id, k.job, k.invalid)
        if not self._finish(keys=names, args=[_args(now=repr(time.time()), **index)]):
            return False
        committed = {str(i) for i in self.redis.hkeys(k.parts)}
        for chunk in range(self.chunk_count(job_id)):  # a commit that failed or a worker that died before it
            if str(chunk) not in committed:
                self._commit_quietly(job_id, chunk)
        return True

    def _commit_quietly(self, job_id: str, chunk: int) -> None:
        """Commit, or leave the chunk's records in Redis (still served from there) when the result store fails."""
        try:
            self.commit(job_id, chunk)
        except StorageError as e:
            log.warning("chunk %d of job %s stays in Redis: %s", chunk, job_id, e)

    def commit(self, job_id: str, chunk: int) -> bool:
        """Write a chunk whose every item has its record to the result store and drop its records and items from
        Redis. False when it was committed already, or has items without a record (or none stored)."""
        k = JobKeys(job_id)
        items = self.chunk(job_id, chunk)
        if not items or self.redis.hexists(k.parts, str(chunk)):
            return False
        ids = items.custom_id
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(k.results, ids)
            pipe.hmget(k.errors, ids)
            raw_results, raw_errors = pipe.execute()
        if any(r is None and e is None for r, e in zip(raw_results, raw_errors, strict=True)):
            return False
        results = [ItemResult.model_validate_json(r) for r in raw_results if r is not None]
        errors = [ItemError.model_validate_json(e) for e in raw_errors if e is not None]
        text = dict(zip(items.custom_id, items.text, strict=True))
        texts = {r.custom_id: text[r.custom_id] for r in results if r.llm_label is not None}
        part = self.parts.write(job_id, chunk, results, errors, texts)
        args = _args(chunk=chunk, part=self.parts.record(job_id, part), ids=ids, ttl=self.job_ttl, done=_done(chunk))
        if self._commit(keys=[k.job, k.results, k.errors, k.parts, k.chunk(chunk)], args=[args]):
            return True
        self.parts.discard(part)
        return False

    def _chunks(self, job_id: str) -> Iterator[tuple[int, Part | None]]:
        """Each chunk of the job in order, with its commit record, or None while it is in flight (in Redis)."""
        raw = self.redis.hgetall(JobKeys(job_id).parts)
        committed = {int(i): self.parts.read_record(job_id, p) for i, p in raw.items()}
        for chunk in range(self.chunk_count(job_id)):
            yield chunk, committed.get(chunk)

    def _in_redis(self, job_id: str, chunk: int, key: str) -> list[str]:
        ids = self.chunk(job_id, chunk).custom_id
        return [str(r) for r in self.redis.hmget(key, ids) if r is not None] if ids else []

    def iter_results(self, job_id: str) -> Iterator[ItemResult]:
        """Chunk by chunk, in line order: a committed chunk from its part (checked against its checksum: a part
        missing or altered raises ``StorageError``), one in flight from Redis."""
        for chunk, part in self._chunks(job_id):
            if part is not None:
                yield from self.parts.results(part)
            else:
                raw = self._in_redis(job_id, chunk, JobKeys(job_id).results)
                yield from sorted((ItemResult.model_validate_json(r) for r in raw), key=lambda r: r.line)

    def iter_errors(self, job_id: str) -> Iterator[ItemError]:
        k = JobKeys(job_id)
        refused = [ItemError.model_validate_json(raw) for _, raw in self.redis.hscan_iter(k.invalid, count=1000)]
        yield from sorted(refused, key=lambda e: e.line)
        for chunk, part in self._chunks(job_id):
            if part is not None:
                yield from self.parts.errors(part)
            else:
                raw = self._in_redis(job_id, chunk, k.errors)
                yield from sorted((ItemError.model_validate_json(e) for e in raw), key=lambda e: e.line)

    def texts(self, job_id: str, custom_ids: Sequence[str]) -> dict[str, str]:
        wanted = set(custom_ids)
        found: dict[str, str] = {}
        for chunk, part in self._chunks(job_id):
            if part is not None:
                texts = self.parts.texts(part)
            else:
                items = self.chunk(job_id, chunk)
                texts = dict(zip(items.custom_id, items.text, strict=True))
            found.update((c, t) for c, t in texts.items() if c in wanted)
        return found

    # --- ending -------------------------------------------------------------------------------------------

    def request_end(self, job_id: str, final: JobStatus, only_if_due: bool = False, reason: str | None = None) -> bool:
        interim = INTERIM[final].value
        now = repr(time.time())
        names, index = _indexed(job_id, JobKeys(job_id).job)
        args = _args(interim=interim, final=final.value, now=now, only_if_due=only_if_due, reason=reason, **index)
        outcome = str(self._request_end(keys=names, args=[args]))
        if outcome == "missing":
            raise NotFoundError(f"no job {job_id!r}")
        return outcome == "sweep"

    def ending(self, job_id: str) -> JobStatus | None:
        status, ending = self.redis.hmget(JobKeys(job_id).job, ["status", "ending"])
        if status not in {s.value for s in INTERIM.values()} or ending is None:
            return None
        return JobStatus(str(ending))

    def end(self, job_id: str, status: JobStatus, error: str | None = None) -> bool:
        names, index = _indexed(job_id, JobKeys(job_id).job)
        args = _args(status=status.value, now=repr(time.time()), error=error, **index)
        changed = cast(int, self._end(keys=names, args=[args]))
        if changed == -1:
            raise NotFoundError(f"no job {job_id!r}")
        return bool(changed)

    # --- the reaper's view ---------------------------------------------------------------------------------

    def active_ids(self) -> list[str]:
        """Oldest first, read from the status index: the cost grows with the jobs that have not ended only."""
        cutoff = f"({time.time() - self.job_ttl!r}"
        with self.redis.pipeline(transaction=False) as pipe:
            for status in _ACTIVE:
                pipe.zrangebyscore(keys.status(status.value), cutoff, "+inf", withscores=True)
            found = sorted((float(t), str(i)) for page in pipe.execute() for i, t in page)
        ids = [i for _, i in found]
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

    # --- trimming ---------------------------------------------------------------------------------------------

    def trim(self, batch: int = TRIM_BATCH, max_batches: int = 100) -> int:
        """Drop from the indexes (``keys.JOBS``, the status index, the owners' sets) and from the result store the
        jobs whose keys have expired (older than the TTL, or their job hash gone), oldest first, ``batch`` ids per
        round trip and at most ``max_batches`` round trips (the next call goes on). Run by the reaper. Returns how
        many went."""
        cutoff = time.time() - self.job_ttl
        owners = [str(o) for o in self.redis.zrange(keys.OWNERS, 0, -1)]
        removed = 0
        for _ in range(max_batches):
            page = cast(list[tuple[str, float]], self.redis.zrange(keys.JOBS, 0, batch - 1, withscores=True))
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id, _ in page:
                    pipe.exists(JobKeys(str(job_id)).job)
                there = pipe.execute()
            gone = [str(i) for (i, score), alive in zip(page, there, strict=True) if not alive or score < cutoff]
            if gone:
                with self.redis.pipeline(transaction=False) as pipe:
                    for key in (keys.JOBS, *_STATUS_KEYS, *(keys.owner(o) for o in owners)):
                        pipe.zrem(key, *gone)
                    pipe.execute()
            for job_id in gone:
                self._delete_parts(job_id)
            removed += len(gone)
            if len(gone) < batch:  # a job still alive, or the index's end: the rest is newer
                break
        self._trim_owners(owners, cutoff, batch)
        return removed

    def _delete_parts(self, job_id: str) -> None:
        try:
            self.parts.delete_job(job_id)
        except Exception as e:  # the store unreachable: the next trim does not see the job again; say so
            log.warning("the result parts of expired job %s were not deleted: %s", job_id, e)

    def _trim_owners(self, owners: list[str], cutoff: float, batch: int) -> None:
        """The owners' sets by age (an id whose job expired early went with ``trim``'s pages), then the owners
        without a job left."""
        for owner in owners:
            key = keys.owner(owner)
            while old := self.redis.zrangebyscore(key, "-inf", f"({cutoff!r}", start=0, num=batch):
                self.redis.zrem(key, *old)
            self._drop_owner(keys=[keys.OWNERS, key], args=[_args(owner=owner)])
