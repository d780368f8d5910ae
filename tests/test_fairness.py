"""Fair across owners (issue #14), through real `cascade worker` processes: owner A submits 200,000 items (its
intake stores all 400 chunks in seconds, far faster than two processes answer them), then owner B submits 200. B's
batch completes long before A's: it waits behind the few chunks in the Celery queue and one of A's at a time, not
behind A's whole batch.

Run with ``-s`` to see both completion times. ``CASCADE_DISPATCH_DEPTH=1000000`` in the environment (the test's
intakes and its workers read it) turns the fair queue into a plain FIFO, and this test then fails."""

from functools import partial
from pathlib import Path

from cascade.broker.celery_app import CascadeCelery, configure, send_specialist_chunk
from cascade.broker.fair import FairEnqueue, FairQueue
from cascade.broker.results import open_parts
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.submit import build_spec, submit_file
from cascade.workers.jobs import JobSpec, JobStatus, JobView
from tests.conftest import WorkerFactory, write_jsonl
from tests.test_faults import sms_copies

A_ITEMS, B_ITEMS = 200_000, 200
CHUNK = 500  # the default: A's batch is 400 chunks


def intake(settings: Settings, celery: CascadeCelery, job_id: str, path: Path, spec: JobSpec) -> str:
    """What `cascade submit` does with its file, for a job created with an owner (the CLI's have none)."""
    store = RedisJobStore.from_url(settings.redis_url, settings.job_ttl, open_parts(settings))
    fair = FairQueue(store.redis, settings.dispatch_depth)
    enqueue = FairEnqueue(fair, store, partial(send_specialist_chunk, celery))
    return submit_file(store, enqueue, settings, path, spec, job_id=job_id)


def wall(view: JobView) -> float:
    assert view.finished_at is not None
    return view.finished_at - view.created_at


def test_a_small_batch_after_a_huge_one_of_another_owner_completes_long_before_it(
    settings: Settings, store: RedisJobStore, sms_model: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    own = settings.model_copy(update={"chunk_size": CHUNK})
    copies = -(-A_ITEMS // len(sms_copies("n", 1)))
    path_a = write_jsonl(tmp_path / "a.jsonl", sms_copies("a", copies)[:A_ITEMS])
    path_b = write_jsonl(tmp_path / "b.jsonl", sms_copies("b", 1)[:B_ITEMS])
    spec = build_spec(own, sms_model, threshold=0.0)  # threshold 0: nothing goes to the LLM
    celery = configure(CascadeCelery("fairness-test"), own)
    start_worker(queues="specialist", concurrency=2)
    # Both pool processes up and their model loaded first: neither batch's time is the worker's start.
    warm_up = store.create(spec, owner="warm-up")
    intake(own, celery, warm_up, write_jsonl(tmp_path / "w.jsonl", sms_copies("w", 1)[: 4 * CHUNK]), spec)
    store.wait(warm_up, timeout=300)
    job_a = store.create(spec, owner="owner-a")
    intake(own, celery, job_a, path_a, spec)
    at_b = store.get(job_a)
    assert at_b.counts.completed < A_ITEMS // 2, "B is submitted while most of A's chunks wait"
    job_b = store.create(spec, owner="owner-b")
    intake(own, celery, job_b, path_b, spec)
    b = store.wait(job_b, timeout=600)
    a = store.wait(job_a, timeout=900)
    celery.close()
    assert b.finished_at is not None
    assert a.finished_at is not None
    print(
        f"\nowner A, {A_ITEMS:,} items: submitted, completed {wall(a):.1f} s later"
        f"\nowner B, {B_ITEMS:,} items: submitted {b.created_at - a.created_at:.1f} s after A (A's intake done, "
        f"{at_b.counts.completed:,} of its items answered), completed {wall(b):.1f} s later, "
        f"{a.finished_at - b.finished_at:.1f} s before A"
    )
    assert (a.status, a.counts.completed) == (JobStatus.COMPLETED, A_ITEMS)
    assert (b.status, b.counts.completed) == (JobStatus.COMPLETED, B_ITEMS)
    assert b.finished_at < a.finished_at, "B completed while A was still running"
    assert wall(b) < wall(a) / 10, "B's time follows its own size, not A's"
