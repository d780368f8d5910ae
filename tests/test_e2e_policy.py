"""Calibration, evaluation, and jobs under a policy, against the real vLLM CPU server (SmolLM2)."""

import csv
import json
import subprocess
from pathlib import Path

import pytest

from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.items import Route
from cascade.workers.jobs import JobStatus
from cascade.workers.policy import load_policy
from tests.conftest import CASCADE, WorkerFactory, _env, dataset, wait_for, write_jsonl
from tests.test_queue_integration import export, submit

pytestmark = pytest.mark.llm


def banking_csv(tmp_path: Path, start: int, n: int) -> Path:
    with (dataset("banking77") / "test.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[start : start + n]
    path = tmp_path / f"b77-{start}-{n}.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    return path


def cascade(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CASCADE, *args], env=_env(settings), capture_output=True, text=True, check=check, timeout=900
    )


@pytest.fixture(scope="module")
def calibrated(
    settings: Settings, banking_model: Path, vllm_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A policy calibrated with SmolLM2 on 600 Banking77 test items (a worker serving both queues runs meanwhile)."""
    tmp = tmp_path_factory.mktemp("calibrate")
    env = _env(settings)
    with (tmp / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [CASCADE, "worker", "--queues", "specialist,llm", "--hostname", "cal@%h"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        data = banking_csv(tmp, 0, 600)
        out = cascade(
            settings,
            "calibrate",
            "--model",
            str(banking_model),
            "--data",
            str(data),
            "--target-accuracy",
            "0.85",
            "--delta",
            "0.05",
            "--max-escalation",
            "0.25",
        )
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert "accuracy >= 0.85 with probability >= 0.95" in out.stdout
    policies = sorted(banking_model.glob("policy-*.json"))
    assert policies
    return policies[-1]


def test_calibration_with_smollm2_finds_escalation_does_not_help(calibrated: Path, banking_model: Path) -> None:
    policy = load_policy(calibrated)
    assert policy.reachable
    assert policy.certificate is not None
    assert policy.certificate.escalation_share <= 0.02  # (almost) nothing escalated
    measured = [b for b in policy.bands if b.n_llm > 0 and b.specialist_accuracy is not None]
    assert measured
    llm = sum(b.llm_accuracy * b.n_llm for b in measured) / sum(b.n_llm for b in measured)  # type: ignore[operator]
    spec = sum(b.specialist_accuracy * b.n_llm for b in measured) / sum(b.n_llm for b in measured)  # type: ignore[operator]
    assert llm < spec, "SmolLM2 should measure worse than the specialist where it was asked"
    assert policy.mean_llm_tokens > 0
    assert policy.specialist_sha256 == json.loads((banking_model / "manifest.json").read_text())["model_sha256"]


def test_evaluation_report_shows_why(
    settings: Settings, banking_model: Path, calibrated: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    start_worker(queues="specialist,llm")
    data = banking_csv(tmp_path, 1000, 160)
    out = cascade(
        settings,
        "evaluate",
        "--model",
        str(banking_model),
        "--data",
        str(data),
        "--policy",
        str(calibrated),
        "--targets",
        "0.8,0.9",
        "--out",
        str(tmp_path / "report"),
    )
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["items"] == 160
    assert report["llm"]["accuracy"] < report["specialist"]["accuracy"]
    assert report["llm"]["llm_tokens"] > 0
    assert report["specialist"]["escalation_share"] == 0.0
    assert report["policy"]["escalation_share"] <= 0.05
    assert len(report["curve"]) >= 10
    assert (tmp_path / "report" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy per confidence band" in out.stdout


def test_job_under_policy_explores_and_records_the_policy(
    settings: Settings,
    store: RedisJobStore,
    banking_model: Path,
    calibrated: Path,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    with (dataset("banking77") / "test.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[2000:2300]
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [{"custom_id": f"p{i}", "text": r["text"], "label": r["label"]} for i, r in enumerate(rows)],
    )
    start_worker(queues="specialist,llm")
    job = submit(settings, path, banking_model, "--policy", str(calibrated), "--explore", "0.1")
    wait_for(store, job, timeout=600)
    view = store.get(job)
    assert view.status is JobStatus.COMPLETED
    assert view.spec.policy_version == load_policy(calibrated).version
    results = export(settings, "results", job, tmp_path)
    explored = [r for r in results if r["route"] == Route.EXPLORE.value]
    assert 10 <= len(explored) <= 60
    for r in explored:
        assert r["sampling_probability"] == 0.1
        assert r["tier"] == "specialist"
        assert r["label"] == r["specialist_label"]
        assert r["llm_label"] in r["candidates"] or r["llm_error"]
    assert store.stats(job).routes["explore"] == len(explored)


def test_budget_caps_escalation_per_chunk(
    settings: Settings,
    store: RedisJobStore,
    banking_model: Path,
    vllm_server: str,
    start_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    with (dataset("banking77") / "test.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[2500:2800]
    path = write_jsonl(tmp_path / "in.jsonl", [{"custom_id": f"q{i}", "text": r["text"]} for i, r in enumerate(rows)])
    start_worker(queues="specialist,llm")
    job = submit(settings, path, banking_model, "--threshold", "1.0", "--max-escalation", "0.05")
    wait_for(store, job, timeout=600)
    results = export(settings, "results", job, tmp_path)
    assert len(results) == 300
    assert store.get(job).counts.escalated == 15  # 5% of the one 300-item chunk
    assert sum(r["budget_limited"] for r in results) == 285
