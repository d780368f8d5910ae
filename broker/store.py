"""The job store in Redis: jobs, their chunks of items, and one record per input line.

Every write of a record is idempotent and keyed by job and ``custom_id``: the first record written for an item
wins, and an item is never in both the results and the errors. A chunk that runs twice changes nothing.
"""

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis
from pydantic import TypeAdapter

from broker.exceptions import JobError, NotFoundError
from broker.jobs import Counts, Item, ItemError, ItemResult, JobSpec, JobStatus, JobView

# Key layout. Every key of a job starts with its job key, and expires ``job_ttl`` seconds after creation.
JOBS_KEY = "cascade:jobs"  # sorted set: job id -> creation time
OWNER_PREFIX = "cascade:owner:"  # sorted set: the job ids of one API caller -> creation time
JOB_PREFIX = "cascade:job:"  # hash: spec, status, total, timings and per-tier counters of one job
CHUNK_SUFFIX = ":chunk:"  # string: JSON list of the items of one chunk, until the job ends
RESULTS_SUFFIX = ":results"  # hash: custom_id -> ItemResult JSON
ERRORS_SUFFIX = ":errors"  # hash: custom_id -> ItemError JSON, for valid items that failed
INVALID_SUFFIX = ":invalid"  # hash: line number -> ItemError JSON, for lines refused at intake
ESCALATED_SUFFIX = ":escalated"  # set: custom_ids sent to the LLM for its answer
EXPLORED_SUFFIX = ":explored"  # set: custom_ids sent to the LLM to measure it (the specialist's answer stays)
IDS_SUFFIX = ":ids"  # hash: custom_id -> line number of its first valid line, to refuse duplicates, until it ends

# KEYS: job, results, errors. ARGV[1]: a JSON list of [kind 'r'|'e', custom_id, tier, correct 1|0|-1,
# llm_error 1|0, record JSON, specialist's answer correct 1|0|-1, route]. Writes a record only for an item that has
# none yet, and counts it once per tier. Returns the (1-based) positions of the records that were new.
_RECORD = """
local added = {}
local counts = {}
local function bump(field, n) counts[field] = (counts[field] or 0) + n end
for pos, rec in ipairs(cjson.decode(ARGV[1])) do
  local id = rec[2]
  if redis.call('HEXISTS', KEYS[3], id) == 0 then
    if rec[1] == 'r' then
      if redis.call('HSETNX', KEYS[2], id, rec[6]) == 1 then
        table.insert(added, pos)
        bump('answered:' .. rec[3], 1)
        if rec[4] ~= -1 then
          bump('labelled:' .. rec[3], 1)
          bump('correct:' .. rec[3], rec[4])
          bump('specialist_correct:' .. rec[3], rec[7])
        end
        bump('llm_errors', rec[5])
        bump('route:' .. rec[8], 1)
        bump('llm_tokens', rec[9])
        if rec[9] > 0 then bump('llm_requests', 1) end
      end
    elseif redis.call('HEXISTS', KEYS[2], id) == 0 then
      redis.call('HSET', KEYS[3], id, rec[6])
      table.insert(added, pos)
    end
  end
end
for field, n in pairs(counts) do
  if n ~= 0 then redis.call('HINCRBY', KEYS[1], field, n) end
end
return added
"""

# KEYS: job, results, errors, invalid. ARGV: now. Completes a running job whose every line has its record.
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'in_progress' then return 0 end
local total = redis.call('HGET', KEYS[1], 'total')
if not total then return 0 end
local done = redis.call('HLEN', KEYS[2]) + redis.call('HLEN', KEYS[3]) + redis.call('HLEN', KEYS[4])
if done < tonumber(total) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'completed', 'finished_at', ARGV[1])
return 1
"""

# KEYS: job. ARGV: chunk index, budget, then the costs of its escalations, best first. Takes as many as fit in
# what is left of the budget; a chunk that runs again gets the same answer and spends nothing more.
_RESERVE = """
local field = 'budget_chunk:' .. ARGV[1]
local before = redis.call('HGET', KEYS[1], field)
if before then return tonumber(before) end
local spent = tonumber(redis.call('HGET', KEYS[1], 'budget_spent') or '0')
local budget = tonumber(ARGV[2])
local taken, cost = 0, 0
for i = 3, #ARGV do
  local c = tonumber(ARGV[i])
  if spent + cost + c > budget then break end
  cost = cost + c
  taken = taken + 1
end
redis.call('HINCRBYFLOAT', KEYS[1], 'budget_spent', cost)
redis.call('HSET', KEYS[1], field, taken)
return taken
"""

# KEYS: job. ARGV: new status, now. Moves a job that is not yet final to a final status.
_END = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'completed' or status == 'failed' or status == 'cancelled' or status == 'expired' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2])
return 1
"""

# KEYS: job. ARGV: total lines, chunks, now. The intake has read the whole input. Returns 'started' (the job
# runs), 'empty' (no valid line), 'sweep' (the job was asked to end while its input was read: its sweep is due
# now) or 'ended'.
_INTAKE_DONE = """
redis.call('HSET', KEYS[1], 'total', ARGV[1], 'chunks', ARGV[2])
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'validating' then
  if tonumber(ARGV[2]) == 0 then return 'empty' end
  redis.call('HSET', KEYS[1], 'status', 'in_progress')
  redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
  return 'started'
end
if status == 'cancelling' or status == 'finalizing' then return 'sweep' end
return 'ended'
"""

# KEYS: job. ARGV: interim status (cancelling, finalizing), final status (cancelled, expired), now, 1 to act only
# when the job's expires_at has passed. Asks a running job to end early. Returns 'sweep' (its input is read: sweep
# now), 'later' (the intake will ask for the sweep when it has read the input) or 'no' (nothing to do).
_REQUEST_END = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'validating' and status ~= 'in_progress' then return 'no' end
if ARGV[4] == '1' then
  local expires = redis.call('HGET', KEYS[1], 'expires_at')
  if not expires or tonumber(expires) > tonumber(ARGV[3]) then return 'no' end
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'ending', ARGV[2], ARGV[1] .. '_at', ARGV[3])
if redis.call('HEXISTS', KEYS[1], 'total') == 1 then return 'sweep' end
return 'later'
"""


# KEYS: ids. ARGV: ttl, a JSON list of [custom_id, line] (one argument: redis-py packs many slowly). Claims each
# custom_id for its line unless an earlier line has it; returns the (1-based) positions of the duplicates. Reading
# the same lines again gives the same answer.
_CLAIM = """
local duplicates = {}
for pos, item in ipairs(cjson.decode(ARGV[2])) do
  local id, line = item[1], tostring(item[2])
  if redis.call('HSETNX', KEYS[1], id, line) == 0 and redis.call('HGET', KEYS[1], id) ~= line then
    table.insert(duplicates, pos)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return duplicates
"""

_ITEMS = TypeAdapter(list[Item])
if TYPE_CHECKING:
    _Value = bytes | bytearray | memoryview[int] | str | int | float  # what redis-py's typing accepts in a mapping


@dataclass(frozen=True)
class Recorded:
    """What one ``record`` call wrote: only records new in the store (a chunk that runs again writes none)."""

    results: list[ItemResult]
    errors: list[ItemError]
    finished: bool
    """This call ended the job (true for exactly one call per job)."""


@dataclass(frozen=True)
class TierStats:
    """What one tier answered; ``specialist_correct`` counts the specialist's own answers on those same items."""

    answered: int
    labelled: int
    correct: int
    specialist_correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


class JobStore:
    """Jobs and their records in one Redis database."""

    def __init__(self, client: redis.Redis, job_ttl: int) -> None:
        self.redis = client
        self.job_ttl = job_ttl
        self._record = client.register_script(_RECORD)
        self._finish = client.register_script(_FINISH)
        self._end = client.register_script(_END)
        self._reserve = client.register_script(_RESERVE)
        self._intake_done = client.register_script(_INTAKE_DONE)
        self._request_end = client.register_script(_REQUEST_END)
        self._claim = client.register_script(_CLAIM)

    @classmethod
    def from_url(cls, url: str, job_ttl: int) -> "JobStore":
        return cls(redis.Redis.from_url(url, decode_responses=True), job_ttl)

    # --- jobs ---------------------------------------------------------------------------------------------

    def create(
        self, spec: JobSpec, owner: str = "", extra: dict[str, str] | None = None, window: float | None = None
    ) -> str:
        """A new job, validating. ``owner`` scopes who may see it (the API's caller); ``extra`` is kept as is;
        ``window``: seconds after which the job expires if it has not ended (its completion window)."""
        job_id = "batch_" + uuid.uuid4().hex
        now = time.time()
        key = JOB_PREFIX + job_id
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
            pipe.zadd(JOBS_KEY, {job_id: now})
            pipe.zadd(OWNER_PREFIX + owner, {job_id: now})
            pipe.expire(OWNER_PREFIX + owner, self.job_ttl)
            pipe.execute()
        return job_id

    def fields(self, job_id: str, *names: str) -> list[str | None]:
        return [None if v is None else str(v) for v in self.redis.hmget(JOB_PREFIX + job_id, list(names))]

    def owned_ids(self, owner: str, limit: int = 100, after: str | None = None) -> list[str]:
        """The owner's jobs, newest first; ``after`` pages on from a job id."""
        ids = [str(v) for v in self.redis.zrevrange(OWNER_PREFIX + owner, 0, -1)]
        if after is not None and after in ids:
            ids = ids[ids.index(after) + 1 :]
        return [i for i in ids if self.redis.exists(JOB_PREFIX + i)][:limit]

    def spec(self, job_id: str) -> JobSpec:
        raw = self.redis.hget(JOB_PREFIX + job_id, "spec")
        if raw is None:
            raise NotFoundError(f"no job {job_id!r}")
        return JobSpec.model_validate_json(raw)

    def status(self, job_id: str) -> JobStatus:
        raw = self.redis.hget(JOB_PREFIX + job_id, "status")
        if raw is None:
            raise NotFoundError(f"no job {job_id!r}")
        return JobStatus(str(raw))

    def get(self, job_id: str) -> JobView:
        key = JOB_PREFIX + job_id
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.hlen(key + RESULTS_SUFFIX)
            pipe.hlen(key + ERRORS_SUFFIX)
            pipe.hlen(key + INVALID_SUFFIX)
            pipe.scard(key + ESCALATED_SUFFIX)
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

    def tier_stats(self, job_id: str) -> dict[str, TierStats]:
        h = {
            str(k): int(v)
            for k, v in self.redis.hgetall(JOB_PREFIX + job_id).items()
            if str(k).startswith(("answered:", "labelled:", "correct:", "specialist_correct:"))
        }
        tiers = {k.split(":", 1)[1] for k in h}
        return {
            t: TierStats(
                answered=h.get(f"answered:{t}", 0),
                labelled=h.get(f"labelled:{t}", 0),
                correct=h.get(f"correct:{t}", 0),
                specialist_correct=h.get(f"specialist_correct:{t}", 0),
            )
            for t in sorted(tiers)
        }

    def llm_errors(self, job_id: str) -> int:
        return int(self.redis.hget(JOB_PREFIX + job_id, "llm_errors") or 0)

    def llm_usage(self, job_id: str) -> tuple[int, int]:
        """LLM tokens (prompt + completion) and answered requests recorded for the job."""
        tokens, requests = self.redis.hmget(JOB_PREFIX + job_id, ["llm_tokens", "llm_requests"])
        return int(tokens or 0), int(requests or 0)

    def routes(self, job_id: str) -> dict[str, int]:
        """Answered items by the rule's decision (accept, escalate, explore, abstain)."""
        h = self.redis.hgetall(JOB_PREFIX + job_id)
        return {str(k).split(":", 1)[1]: int(v) for k, v in h.items() if str(k).startswith("route:")}

    def reserve_budget(self, job_id: str, chunk: int, costs: list[float], budget: float) -> int:
        """How many of ``costs`` (in order) fit in what is left of the job's budget; reserved once per chunk."""
        key = JOB_PREFIX + job_id
        return cast(int, self._reserve(keys=[key], args=[str(chunk), str(budget), *map(repr, costs)]))

    def statuses(self) -> list[JobStatus]:
        """The status of every job still in the store."""
        ids = self.redis.zrange(JOBS_KEY, 0, -1)
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(JOB_PREFIX + str(job_id), "status")
            return [JobStatus(s) for s in pipe.execute() if s is not None]

    def list_ids(self, limit: int = 20) -> list[str]:
        return [str(v) for v in self.redis.zrevrange(JOBS_KEY, 0, limit - 1)]

    def add_seconds(self, job_id: str, tier: str, seconds: float) -> None:
        self.redis.hincrbyfloat(JOB_PREFIX + job_id, f"{tier}_seconds", seconds)

    # --- intake -------------------------------------------------------------------------------------------

    def put_chunk(self, job_id: str, index: int, items: Sequence[Item]) -> None:
        payload = _ITEMS.dump_json(list(items))
        self.redis.set(JOB_PREFIX + job_id + CHUNK_SUFFIX + str(index), payload, ex=self.job_ttl)

    def chunk(self, job_id: str, index: int) -> list[Item]:
        raw = self.redis.get(JOB_PREFIX + job_id + CHUNK_SUFFIX + str(index))
        if raw is None:
            return []
        return _ITEMS.validate_json(raw)

    def put_invalid(self, job_id: str, errors: Sequence[ItemError]) -> None:
        if not errors:
            return
        key = JOB_PREFIX + job_id + INVALID_SUFFIX
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={str(e.line): e.model_dump_json() for e in errors})
            pipe.expire(key, self.job_ttl)
            pipe.execute()

    def claim_ids(self, job_id: str, items: Sequence[Item]) -> list[bool]:
        """For each item, whether its ``custom_id`` is its own (first seen on this line) or a duplicate. Kept in
        Redis, not in the reading process's memory; reading the same input again gives the same answers."""
        if not items:
            return []
        claims = json.dumps([[item.custom_id, item.line] for item in items])
        key = JOB_PREFIX + job_id + IDS_SUFFIX
        duplicates = cast(list[int], self._claim(keys=[key], args=[self.job_ttl, claims]))
        taken = {int(i) - 1 for i in duplicates}
        return [i not in taken for i in range(len(items))]

    def chunks_sent(self, job_id: str) -> int:
        """How many chunks the intake has already stored and enqueued (an intake that runs again skips them)."""
        return int(self.redis.hget(JOB_PREFIX + job_id, "chunks_sent") or 0)

    def chunk_sent(self, job_id: str, index: int) -> None:
        self.redis.hset(JOB_PREFIX + job_id, "chunks_sent", index + 1)

    def finish_intake(self, job_id: str, total: int, chunks: int) -> bool:
        """Record how many lines the job has; a job with no valid line fails here. True when the job was asked to
        end while its input was read, and its sweep is now due."""
        outcome = str(self._intake_done(keys=[JOB_PREFIX + job_id], args=[total, chunks, repr(time.time())]))
        if outcome == "empty":
            self.end(job_id, JobStatus.FAILED, error="the input has no valid line")
        elif outcome == "started":
            self.try_finish(job_id)
        return outcome == "sweep"

    def request_end(self, job_id: str, final: JobStatus, only_if_due: bool = False) -> bool:
        """Ask a running job to end early: cancelled (through cancelling) or expired (through finalizing), and
        with ``only_if_due`` only if its completion window has passed. True when its sweep is due now; else
        nothing was to be done or the intake will ask for the sweep when the input is read."""
        interim = {JobStatus.CANCELLED: JobStatus.CANCELLING, JobStatus.EXPIRED: JobStatus.FINALIZING}[final]
        args = [interim.value, final.value, repr(time.time()), int(only_if_due)]
        outcome = str(self._request_end(keys=[JOB_PREFIX + job_id], args=args))
        if outcome == "missing":
            raise NotFoundError(f"no job {job_id!r}")
        return outcome == "sweep"

    def ending(self, job_id: str) -> JobStatus | None:
        """The final status a job that is ending early is headed for; None for a job that is not ending."""
        status, ending = self.redis.hmget(JOB_PREFIX + job_id, ["status", "ending"])
        if status not in {JobStatus.CANCELLING.value, JobStatus.FINALIZING.value} or ending is None:
            return None
        return JobStatus(str(ending))

    def chunk_count(self, job_id: str) -> int:
        return int(self.redis.hget(JOB_PREFIX + job_id, "chunks") or 0)

    # --- records ------------------------------------------------------------------------------------------

    def mark_sent(self, job_id: str, escalated: Sequence[str], explored: Sequence[str] = ()) -> set[str]:
        """Remember which items went to the LLM; returns those not marked before (a chunk may run twice)."""
        new: set[str] = set()
        for suffix, ids in ((ESCALATED_SUFFIX, escalated), (EXPLORED_SUFFIX, explored)):
            if not ids:
                continue
            key = JOB_PREFIX + job_id + suffix
            with self.redis.pipeline(transaction=False) as pipe:
                for cid in ids:
                    pipe.sadd(key, cid)
                pipe.expire(key, self.job_ttl)
                added = pipe.execute()[:-1]
            new |= {cid for cid, a in zip(ids, added, strict=True) if a}
        return new

    def invalid_count(self, job_id: str) -> int:
        return int(self.redis.hlen(JOB_PREFIX + job_id + INVALID_SUFFIX))

    def unrecorded(self, job_id: str, custom_ids: Sequence[str]) -> list[str]:
        """The ids among ``custom_ids`` that have neither a result nor an error yet."""
        if not custom_ids:
            return []
        key = JOB_PREFIX + job_id
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(key + RESULTS_SUFFIX, list(custom_ids))
            pipe.hmget(key + ERRORS_SUFFIX, list(custom_ids))
            results, errors = pipe.execute()
        return [c for c, r, e in zip(custom_ids, results, errors, strict=True) if r is None and e is None]

    def record(self, job_id: str, results: Sequence[ItemResult] = (), errors: Sequence[ItemError] = ()) -> Recorded:
        """Write the records of items that have none yet; returns the new ones. Then ends the job if done."""
        records: list[list[object]] = [
            [
                "r",
                r.custom_id,
                r.tier.value,
                -1 if r.correct is None else int(r.correct),
                int(bool(r.llm_error)),
                r.model_dump_json(),
                -1 if r.gold is None else int(r.specialist_label == r.gold),
                r.route.value,
                (r.llm_prompt_tokens or 0) + (r.llm_completion_tokens or 0),
            ]
            for r in results
        ]
        for e in errors:
            if e.custom_id is None:
                raise ValueError("an item error needs its custom_id")
            records.append(["e", e.custom_id, "", -1, 0, e.model_dump_json(), -1, "", 0])
        if not records:
            return Recorded([], [], finished=False)
        key = JOB_PREFIX + job_id
        keys = [key, key + RESULTS_SUFFIX, key + ERRORS_SUFFIX]
        positions = {int(p) - 1 for p in cast(list[int], self._record(keys=keys, args=[json.dumps(records)]))}
        with self.redis.pipeline() as pipe:
            pipe.expire(key + RESULTS_SUFFIX, self.job_ttl)
            pipe.expire(key + ERRORS_SUFFIX, self.job_ttl)
            pipe.execute()
        n = len(results)
        return Recorded(
            results=[r for i, r in enumerate(results) if i in positions],
            errors=[e for i, e in enumerate(errors) if i + n in positions],
            finished=self.try_finish(job_id),
        )

    def try_finish(self, job_id: str) -> bool:
        key = JOB_PREFIX + job_id
        keys = [key, key + RESULTS_SUFFIX, key + ERRORS_SUFFIX, key + INVALID_SUFFIX]
        if not self._finish(keys=keys, args=[repr(time.time())]):
            return False
        self._drop_chunks(job_id)
        return True

    def end(self, job_id: str, status: JobStatus, error: str | None = None) -> bool:
        """Move a job to a final status (failed, cancelled, expired); False when it had already ended."""
        key = JOB_PREFIX + job_id
        changed = cast(int, self._end(keys=[key], args=[status.value, repr(time.time())]))
        if changed == -1:
            raise NotFoundError(f"no job {job_id!r}")
        if changed and error:
            self.redis.hset(key, "error", error)
        if changed:
            self._drop_chunks(job_id)
        return bool(changed)

    def _drop_chunks(self, job_id: str) -> None:
        key = JOB_PREFIX + job_id
        chunks = int(self.redis.hget(key, "chunks") or 0)
        self.redis.delete(key + IDS_SUFFIX, *(key + CHUNK_SUFFIX + str(i) for i in range(chunks)))

    # --- export -------------------------------------------------------------------------------------------

    def iter_results(self, job_id: str) -> Iterator[dict[str, Any]]:
        for _, raw in self.redis.hscan_iter(JOB_PREFIX + job_id + RESULTS_SUFFIX, count=1000):
            yield json.loads(raw)

    def iter_errors(self, job_id: str) -> Iterator[dict[str, Any]]:
        key = JOB_PREFIX + job_id
        for suffix in (INVALID_SUFFIX, ERRORS_SUFFIX):
            for _, raw in self.redis.hscan_iter(key + suffix, count=1000):
                yield json.loads(raw)
