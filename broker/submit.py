"""Submission: stream an input file into a job, chunk by chunk, and enqueue each chunk as it is stored."""

from collections.abc import Callable
from pathlib import Path

from broker.exceptions import InputError
from broker.intake import Intake
from broker.jobs import Item, ItemError, JobSpec, OnLLMError
from broker.settings import Settings
from broker.store import JobStore

Enqueue = Callable[[str, int], None]
"""Sends chunk ``index`` of job ``job_id`` to the specialist queue."""


def submit_file(
    store: JobStore, enqueue: Enqueue, settings: Settings, path: str | Path, spec: JobSpec, job_id: str | None = None
) -> str:
    """Create a job from a JSONL file (or fill ``job_id``, created already); refused lines go to the job's errors
    with their line number."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    job_id = job_id or store.create(spec)
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


def build_spec(
    settings: Settings,
    model: Path,
    threshold: float = 0.5,
    top_k: int | None = None,
    on_llm_error: OnLLMError = OnLLMError.KEEP,
    policy_file: Path | None = None,
    max_escalation: float | None = None,
    max_llm_cost: float | None = None,
    explore: float | None = None,
) -> JobSpec:
    """A job's spec from a model folder and the options of `cascade submit` (or of an API batch)."""
    from workers.policy import load_policy
    from workers.specialist import read_manifest

    manifest = read_manifest(model)
    policy = None
    if policy_file is not None:
        policy = load_policy(policy_file)
        if policy.specialist_sha256 != manifest["model_sha256"]:
            raise InputError(f"{policy_file}: calibrated for another specialist than {model}; calibrate again")
        if policy.llm_model != settings.llm_model:
            raise InputError(
                f"{policy_file}: calibrated with LLM {policy.llm_model!r}, but CASCADE_LLM_MODEL is "
                f"{settings.llm_model!r}; its guarantee does not carry over; calibrate again"
            )
        rate = explore if explore is not None else (settings.explore_rate or policy.explore_rate)
        policy = policy.model_copy(update={"explore_rate": rate})
    return JobSpec(
        model_path=str(model.resolve()),
        model_sha256=manifest["model_sha256"],
        threshold=threshold,
        top_k=settings.top_k if top_k is None else top_k,
        on_llm_error=on_llm_error,
        llm_model=settings.llm_model,
        policy=policy,
        max_escalation=max_escalation,
        max_llm_cost=max_llm_cost,
        usd_per_llm_token=settings.llm_usd_per_million_tokens / 1e6,
        usd_per_cpu_second=settings.cpu_usd_per_hour / 3600,
    )
