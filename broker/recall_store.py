"""The answer memories in Redis: one stream per memory, shared by every worker (``cascade.workers.recall``).

An entry is two fields, ``l`` (the LLM's label) and ``v`` (the packed vector, 1,024 characters at 384
dimensions): about 1.2 KB of Redis memory each (measured, Redis 7.0), so the default bound of 50,000 entries is
about 60 MB per memory. Appends trim the stream to its bound (exactly: ``MAXLEN``) and renew its expiry; a reader
asks only for the entries after the last one it has.
"""

from collections.abc import Sequence
from typing import cast

import redis

from cascade.broker import keys
from cascade.workers.recall import Remembered

READ_BATCH = 5_000


def _order(position: str) -> tuple[int, int]:
    ms, _, seq = position.partition("-")
    return int(ms), int(seq or 0)


class RedisMemoryStore:
    def __init__(self, client: redis.Redis, bound: int, ttl: int) -> None:
        """``client``: with ``decode_responses=True``."""
        self.redis, self.bound, self.ttl = client, bound, ttl

    def append(self, name: str, entries: Sequence[Remembered]) -> None:
        if not entries:
            return
        key = keys.memory(name)
        with self.redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.xadd(key, {"l": entry.label, "v": entry.vector}, maxlen=self.bound, approximate=False)
            pipe.expire(key, self.ttl)
            pipe.execute()

    def read(self, name: str, after: str | None) -> tuple[list[Remembered], str | None, bool]:
        key = keys.memory(name)
        backwards = False
        if after is not None:
            last = cast(list[tuple[str, dict[str, str]]], self.redis.xrevrange(key, "+", "-", count=1))
            if not last or _order(last[0][0]) < _order(after):
                backwards, after = True, None
        entries: list[Remembered] = []
        position = after
        while True:
            start = "-" if position is None else f"({position}"
            batch = cast(list[tuple[str, dict[str, str]]], self.redis.xrange(key, start, "+", count=READ_BATCH))
            for entry_id, fields in batch:
                entries.append(Remembered(label=fields.get("l", ""), vector=fields.get("v", "")))
                position = entry_id
            if len(batch) < READ_BATCH:
                break
        return entries, position, backwards

    def delete(self, name: str) -> None:
        self.redis.delete(keys.memory(name))
