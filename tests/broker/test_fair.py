"""The fair queue in the real Redis (the tests' own database): chunks go out round-robin across owners, the Celery
queue never holds more than the depth, nothing is lost or sent twice when pushes and dispatches race, an owner with
nothing left leaves the ring, and a chunk taken but never sent comes back."""

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
import redis

from cascade.broker import keys
from cascade.broker.celery_app import CascadeCelery, QueueName, TaskName, configure, send_specialist_chunk
from cascade.broker.fair import RECLAIM_SECONDS, FairEnqueue, FairQueue, celery_lists
from cascade.broker.reaper import Reaper
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.jobs import JobSpec

SPECIALIST = QueueName.SPECIALIST.value
SPEC = JobSpec(model_path="m", model_sha256="s", threshold=0.5, top_k=3, llm_model="x")
Send = Callable[[str, int], None]


def push(fair: FairQueue, owner: str, n: int) -> None:
    for index in range(n):
        fair.push(owner, f"job-{owner}", index)


def lpush(client: redis.Redis, peaks: list[int] | None = None) -> Send:
    """Sends as kombu's transport publishes, LPUSH onto the queue's list (the message here: just its chunk);
    ``peaks`` gets the list's length after each push."""

    def send(job_id: str, index: int) -> None:
        length = int(client.lpush(SPECIALIST, f"{job_id}:{index}"))
        if peaks is not None:
            peaks.append(length)

    return send


def chunk_of(raw: str) -> tuple[str, str, int]:
    """The task name and the chunk of a Celery message as kombu's Redis transport stores it."""
    message = json.loads(raw)
    job_id, index = json.loads(base64.b64decode(message["body"]))[0]
    return message["headers"]["task"], job_id, index


def test_chunks_go_out_one_owner_at_a_time_in_turn(redis_db: redis.Redis) -> None:
    fair = FairQueue(redis_db, depth=1)
    push(fair, "a", 5)  # a's whole batch first, as an intake pushes it
    push(fair, "b", 2)
    push(fair, "c", 3)
    assert fair.waiting() == 10
    order: list[str] = []
    while fair.dispatch(lpush(redis_db)):
        order.append(str(redis_db.rpop(SPECIALIST)))  # a worker takes it: its place is free
    a, b, c = (f"job-{o}" for o in "abc")
    assert order == [f"{a}:0", f"{b}:0", f"{c}:0", f"{a}:1", f"{b}:1", f"{c}:1", f"{a}:2", f"{c}:2", f"{a}:3", f"{a}:4"]
    assert fair.waiting() == 0
    assert not redis_db.exists(keys.FAIR_RING, keys.FAIR_SENDING, *(keys.pending(o) for o in "abc"))


def test_the_celery_queue_holds_no_more_than_the_depth(settings: Settings, redis_db: redis.Redis) -> None:
    """With Celery's own Redis transport: what is sent lands in the list the depth counts, priority lists included."""
    celery = configure(CascadeCelery("fair-test"), settings)
    send = partial(send_specialist_chunk, celery)
    fair = FairQueue(redis_db, depth=3)
    push(fair, "a", 10)
    push(fair, "b", 10)
    assert fair.dispatch(send) == 3
    assert redis_db.llen(SPECIALIST) == 3
    assert fair.dispatch(send) == 0  # full
    assert fair.waiting() == 17
    sent = [chunk_of(str(raw)) for raw in redis_db.lrange(SPECIALIST, 0, -1)][::-1]  # LPUSHed: oldest last
    task = TaskName.SPECIALIST.value
    assert sent == [(task, "job-a", 0), (task, "job-b", 0), (task, "job-a", 1)]
    redis_db.rpop(SPECIALIST)  # a worker took one
    assert fair.dispatch(send) == 1
    assert redis_db.llen(SPECIALIST) == 3
    celery.send_task(TaskName.SWEEP.value, args=["other"], queue=SPECIALIST, priority=5)  # waits in another list
    assert sum(int(redis_db.llen(name)) for name in celery_lists(SPECIALIST)[1:]) == 1
    redis_db.rpop(SPECIALIST)
    redis_db.rpop(SPECIALIST)
    assert fair.dispatch(send) == 1  # 3 - (one left + the prioritised message)
    celery.close()


def test_concurrent_pushes_and_dispatches_lose_nothing_send_nothing_twice_and_keep_the_depth(
    settings: Settings, redis_db: redis.Redis
) -> None:
    """Three intakes push (and dispatch after each push) while three workers take messages and dispatch after each:
    every chunk is sent once, and the Celery list is never longer than the depth, even for a moment."""
    depth, owners, per_owner = 4, ["a", "b", "c"], 200
    peaks: list[int] = []
    taken: list[str] = []
    pushed_all = threading.Event()

    def connect() -> tuple[redis.Redis, FairQueue]:
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        return client, FairQueue(client, depth)

    def intake(owner: str) -> None:
        client, fair = connect()
        for index in range(per_owner):
            fair.push(owner, f"job-{owner}", index)
            fair.dispatch(lpush(client, peaks))

    def worker() -> None:
        client, fair = connect()
        deadline = time.monotonic() + 60  # a broken queue that stops sending fails the test, not hangs it
        while (not pushed_all.is_set() or len(taken) < per_owner * len(owners)) and time.monotonic() < deadline:
            if (got := client.rpop(SPECIALIST)) is not None:
                taken.append(str(got))
            fair.dispatch(lpush(client, peaks))

    with ThreadPoolExecutor(6) as pool:
        workers = [pool.submit(worker) for _ in range(3)]
        for intake_done in [pool.submit(intake, owner) for owner in owners]:
            intake_done.result(timeout=120)
        pushed_all.set()
        for done in workers:
            done.result(timeout=120)
    expected = {f"job-{o}:{i}" for o in owners for i in range(per_owner)}
    assert Counter(taken) == Counter(expected), "every chunk sent exactly once"
    assert max(peaks) <= depth
    assert not redis_db.exists(keys.FAIR_RING, keys.FAIR_SENDING, *(keys.pending(o) for o in owners))


def test_a_push_while_a_dispatch_sends_is_not_lost(redis_db: redis.Redis) -> None:
    """Owner a's list emptied by the dispatch's script (a left the ring); a's intake pushes before the sends."""
    fair = FairQueue(redis_db, depth=10)
    push(fair, "a", 1)
    sent: list[str] = []

    def send(job_id: str, index: int) -> None:
        sent.append(f"{job_id}:{index}")
        if len(sent) == 1:
            fair.push("a", "job-a", 1)

    assert fair.dispatch(send) == 1
    assert redis_db.lrange(keys.FAIR_RING, 0, -1) == ["a"]
    assert fair.dispatch(send) == 1
    assert sent == ["job-a:0", "job-a:1"]


def test_an_owner_with_nothing_left_leaves_the_ring_and_rejoins_at_its_tail(redis_db: redis.Redis) -> None:
    fair = FairQueue(redis_db, depth=2)
    push(fair, "a", 1)
    push(fair, "b", 3)
    assert fair.dispatch(lpush(redis_db)) == 2  # a:0, b:0
    assert redis_db.lrange(keys.FAIR_RING, 0, -1) == ["b"]
    assert not redis_db.exists(keys.pending("a"))
    fair.push("a", "job-a2", 0)
    fair.push("c", "job-c", 0)
    assert redis_db.lrange(keys.FAIR_RING, 0, -1) == ["b", "a", "c"]
    redis_db.delete(SPECIALIST)
    fair.dispatch(lpush(redis_db))
    assert redis_db.lrange(SPECIALIST, 0, -1) == ["job-a2:0", "job-b:1"]  # LPUSHed: the first sent is last


def test_a_chunk_taken_and_never_sent_comes_back_after_the_reclaim_time(redis_db: redis.Redis) -> None:
    """Its sender died (here: the send raised) between the script and the send: the chunk counts against the depth
    until it is reclaimed, then goes out first."""
    fair = FairQueue(redis_db, depth=2)
    push(fair, "a", 3)
    sent: list[str] = []

    def fails_second(job_id: str, index: int) -> None:
        if sent:
            raise redis.ConnectionError("Redis went away")
        sent.append(f"{job_id}:{index}")

    with pytest.raises(redis.ConnectionError):
        fair.dispatch(fails_second)
    assert sent == ["job-a:0"]
    assert redis_db.zcard(keys.FAIR_SENDING) == 1  # job-a:1, taken and not sent

    def record(job_id: str, index: int) -> None:
        sent.append(f"{job_id}:{index}")

    assert fair.dispatch(record) == 1  # its place is still taken: only one more goes
    assert sent == ["job-a:0", "job-a:2"]
    assert fair.dispatch(record, now=time.time() + RECLAIM_SECONDS + 1) == 1
    assert sent == ["job-a:0", "job-a:2", "job-a:1"]
    assert not redis_db.exists(keys.FAIR_RING, keys.FAIR_SENDING, keys.pending("a"))


def test_an_intake_pushes_to_its_jobs_owner_reading_the_owner_once(
    store: RedisJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = store.create(SPEC, owner="team-a")
    real = store.fields
    reads: list[tuple[str, ...]] = []

    def counted(job_id: str, *names: str) -> list[str | None]:
        reads.append(names)
        return real(job_id, *names)

    monkeypatch.setattr(store, "fields", counted)
    enqueue = FairEnqueue(FairQueue(store.redis, depth=1), store, lpush(store.redis))
    for index in range(3):
        enqueue(job, index)
    assert reads == [("owner",)]
    assert store.redis.lrange(SPECIALIST, 0, -1) == [f"{job}:0"]
    assert store.redis.lrange(keys.pending("team-a"), 0, -1) == [f"{job}:1", f"{job}:2"]


def test_the_reaper_dispatches_what_waits(settings: Settings, store: RedisJobStore) -> None:
    """A dispatch missed (none ran since the Celery queue emptied): the reaper's next look sends the waiting chunks."""
    celery = configure(CascadeCelery("reaper-test"), settings)
    push(FairQueue(store.redis, depth=settings.dispatch_depth), "a", 2)
    Reaper(store, celery, settings).once()
    assert [chunk_of(str(raw))[1:] for raw in store.redis.lrange(SPECIALIST, 0, -1)] == [("job-a", 1), ("job-a", 0)]
    celery.close()


def test_the_queue_length_gauge_counts_the_chunks_waiting_their_turn(store: RedisJobStore) -> None:
    """What drives the specialist workers' autoscaling (KEDA) sees the whole backlog, not just the Celery queue's
    few messages."""
    from cascade.broker.collector import JobsCollector
    from cascade.monitoring.metrics import QUEUE_LENGTH

    fair = FairQueue(store.redis, depth=2)
    push(fair, "a", 5)
    fair.dispatch(lpush(store.redis))  # two go to Celery's list, three wait
    families = {f.name: f for f in JobsCollector(store).collect()}
    lengths = {s.labels["queue"]: s.value for s in families[QUEUE_LENGTH].samples}
    assert lengths == {SPECIALIST: 5, QueueName.LLM.value: 0}
