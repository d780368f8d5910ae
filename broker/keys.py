"""Every Redis key Cascade writes, made in one place. A job's keys start with its job key and expire with it."""

from dataclasses import dataclass

PREFIX = "cascade:"
JOBS = PREFIX + "jobs"
"""Sorted set: job id -> creation time, every job in the store. The reaper drops the ids whose job has expired
(``RedisJobStore.trim``)."""
OWNERS = PREFIX + "owners"
"""Sorted set: owner name -> creation time of its newest job, the owners whose ``owner`` set may hold ids (trimmed
with the jobs)."""
FILES = PREFIX + "files"
"""Sorted set: uploaded file id -> the time from which the reaper may delete it (``FileStore.expire``)."""
REAPER_LOCK = PREFIX + "reaper"
"""String, with a TTL of one reaper interval: the worker whose reaper is looking at the jobs now."""


def memory(name: str) -> str:
    """Stream: one answer memory (``cascade.workers.recall``), entries ``l`` (label) and ``v`` (packed vector),
    capped at ``CASCADE_MEMORY_MAX`` entries, expiring ``CASCADE_MEMORY_TTL`` after the last append."""
    return f"{PREFIX}memory:{name}"


ANSWERS = PREFIX + "answers"
"""Sorted set: answer key -> the time its answer was stored, the answer cache's index (trimmed oldest-first to
``CASCADE_ANSWER_CACHE_MAX``). Members are bare answer keys (``answers.answer_key``), not key names."""


def answer(key: str) -> str:
    """String, with a TTL (``CASCADE_ANSWER_CACHE_TTL``): one cached LLM answer (``CachedAnswer`` JSON), shared by
    every job."""
    return f"{PREFIX}answer:{key}"


def answer_claim(key: str) -> str:
    """String, with a TTL (the LLM timeout times its tries): the owner asking the LLM about an answer key now."""
    return f"{PREFIX}answer-claim:{key}"


def owner(name: str) -> str:
    """Sorted set: the job ids of one API caller -> creation time (trimmed with the jobs)."""
    return f"{PREFIX}owner:{name}"


# The fair queue of specialist chunks (``cascade.broker.fair``). No TTL: each entry leaves when it is dispatched.
FAIR_RING = PREFIX + "fair:ring"
"""List: the owners with chunks in the fair queue, each once, in round-robin order. An owner joins at the tail with
its first pending chunk, goes back to the tail after each chunk dispatched, and leaves when its list is empty."""
FAIR_SENDING = PREFIX + "fair:sending"
"""Sorted set: JSON ``[owner, "job_id:index"]`` -> the time a dispatch took it off its owner's list; removed once
that dispatch has sent it to Celery. One still here ``fair.RECLAIM_SECONDS`` later (its dispatcher or Redis died
before the send) goes back to the head of its owner's list at the next dispatch."""


def pending(owner_name: str) -> str:
    """List: one owner's specialist chunks waiting in the fair queue, ``job_id:index``, in push order (all the
    owner's jobs; "" is the CLI's). An entry is removed when it is dispatched; the empty list is gone (Redis drops
    empty lists), and its owner leaves ``FAIR_RING`` in the same step."""
    return f"{PREFIX}pending:{owner_name}"


def status(name: str) -> str:
    """Sorted set: the job ids of one status -> creation time, the status index: moved by the scripts that change
    a job's status, counted by ``/metrics``, trimmed with the jobs."""
    return f"{PREFIX}status:{name}"


def file(file_id: str) -> str:
    """Hash: metadata of one uploaded file (owner, its FileObject, its retention, ``batch:ID`` per batch reading
    it); deleted with the file by the reaper."""
    return f"{PREFIX}file:{file_id}"


@dataclass(frozen=True)
class JobKeys:
    """The keys of one job."""

    job_id: str

    @property
    def job(self) -> str:
        """Hash: spec, status, total, timings, budget, counters (per tier; ``n_results``, ``n_errors``,
        ``escalated``, ``explored``) and per-chunk fields (``left:I``: items without a record; ``sent:I``: its
        escalations are counted)."""
        return f"{PREFIX}job:{self.job_id}"

    @property
    def results(self) -> str:
        """Hash: custom_id -> ItemResult JSON, for the items of chunks not yet committed to the result store."""
        return self.job + ":results"

    @property
    def errors(self) -> str:
        """Hash: custom_id -> ItemError JSON, for valid items that failed, of chunks not yet committed."""
        return self.job + ":errors"

    @property
    def invalid(self) -> str:
        """Hash: line number -> ItemError JSON, for lines refused at intake."""
        return self.job + ":invalid"

    @property
    def parts(self) -> str:
        """Hash: chunk index -> the commit record of its part files (``results.Part`` JSON): the chunk's records
        are in the result store, no longer in ``results`` and ``errors``."""
        return self.job + ":parts"

    def chunk(self, index: int) -> str:
        """String: the items of one chunk as columns (``ItemColumns`` JSON), until the chunk is committed to the
        result store."""
        return f"{self.job}:chunk:{index}"
