"""The reaper: a thread in every worker's main process that, one worker at a time (a Redis lock), looks at the
jobs that have not ended and does what each needs (``cascade.workers.lifecycle.reap``): expire it past its window,
re-send the missing work of a job that stopped moving, fail it when that did not help or its intake died.

Nobody has to watch a job for it to end: a CLI client killed mid-intake, a task lost with Redis, a sweep never
delivered all end here. Each look also dispatches from the fair queue (``cascade.broker.fair``), should a dispatch
have been missed. Under the same lock it keeps Redis and the files folder from growing without bound: it drops
expired jobs from the indexes (``RedisJobStore.trim``) and deletes uploads past their retention
(``FileStore.expire``).
"""

import logging
import threading
import uuid
from collections import Counter
from functools import partial

import redis

from cascade.broker import keys
from cascade.broker.celery_app import CascadeCelery, send_intake, send_specialist_chunk, send_sweep
from cascade.broker.fair import FairQueue
from cascade.broker.files import open_files
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.lifecycle import Reaped, Reaping, reap

log = logging.getLogger(__name__)


class Reaper(threading.Thread):
    def __init__(self, store: RedisJobStore, celery: CascadeCelery, settings: Settings) -> None:
        super().__init__(name="cascade-reaper", daemon=True)
        self.store, self.celery, self.settings = store, celery, settings
        self.files = open_files(store.redis, settings)
        self.token = uuid.uuid4().hex
        self.stopped = threading.Event()
        self.fair = FairQueue(store.redis, settings.dispatch_depth)
        self.reaping = Reaping(
            stall_seconds=settings.stall_seconds,
            max_reaps=settings.max_reaps,
            enqueue=partial(send_specialist_chunk, celery),
            sweep=partial(send_sweep, celery),
            resend_intake=self._resend_intake,
        )

    def _resend_intake(self, job_id: str) -> bool:
        (file_id,) = self.store.fields(job_id, "input_file_id")
        if not file_id:
            return False
        send_intake(self.celery, job_id, file_id)
        return True

    def once(self) -> Counter[Reaped]:
        """One look at every active job, a dispatch from the fair queue (in case one was missed: the re-sends of
        missing chunks go straight to Celery), then the trimming of expired jobs and files, if no other worker's
        reaper is looking now."""
        interval = max(int(self.settings.reaper_interval), 1)
        if not self.store.redis.set(keys.REAPER_LOCK, self.token, nx=True, ex=interval):
            return Counter()
        done: Counter[Reaped] = Counter()
        for job_id in self.store.active_ids():
            outcome = reap(self.store, self.reaping, job_id)
            done[outcome] += 1
            if outcome is not Reaped.NOTHING:
                log.warning("reaper: job %s %s", job_id, outcome.value)
        self.fair.dispatch(self.reaping.enqueue)
        self.tidy()
        return done

    def tidy(self) -> None:
        """Drop expired jobs from the indexes and delete the uploads past their retention."""
        trimmed = self.store.trim()
        deleted = self.files.expire(recheck=self.settings.reaper_interval)
        if trimmed or deleted:
            log.info("reaper: %d expired jobs left the indexes, %d files deleted", trimmed, len(deleted))

    def run(self) -> None:
        while not self.stopped.wait(self.settings.reaper_interval):
            try:
                self.once()
            except redis.RedisError as e:  # Redis down: look again next time
                log.warning("reaper: Redis does not answer (%s)", e)
            except Exception:  # never let the thread die: the next look may succeed
                log.exception("reaper: a look at the jobs failed")
