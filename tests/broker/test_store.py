"""The Redis store keeps the ``JobStore`` contract, against the real Redis (the tests' own database)."""

import pytest
import redis

from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.storage import JobStore
from tests.workers.store_contract import StoreContract


class TestRedisStore(StoreContract):
    @pytest.fixture
    def store(self, settings: Settings, redis_db: redis.Redis) -> JobStore:
        return RedisJobStore(redis_db, settings.job_ttl)


def test_every_key_of_a_job_expires(settings: Settings, redis_db: redis.Redis) -> None:
    from tests.workers.store_contract import SPEC, error, items, result

    store = RedisJobStore(redis_db, job_ttl=120)
    job = store.create(SPEC, owner="team-a")
    store.put_chunk(job, 0, items(3))
    store.claim_ids(job, items(3))
    store.put_invalid(job, [error(None, 4)])
    store.finish_intake(job, total=4, chunks=1)
    store.mark_sent(job, ["c0"], ["c1"])
    store.record(job, results=[result("c2", 3)], errors=[error("c0", 1)])
    job_keys = [k for k in redis_db.scan_iter("cascade:*") if job in str(k) or str(k).endswith(":team-a")]
    assert len(job_keys) >= 8
    assert all(0 < int(redis_db.ttl(k)) <= 120 for k in job_keys), {k: redis_db.ttl(k) for k in job_keys}
