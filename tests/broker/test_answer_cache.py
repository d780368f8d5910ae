"""The answer cache in the real Redis (the tests' own database): the contract, its TTL, its size bound."""

import time

import pytest
import redis

from cascade.broker import keys
from cascade.broker.answer_cache import RedisAnswerCache
from cascade.broker.settings import Settings
from cascade.workers.answers import AnswerCache, Claim
from tests.workers.answer_cache_contract import AnswerCacheContract, cached

TTL = 3600


class TestRedisAnswerCache(AnswerCacheContract):
    @pytest.fixture
    def cache(self, redis_db: redis.Redis) -> AnswerCache:
        return RedisAnswerCache(redis_db, TTL, max_entries=100)


def test_entries_expire_after_the_ttl_and_claims_after_their_seconds(redis_db: redis.Redis) -> None:
    cache = RedisAnswerCache(redis_db, TTL, max_entries=100)
    cache.claim(["k1", "k2"], "w1", 20)
    assert 19_000 < redis_db.pttl(keys.answer_claim("k1")) <= 20_000
    cache.put({"k1": cached()})
    assert TTL - 5 < redis_db.ttl(keys.answer("k1")) <= TTL
    assert not redis_db.exists(keys.answer_claim("k1"))  # the answer is there: its claim is gone
    assert redis_db.exists(keys.answer_claim("k2"))
    assert redis_db.zscore(keys.ANSWERS, "k1") == pytest.approx(time.time(), abs=5)


def test_the_size_bound_trims_the_oldest_entries_first(redis_db: redis.Redis) -> None:
    cache = RedisAnswerCache(redis_db, TTL, max_entries=3)
    for i in range(5):
        cache.put({f"k{i}": cached(f"label{i}")})
        time.sleep(0.002)  # distinct insertion times
    assert set(cache.get([f"k{i}" for i in range(5)])) == {"k2", "k3", "k4"}
    assert redis_db.zrange(keys.ANSWERS, 0, -1) == ["k2", "k3", "k4"]
    assert not redis_db.exists(keys.answer("k0"), keys.answer("k1"))
    cache.put({"k5": cached(), "k6": cached()})  # several in one put
    assert set(cache.get([f"k{i}" for i in range(7)])) == {"k4", "k5", "k6"}
    assert redis_db.zcard(keys.ANSWERS) == 3


def test_index_members_whose_entries_expired_are_dropped(redis_db: redis.Redis) -> None:
    cache = RedisAnswerCache(redis_db, TTL, max_entries=100)
    redis_db.zadd(keys.ANSWERS, {"gone": time.time() - TTL - 10})  # its entry expired with the TTL long ago
    cache.put({"k1": cached()})
    assert redis_db.zrange(keys.ANSWERS, 0, -1) == ["k1"]


def test_a_claim_is_exclusive_between_two_workers_connections(redis_db: redis.Redis, settings: Settings) -> None:
    first = RedisAnswerCache(redis_db, TTL, 100)
    second = RedisAnswerCache.from_url(settings.redis_url, TTL, 100)
    try:
        outcomes = [first.claim(["k"], "w1", 30)["k"], second.claim(["k"], "w2", 30)["k"]]
        assert outcomes == [Claim.MINE, Claim.THEIRS]
        first.put({"k": cached("a")})
        assert second.claim(["k"], "w2", 30)["k"] == cached("a")
    finally:
        second.redis.close()
