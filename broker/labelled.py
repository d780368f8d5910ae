"""Labelled runs: a labelled CSV through a normal job (same workers and queues), then what its results say.

The work behind ``cascade demo``, ``calibrate`` and ``evaluate``, as library functions that the CLI (or the HTTP
API) calls: the edges only parse options, show progress and print.
"""

import csv
import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.submit import Enqueue, build_spec, submit_file
from cascade.workers import specialist
from cascade.workers.calibration import CalibrationData, FitOptions, Identity, fit_policy
from cascade.workers.data import Labelled, read_labelled_csv
from cascade.workers.errors import InputError, JobError
from cascade.workers.evaluation import CostModel, Report, calibration_data, evaluate, labelled_rows
from cascade.workers.items import AnswerSource, ItemResult
from cascade.workers.jobs import JobStatus
from cascade.workers.manifest import read_manifest
from cascade.workers.policy import Policy
from cascade.workers.recall import leave_one_out


@dataclass(frozen=True)
class LabelledJob:
    job_id: str
    items: int
    data_sha256: str
    """Checksum of the labelled file: the policy records what it was calibrated on."""
    model: Path
    data: Path
    """The labelled CSV (its rows are the job's items: ``custom_id`` ``row-N`` is line N)."""


def write_jsonl(labelled: Labelled, target: Path, limit: int | None = None) -> int:
    """The labelled rows as input lines (``custom_id`` ``row-N``, N the CSV line), at most ``limit``."""
    n = len(labelled.texts) if limit is None else min(limit, len(labelled.texts))
    with target.open("w") as f:
        for i in range(n):
            row = {"custom_id": f"row-{i + 2}", "text": labelled.texts[i], "label": labelled.labels[i]}
            f.write(json.dumps(row) + "\n")
    return n


def check_labels(labelled: Labelled, data: Path, model: Path) -> None:
    """Refuse a labelled file whose labels the model does not know."""
    known = set(read_manifest(model).labels)
    unknown = sorted(set(labelled.labels) - known)
    if unknown:
        shown = ", ".join(unknown[:10]) + (" …" if len(unknown) > 10 else "")
        raise InputError(f"{data}: {len(unknown)} label(s) the model at {model} does not know: {shown}")


def submit_labelled(
    settings: Settings,
    store: RedisJobStore,
    enqueue: Enqueue,
    data: Path,
    model: Path,
    threshold: float,
    top_k: int | None = None,
    limit: int | None = None,
    policy_file: Path | None = None,
    memory_similarity: float | None = None,
    memory_k: int = 3,
) -> LabelledJob:
    """Submit a labelled CSV as a job whose items carry their gold labels; the LLM is asked below ``threshold``
    (or as the policy file says)."""
    labelled = read_labelled_csv(data)
    check_labels(labelled, data, model)
    spec = build_spec(
        settings,
        model,
        threshold=threshold,
        top_k=top_k,
        policy_file=policy_file,
        memory_similarity=memory_similarity,
        memory_k=memory_k,
    )
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = Path(tmp) / "labelled.jsonl"
        n = write_jsonl(labelled, jsonl, limit)
        job_id = submit_file(store, enqueue, settings, jsonl, spec)
    return LabelledJob(job_id, n, labelled.sha256, model, data)


def split_csv(data: Path, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A labelled CSV cut at random into two halves (``calibration.csv``, ``evaluation.csv`` in ``folder``)."""
    labelled = read_labelled_csv(data)
    order = np.random.default_rng(seed).permutation(len(labelled.texts))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    paths = (folder / "calibration.csv", folder / "evaluation.csv")
    for path, rows in zip(paths, halves, strict=True):
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows((labelled.texts[i], labelled.labels[i]) for i in sorted(rows))
    return paths


def escalation_cap(model: Path, data: Path, share: float) -> float:
    """The confidence below which the least confident ``share`` of the labelled items lie: calibration asks the
    LLM about those only."""
    if share >= 1:
        return 1.0
    confidence = specialist.load(model).predict_proba(read_labelled_csv(data).texts).max(axis=1)
    return float(np.quantile(confidence, share))


def _completed(store: RedisJobStore, job: LabelledJob) -> None:
    status = store.status(job.job_id)
    if status is not JobStatus.COMPLETED:
        raise JobError(f"{job.job_id} ended {status.value}")


def _identity(settings: Settings, store: RedisJobStore, job: LabelledJob) -> Identity:
    """The specialist, LLM, labelled file and prompt (the job's) a policy is calibrated with."""
    return Identity(
        read_manifest(job.model).identity, settings.llm_model, job.data_sha256, store.spec(job.job_id).prompt_version
    )


def calibrate(
    settings: Settings, store: RedisJobStore, job: LabelledJob, opts: FitOptions, memory_k: int | None = None
) -> Policy:
    """Fit a policy from a finished labelled job (``submit_labelled``); the policy says whether it is reachable.
    ``memory_k``: calibrate the answer memory too (a ``minilm`` specialist), with this many neighbours."""
    _completed(store, job)
    results = list(store.iter_results(job.job_id))
    data = calibration_data(results)
    if memory_k is not None:
        data = with_memory(data, results, job, memory_k)
    return fit_policy(data, opts, _identity(settings, store, job))


def with_memory(data: CalibrationData, results: list[ItemResult], job: LabelledJob, k: int) -> CalibrationData:
    """The calibration data with what the answer memory would answer for each item: its ``k`` nearest neighbours
    among the LLM's answers on the other calibration items (``recall.leave_one_out``), against the gold label."""
    model = specialist.load(job.model)
    rows = labelled_rows(results)
    texts = read_labelled_csv(job.data).texts
    vectors = model.embed([texts[int(r.custom_id.removeprefix("row-")) - 2] for r in rows])
    if vectors is None:
        raise InputError(f"{job.model}: the answer memory needs a specialist trained with --features minilm")
    answers = [r.llm_label if r.llm_source is not AnswerSource.MEMORY else None for r in rows]
    labels, similarity = leave_one_out(vectors, answers, k)
    memory_ok = np.array([np.nan if a is None else float(a == r.gold) for a, r in zip(labels, rows, strict=True)])
    return dataclasses.replace(data, memory_ok=memory_ok, memory_similarity=similarity, memory_k=k)


def evaluation(
    settings: Settings,
    store: RedisJobStore,
    job: LabelledJob,
    targets: list[float],
    delta: float,
    chosen: Policy | None = None,
) -> Report:
    """Evaluate a finished labelled job whose every item was also asked to the LLM (threshold 1)."""
    _completed(store, job)
    cal = calibration_data(store.iter_results(job.job_id))
    view = store.get(job.job_id)
    n_items = max(len(cal.confidence), 1)
    cost = CostModel.measured(settings.prices(), view.specialist_seconds / n_items, view.llm_seconds / n_items)
    return evaluate(cal, cost, targets, delta, _identity(settings, store, job), chosen)


def save_policy(policy: Policy, model: Path) -> Path:
    path = model / f"policy-{policy.version}.json"
    path.write_text(policy.model_dump_json(indent=2) + "\n")
    return path
