"""Submission: stream an input file into a job, chunk by chunk, and enqueue each chunk as it is stored."""

from collections.abc import Callable
from pathlib import Path

from broker.exceptions import InputError
from broker.intake import Intake
from broker.jobs import Item, ItemError, JobSpec
from broker.settings import Settings
from broker.store import JobStore

Enqueue = Callable[[str, int], None]
"""Sends chunk ``index`` of job ``job_id`` to the specialist queue."""


def submit_file(store: JobStore, enqueue: Enqueue, settings: Settings, path: str | Path, spec: JobSpec) -> str:
    """Create a job from a JSONL file; refused lines go to the job's errors with their line number."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    job_id = store.create(spec)
    intake = Intake(settings.max_text_chars)
    chunk: list[Item] = []
    refused: list[ItemError] = []
    total = chunks = 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            total += 1
            parsed = intake.parse(line_no, raw.rstrip(b"\r\n"))
            if isinstance(parsed, ItemError):
                refused.append(parsed)
                if len(refused) >= 1000:
                    store.put_invalid(job_id, refused)
                    refused = []
                continue
            chunk.append(parsed)
            if len(chunk) >= settings.chunk_size:
                store.put_chunk(job_id, chunks, chunk)
                enqueue(job_id, chunks)
                chunks, chunk = chunks + 1, []
    if chunk:
        store.put_chunk(job_id, chunks, chunk)
        enqueue(job_id, chunks)
        chunks += 1
    store.put_invalid(job_id, refused)
    store.finish_intake(job_id, total, chunks)
    return job_id
