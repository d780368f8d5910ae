"""The fair queue: specialist chunks handed to Celery round-robin across owners, not first come first served.

Celery's queues are FIFO: an intake that stored 400 chunks enqueued all 400 at once, and a batch another owner
submitted next waited behind every one of them. Here an intake does not send its chunks to Celery: it pushes each
to its owner's list in Redis (``keys.pending``), and a dispatch moves them into the Celery ``specialist`` queue one
owner at a time, in turn (``keys.FAIR_RING``), while that queue holds fewer than ``CASCADE_DISPATCH_DEPTH``
messages. A batch then waits behind at most the chunks already in the Celery queue and about one chunk of each
other owner with work: its time is in proportion to its own size, not to what was submitted before it.

A dispatch runs after every push (the intake's ``FairEnqueue``), at the end of every specialist chunk (it freed a
place) and at each look of the reaper (in case one was missed). It takes its chunks in one script, which records
them as being sent (``keys.FAIR_SENDING``) and counts them against the depth until the dispatch has sent them, so
several workers dispatching at once never fill the queue past its depth. A chunk taken and never sent (its
dispatcher died, or Redis did, between the script and the send) goes back to the head of its owner's list at the
first dispatch ``RECLAIM_SECONDS`` later; sent twice, a chunk runs twice, which changes nothing. Should a chunk
still be lost, the reaper re-sends the missing chunks of a job that made no progress for ``CASCADE_STALL_SECONDS``
(``cascade.workers.lifecycle.reap``: ``missing_chunks`` are the chunks with an item without a record, wherever
their message went), straight to Celery.

kombu's Redis transport keeps a queue's waiting messages in a list named after the queue (LPUSH to publish, BRPOP
to take), plus one list per priority step above 0 (``specialist\\x06\\x163``, ...6, ...9); the depth counts them
all, as kombu's ``Channel._size`` does. A message a worker has taken has left the lists (it waits in ``unacked``).

The owner is the job's ``owner`` field: an API caller; every CLI job has the owner "", and they share one list. An
owner's own jobs are first come first served among themselves. Chunks of jobs that ended (cancelled, expired,
failed) stay in their lists and are dispatched in turn: the chunk task finds its job not accepting work and returns.
The chunks waiting here are not in the ``cascade_queue_length`` gauge, which reads the Celery lists; ``waiting``
counts them.

The LLM queue stays FIFO. It matters less: escalations enter it as specialist chunks finish, and those are
dispatched fairly, so a small batch's escalations queue behind what the chunks dispatched before them escalated,
not behind a whole batch's. That holds while the LLM keeps up; when it does not, a heavily escalating owner's LLM
chunks pile up there at the specialist's pace, and a later owner's wait behind them. Fair LLM dispatch would need
the same again: per-owner lists of LLM chunks (their escalated items kept in Redis until dispatched, since the
message carries them), a depth of its own, a dispatch at the end of each LLM chunk, the owner passed on by the
specialist task.
"""

import json
import time
from typing import cast

import redis
from kombu.transport import redis as kombu_redis

from cascade.broker import keys
from cascade.broker.celery_app import QueueName
from cascade.broker.store import RedisJobStore
from cascade.workers.lifecycle import Enqueue

RECLAIM_SECONDS = 10.0
"""A chunk taken by a dispatch and not confirmed sent this long after goes back to its owner's list. Sending takes
milliseconds; too short only risks a chunk sent twice (harmless), too long delays one whose dispatcher died."""

# KEYS: ring, the owner's list. ARGV[1]: {"owner", "entry"}. Appends the entry; the owner joins the ring's tail if
# it is not in it.
_PUSH = """
local args = cjson.decode(ARGV[1])
redis.call('RPUSH', KEYS[2], args.entry)
if not redis.call('LPOS', KEYS[1], args.owner) then redis.call('RPUSH', KEYS[1], args.owner) end
return 1
"""

# KEYS: ring, sending, the Celery queue's lists. ARGV[1]: {"depth", "now", "reclaim", "prefix"} (prefix: of the
# owners' lists; a single Redis, not a cluster). First puts back at the head of their owners' lists the entries taken
# more than reclaim seconds ago and never confirmed sent. Then, while the Celery lists and the entries being sent
# hold fewer than depth, takes the head of the ring's first owner's list, and puts the owner back at the ring's
# tail if its list is not empty. Returns the entries taken, as their members of sending: JSON [owner, entry].
_TAKE = """
local args = cjson.decode(ARGV[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (args.now - args.reclaim))
for i = #stale, 1, -1 do
  local owner, entry = unpack(cjson.decode(stale[i]))
  redis.call('LPUSH', args.prefix .. owner, entry)
  if not redis.call('LPOS', KEYS[1], owner) then redis.call('LPUSH', KEYS[1], owner) end
  redis.call('ZREM', KEYS[2], stale[i])
end
local room = args.depth - redis.call('ZCARD', KEYS[2])
for i = 3, #KEYS do room = room - redis.call('LLEN', KEYS[i]) end
local taken = {}
while #taken < room do
  local owner = redis.call('LPOP', KEYS[1])
  if not owner then break end
  local list = args.prefix .. owner
  local entry = redis.call('LPOP', list)
  if entry then
    local member = cjson.encode({owner, entry})
    redis.call('ZADD', KEYS[2], args.now, member)
    table.insert(taken, member)
  end
  if redis.call('LLEN', list) > 0 then redis.call('RPUSH', KEYS[1], owner) end
end
return taken
"""


def celery_lists(queue: str) -> list[str]:
    """The Redis lists in which kombu's transport keeps a queue's waiting messages, one per priority step
    (``kombu.transport.redis.Channel._q_for_pri``; Cascade sets neither steps nor a key prefix)."""
    sep = kombu_redis.Channel.sep
    return [f"{queue}{sep}{step}" if step else queue for step in kombu_redis.PRIORITY_STEPS]


class FairQueue:
    """Specialist chunks waiting for their turn, one list per owner, and their dispatch into Celery. ``client``
    decodes responses (the job store's)."""

    def __init__(self, client: redis.Redis, depth: int, queue: str = QueueName.SPECIALIST.value) -> None:
        self.redis, self.depth = client, depth
        self.lists = celery_lists(queue)
        self._push = client.register_script(_PUSH)
        self._take = client.register_script(_TAKE)

    def push(self, owner: str, job_id: str, index: int) -> None:
        """Chunk ``index`` of ``job_id`` waits its owner's turn (sent by a later ``dispatch``)."""
        args = json.dumps({"owner": owner, "entry": f"{job_id}:{index}"})
        self._push(keys=[keys.FAIR_RING, keys.pending(owner)], args=[args])

    def dispatch(self, send: Enqueue, now: float | None = None) -> int:
        """Send chunks to Celery with ``send``, one of each owner in turn, until its queue holds ``depth``
        messages (counting chunks other dispatches are sending); returns how many this one sent."""
        args = {
            "depth": self.depth,
            "now": time.time() if now is None else now,
            "reclaim": RECLAIM_SECONDS,
            "prefix": keys.pending(""),
        }
        names = [keys.FAIR_RING, keys.FAIR_SENDING, *self.lists]
        taken = cast(list[str], self._take(keys=names, args=[json.dumps(args)]))
        sent: list[str] = []
        try:
            for member in taken:
                _, entry = json.loads(member)
                job_id, _, index = str(entry).rpartition(":")
                send(job_id, int(index))
                sent.append(member)
        finally:  # what was not sent stays in FAIR_SENDING, and is taken again after RECLAIM_SECONDS
            if sent:
                self.redis.zrem(keys.FAIR_SENDING, *sent)
        return len(sent)

    def waiting(self) -> int:
        """Chunks in the owners' lists, not yet dispatched: the part of the specialist backlog Celery does not see."""
        owners = cast(list[str], self.redis.lrange(keys.FAIR_RING, 0, -1))
        with self.redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.llen(keys.pending(owner))
            return sum(int(n) for n in pipe.execute())


class FairEnqueue:
    """An intake's ``Enqueue``: each chunk is pushed to its job's owner's list, then a dispatch runs. The owner is
    read from the job at its first chunk, once."""

    def __init__(self, queue: FairQueue, store: RedisJobStore, send: Enqueue) -> None:
        self.queue, self.store, self.send = queue, store, send
        self._owners: dict[str, str] = {}

    def __call__(self, job_id: str, index: int) -> None:
        owner = self._owners.get(job_id)
        if owner is None:
            (found,) = self.store.fields(job_id, "owner")
            owner = self._owners[job_id] = found or ""
        self.queue.push(owner, job_id, index)
        self.queue.dispatch(self.send)
