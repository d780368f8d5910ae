"""The Redis store keeps the ``JobStore`` contract, against the real Redis (the tests' own database), and its
indexes do not outgrow the jobs they hold."""

import time

import pytest
import redis

from cascade.broker import keys
from cascade.broker.keys import JobKeys
from cascade.broker.results import open_parts
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.jobs import JobStatus
from cascade.workers.storage import JobStore, chunk_task
from tests.workers.store_contract import SPEC, StoreContract, error, items, result, running_job


class TestRedisStore(StoreContract):
    @pytest.fixture
    def store(self, settings: Settings, redis_db: redis.Redis) -> JobStore:
        return RedisJobStore(redis_db, settings.job_ttl, open_parts(settings))


def test_every_key_of_a_job_expires(settings: Settings, redis_db: redis.Redis) -> None:
    store = RedisJobStore(redis_db, job_ttl=120, parts=open_parts(settings))
    job = store.create(SPEC, owner="team-a")
    store.put_chunk(job, 0, items(3))
    store.put_invalid(job, [error(None, 4)])
    store.finish_intake(job, total=4, chunks=1)
    store.mark_sent(job, 0, ["c0"], ["c1"])
    store.record(job, 0, results=[result("c2", 3)], errors=[error("c0", 1)])
    job_keys = [k for k in redis_db.scan_iter("cascade:*") if job in str(k) or str(k).endswith(":team-a")]
    assert len(job_keys) >= 6  # the job, its chunk, results, errors, refusals, and its owner's set
    assert all(0 < int(redis_db.ttl(k)) <= 120 for k in job_keys), {k: redis_db.ttl(k) for k in job_keys}
    assert store.record(job, 0, results=[result("c1", 2)]).finished  # the chunk is committed: its commit record
    assert 0 < int(redis_db.ttl(JobKeys(job).parts)) <= 120


def test_jobs_are_counted_by_status_from_the_index(store: RedisJobStore) -> None:
    validating = store.create(SPEC)
    done = running_job(store, 1)
    store.record(done, 0, results=[result("c0", 1)])
    cancelling = running_job(store, 1)
    store.request_end(cancelling, JobStatus.CANCELLED)
    failed = running_job(store, 1)
    store.end(failed, JobStatus.FAILED)
    running = running_job(store, 2)
    counts = store.status_counts()
    assert {s: n for s, n in counts.items() if n} == {
        JobStatus.VALIDATING: 1,
        JobStatus.COMPLETED: 1,
        JobStatus.CANCELLING: 1,
        JobStatus.FAILED: 1,
        JobStatus.IN_PROGRESS: 1,
    }
    assert set(counts) == set(JobStatus)
    assert store.active_ids() == [validating, cancelling, running]  # oldest first, the ended ones left out
    store.end(cancelling, JobStatus.CANCELLED)
    assert store.status_counts()[JobStatus.CANCELLING] == 0
    assert store.status_counts()[JobStatus.CANCELLED] == 1


def _index_members(client: redis.Redis, owner: str) -> set[str]:
    names = [keys.JOBS, keys.owner(owner), *(keys.status(s.value) for s in JobStatus)]
    return {str(m) for name in names for m in client.zrange(name, 0, -1)}


def test_expired_jobs_leave_every_index(settings: Settings, redis_db: redis.Redis) -> None:
    """Real expiry: a store whose jobs live one second."""
    short = RedisJobStore(redis_db, job_ttl=1, parts=open_parts(settings))
    old = [short.create(SPEC, owner="team-a") for _ in range(7)]
    short.end(old[0], JobStatus.CANCELLED)
    time.sleep(1.2)
    assert sum(short.status_counts().values()) == 0  # counts leave out jobs past the TTL, before any trim
    store = RedisJobStore(redis_db, job_ttl=60, parts=open_parts(settings))
    kept = store.create(SPEC, owner="team-a")
    assert store.active_ids() == [kept]  # the ids whose job is gone are skipped
    assert store.trim(batch=3) == 7  # three round trips of three
    assert store.status_counts()[JobStatus.VALIDATING] == 1
    assert _index_members(redis_db, "team-a") == {kept}
    assert [str(o) for o in redis_db.zrange(keys.OWNERS, 0, -1)] == ["team-a"]
    assert store.trim() == 0


def test_a_job_whose_keys_are_gone_leaves_the_indexes_and_the_trim_is_bounded(
    store: RedisJobStore, redis_db: redis.Redis
) -> None:
    ids = [store.create(SPEC, owner="team-b") for _ in range(10)]
    for job in ids[:6]:
        redis_db.delete(JobKeys(job).job)  # as if it had expired (e.g. created under a shorter TTL)
    assert store.trim(batch=2, max_batches=2) == 4  # at most two round trips of two: the next look goes on
    assert store.trim(batch=2) == 2
    assert _index_members(redis_db, "team-b") == set(ids[6:])


def test_an_owner_without_jobs_left_leaves_the_owners(settings: Settings, redis_db: redis.Redis) -> None:
    RedisJobStore(redis_db, job_ttl=1, parts=open_parts(settings)).create(SPEC, owner="gone")
    time.sleep(1.2)
    RedisJobStore(redis_db, job_ttl=60, parts=open_parts(settings)).trim()
    assert redis_db.zcard(keys.OWNERS) == 0
    assert not redis_db.exists(keys.owner("gone"))


def test_owned_ids_page_over_expired_jobs(store: RedisJobStore, redis_db: redis.Redis) -> None:
    ids = [store.create(SPEC, owner="team-a") for _ in range(30)]
    newest_first = ids[::-1]
    for job in newest_first[1:25]:
        redis_db.delete(JobKeys(job).job)
    kept = [newest_first[0], *newest_first[25:]]
    assert store.owned_ids("team-a", limit=3) == kept[:3]
    assert store.owned_ids("team-a", limit=3, after=kept[0]) == kept[1:4]
    assert store.owned_ids("team-a", limit=10, after=kept[4]) == kept[5:]
    assert store.owned_ids("team-c") == []


@pytest.mark.parametrize("whole", [True, False])
def test_a_committed_chunk_leaves_nothing_of_its_own_in_the_jobs_hash(
    store: RedisJobStore, redis_db: redis.Redis, whole: bool
) -> None:
    job = store.create(SPEC)
    for chunk in (0, 1):
        store.put_chunk(job, chunk, items(2, start=2 * chunk))
    store.finish_intake(job, total=4, chunks=2)
    for chunk in (0, 1):  # what a chunk's tasks note while it runs: deliveries, its items sent to the LLM
        store.count_delivery(job, chunk_task("specialist", chunk))
        store.count_delivery(job, chunk_task("llm", chunk))
        store.mark_sent(job, chunk, [f"c{2 * chunk}"])
    store.record(job, 0, results=[result("c0", 1), result("c1", 2)], whole=whole)
    fields = {str(f) for f in redis_db.hkeys(JobKeys(job).job)}
    assert not {f for f in fields if f.endswith(":0")}, "chunk 0 is committed"
    assert {"left:1", "sent:1", "deliveries:specialist:1", "deliveries:llm:1"} <= fields  # chunk 1 is in flight
    counts = store.get(job).counts
    assert (counts.completed, counts.escalated) == (2, 2)  # the job's counts stay
