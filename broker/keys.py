"""Every Redis key Cascade writes, made in one place. A job's keys start with its job key and expire with it."""

from dataclasses import dataclass

PREFIX = "cascade:"
JOBS = PREFIX + "jobs"
"""Sorted set: job id -> creation time, every job in the store."""
REAPER_LOCK = PREFIX + "reaper"
"""String, with a TTL of one reaper interval: the worker whose reaper is looking at the jobs now."""


def owner(name: str) -> str:
    """Sorted set: the job ids of one API caller -> creation time."""
    return f"{PREFIX}owner:{name}"


def file(file_id: str) -> str:
    """Hash: metadata of one uploaded file (owner, its FileObject)."""
    return f"{PREFIX}file:{file_id}"


@dataclass(frozen=True)
class JobKeys:
    """The keys of one job."""

    job_id: str

    @property
    def job(self) -> str:
        """Hash: spec, status, total, timings, budget and per-tier counters."""
        return f"{PREFIX}job:{self.job_id}"

    @property
    def results(self) -> str:
        """Hash: custom_id -> ItemResult JSON."""
        return self.job + ":results"

    @property
    def errors(self) -> str:
        """Hash: custom_id -> ItemError JSON, for valid items that failed."""
        return self.job + ":errors"

    @property
    def invalid(self) -> str:
        """Hash: line number -> ItemError JSON, for lines refused at intake."""
        return self.job + ":invalid"

    @property
    def escalated(self) -> str:
        """Set: custom_ids sent to the LLM for its answer."""
        return self.job + ":escalated"

    @property
    def explored(self) -> str:
        """Set: custom_ids sent to the LLM to measure it (the specialist's answer stays)."""
        return self.job + ":explored"

    @property
    def ids(self) -> str:
        """Hash: custom_id -> line of its first valid line, to refuse duplicates, until the job ends."""
        return self.job + ":ids"

    def chunk(self, index: int) -> str:
        """String: JSON list of the items of one chunk, until the job ends."""
        return f"{self.job}:chunk:{index}"
