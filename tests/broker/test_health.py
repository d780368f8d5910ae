"""GET /health, the API's readiness probe in Kubernetes (deploy/): ok while Redis answers, an error otherwise."""

from types import SimpleNamespace

import pytest
import redis

from cascade.broker import api
from cascade.broker.results import open_parts
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore


def test_health_is_ok_while_redis_answers(store: RedisJobStore) -> None:
    assert api.health(SimpleNamespace(store=store)) == {"status": "ok"}


def test_health_fails_while_redis_does_not_answer(settings: Settings) -> None:
    unreachable = RedisJobStore.from_url("redis://127.0.0.1:1/15", job_ttl=60, parts=open_parts(settings))
    with pytest.raises(redis.ConnectionError):
        api.health(SimpleNamespace(store=unreachable))
    unreachable.redis.close()
