"""``cascade learn``: a new model version fitted on its parent's training data and the LLM's answers in jobs.

The LLM's answers are in a job's results (``workers.learning.llm_labels``), their texts beside them (a finished
chunk's part files keep the texts of its LLM-answered items), joined by ``custom_id``: a job can be learned from
until its ``CASCADE_JOB_TTL`` passes. The edges (the CLI) parse, print and promote (``cascade.broker.promote``).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cascade.workers import specialist
from cascade.workers.data import Labelled, read_labelled_csv
from cascade.workers.errors import InputError, NotFoundError
from cascade.workers.learning import (
    DEFAULT_LLM_WEIGHT,
    Learned,
    learned_data_sha256,
    lineage,
    llm_labels,
    train_with_llm_labels,
)
from cascade.workers.manifest import Manifest
from cascade.workers.storage import JobStore


@dataclass(frozen=True)
class JobAnswers:
    """The LLM-labelled items of one job."""

    job_id: str
    texts: list[str]
    labels: list[str]


@dataclass(frozen=True)
class LearnOutcome:
    folder: Path
    items: int
    """Gold items of the training data."""
    offered: int
    """LLM-labelled items found in the jobs."""
    held_out: int
    """Dropped: their text is in the held-out file that will judge the candidate."""
    learned: Learned


def job_answers(store: JobStore, job_id: str, parent: Manifest, model: Path) -> JobAnswers:
    """A finished job's LLM answers with their texts; refused unless it ran with ``parent``'s line and has any."""
    try:
        spec = store.spec(job_id)
        status = store.status(job_id)
    except NotFoundError as e:
        raise InputError(f"--from-job {job_id}: no such job (or past CASCADE_JOB_TTL)") from e
    if not status.is_final:
        raise InputError(f"--from-job {job_id}: the job is {status.value}; learn from finished jobs only")
    if spec.model_sha256 not in parent.line:
        raise InputError(
            f"--from-job {job_id}: job {job_id} ran with specialist {spec.model_sha256[:12]}…, "
            f"not of the lineage of {model}"
        )
    answers = llm_labels(store.iter_results(job_id))
    if not answers:
        raise InputError(
            f"--from-job {job_id}: the job has no LLM answers to learn from (items answered by the LLM or its cache)"
        )
    texts = store.texts(job_id, [custom_id for custom_id, _ in answers])
    found = [(texts[c], label) for c, label in answers if c in texts]  # input order: a job is learned the same way
    missing = len(answers) - len(found)
    if missing:
        raise InputError(
            f"--from-job {job_id}: the texts of {missing} of its {len(answers)} LLM-answered items are no longer "
            "stored (expired with CASCADE_JOB_TTL, or the job ended before Cascade kept them)"
        )
    return JobAnswers(job_id, [text for text, _ in found], [label for _, label in found])


def check_data(labelled: Labelled, data: Path, parent: Manifest, model: Path) -> None:
    """Refuse training data other than what the parent's line was trained on."""
    expected = parent.original_data_sha256
    if labelled.sha256 != expected:
        raise InputError(
            f"--data {data}: checksum {labelled.sha256[:12]}… is not that of the data {model} was trained on "
            f"({expected[:12]}…)"
        )


def learn(
    store: JobStore,
    model: Path,
    data: Path,
    jobs: Sequence[str],
    out: Path,
    weight: float = DEFAULT_LLM_WEIGHT,
    held_out: Path | None = None,
    seed: int = 0,
) -> LearnOutcome:
    """Fit a new version on ``data`` (the parent line's training data) and the LLM answers of ``jobs``, weighted
    ``weight``, and save it to ``out`` with its lineage. LLM-labelled texts found in ``held_out`` (the file that
    will judge the candidate) are left out, so the gate never scores the candidate on what it was fitted on."""
    if not jobs:
        raise InputError("--from-job: give at least one job to learn from")
    if not weight > 0:
        raise InputError(f"--llm-weight {weight}: must be above 0")
    if out.exists():
        raise InputError(f"--out {out}: exists; a new version goes to a new folder")
    parent = specialist.load(model)
    labelled = read_labelled_csv(data)
    check_data(labelled, data, parent.manifest, model)
    unique = list(dict.fromkeys(jobs))
    found = [job_answers(store, job_id, parent.manifest, model) for job_id in unique]
    texts = [t for job in found for t in job.texts]
    labels = [lab for job in found for lab in job.labels]
    judged = set() if held_out is None else {t.strip() for t in read_labelled_csv(held_out).texts}
    kept = [i for i, t in enumerate(texts) if t.strip() not in judged]
    learned = train_with_llm_labels(
        labelled.texts,
        labelled.labels,
        [texts[i] for i in kept],
        [labels[i] for i in kept],
        weight=weight,
        encoder=parent.encoder,
        seed=seed,
    )
    digest = learned_data_sha256(parent.manifest.original_data_sha256, learned.texts, learned.labels, weight)
    specialist.save(learned.report, out, digest, lineage(parent.manifest, unique, learned.used, weight))
    return LearnOutcome(out, len(labelled.texts), len(texts), len(texts) - len(kept), learned)
