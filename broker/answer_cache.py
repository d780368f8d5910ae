"""The answer cache in Redis: the ``AnswerCache`` contract (``cascade.workers.answers``) for production.

Every entry is ``keys.answer(key)``, a ``CachedAnswer`` as JSON, shared by every job and worker, kept
``CASCADE_ANSWER_CACHE_TTL`` seconds after it was stored. ``keys.ANSWERS`` indexes the entries by the time they
were stored, and each ``put`` trims the oldest beyond ``CASCADE_ANSWER_CACHE_MAX``. Measured on Redis 7.0 (50,000
entries, a 32-character label, JSON of 177 bytes): about 570 bytes an entry in all (``used_memory``), of which the
string with its TTL is about 330 and its index member about 170; the default 200,000 entries take about 115 MB,
to plan for under ``maxmemory-policy noeviction``. A claim (``keys.answer_claim(key)``, SET NX with an expiry)
marks the one worker asking the LLM about a key. Each call is one script (``scripts.ANSWER_*``).
"""

import json
import time
from collections.abc import Mapping, Sequence
from typing import cast

import redis

from cascade.broker import keys, scripts
from cascade.workers.answers import CachedAnswer, Claim


class RedisAnswerCache:
    """LLM answers by answer key, with a TTL and a size bound, in one Redis database."""

    def __init__(self, client: redis.Redis, ttl: int, max_entries: int) -> None:
        self.redis = client
        self.ttl = ttl
        self.max_entries = max_entries
        self._claim = client.register_script(scripts.ANSWER_CLAIM)
        self._put = client.register_script(scripts.ANSWER_PUT)
        self._release = client.register_script(scripts.ANSWER_RELEASE)

    @classmethod
    def from_url(cls, url: str, ttl: int, max_entries: int) -> "RedisAnswerCache":
        return cls(redis.Redis.from_url(url, decode_responses=True), ttl, max_entries)

    def get(self, keys_: Sequence[str]) -> dict[str, CachedAnswer]:
        if not keys_:
            return {}
        values = self.redis.mget([keys.answer(k) for k in keys_])
        return {k: CachedAnswer.model_validate_json(v) for k, v in zip(keys_, values, strict=True) if v is not None}

    def claim(self, keys_: Sequence[str], owner: str, seconds: float) -> dict[str, CachedAnswer | Claim]:
        if not keys_:
            return {}
        names = [name for k in keys_ for name in (keys.answer(k), keys.answer_claim(k))]
        args = json.dumps({"owner": owner, "ms": max(1, round(seconds * 1000))})
        replies = cast(list[str], self._claim(keys=names, args=[args]))
        return {k: _outcome(reply) for k, reply in zip(keys_, replies, strict=True)}

    def put(self, answers: Mapping[str, CachedAnswer]) -> None:
        if not answers:
            return
        ids = list(answers)
        names = [keys.ANSWERS] + [name for k in ids for name in (keys.answer(k), keys.answer_claim(k))]
        args = {
            "ttl": self.ttl,
            "max": self.max_entries,
            "now": time.time(),
            "prefix": keys.answer(""),
            "ids": ids,
            "answers": [answers[k].model_dump_json() for k in ids],
        }
        self._put(keys=names, args=[json.dumps(args)])

    def release(self, keys_: Sequence[str], owner: str) -> None:
        if keys_:
            self._release(keys=[keys.answer_claim(k) for k in keys_], args=[json.dumps({"owner": owner})])


def _outcome(reply: str) -> CachedAnswer | Claim:
    if reply in {Claim.MINE.value, Claim.THEIRS.value}:
        return Claim(reply)
    return CachedAnswer.model_validate_json(reply)
