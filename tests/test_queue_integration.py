"""Jobs through the real Redis and real `cascade worker` processes (no LLM needed: threshold 0)."""

import csv
import json
import subprocess
from pathlib import Path

from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.jobs import JobStatus
from tests.conftest import CASCADE, WorkerFactory, _env, dataset, wait_for, write_jsonl


def sms_rows() -> list[dict[str, object] | str]:
    with (dataset("sms_spam") / "all.csv").open(newline="") as f:
        return [{"custom_id": f"sms-{r['id']}", "text": r["text"], "label": r["label"]} for r in csv.DictReader(f)]


def submit(settings: Settings, path: Path, model: Path, *extra: str) -> str:
    out = subprocess.run(
        [CASCADE, "submit", str(path), "--model", str(model), *extra],
        env=_env(settings),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return out.stdout.strip().splitlines()[-1]


def export(settings: Settings, what: str, job: str, tmp_path: Path) -> list[dict[str, object]]:
    target = tmp_path / f"{what}.jsonl"
    subprocess.run([CASCADE, what, job, "-o", str(target)], env=_env(settings), check=True, timeout=120)
    return [json.loads(line) for line in target.read_text().splitlines()]


def test_sms_job_comes_back_complete_with_bad_lines_in_errors(
    settings: Settings, store: RedisJobStore, sms_model: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    rows = sms_rows()
    bad: dict[int, str] = {}  # 1-based line number -> expected error code
    for position, (line, code) in enumerate(
        [
            ("not json at all", "invalid_json"),
            (json.dumps({"custom_id": "no-text"}), "missing_field"),
            (json.dumps({"custom_id": rows[0]["custom_id"], "text": "again"}), "duplicate_custom_id"),  # type: ignore[index]
            (json.dumps({"custom_id": "huge", "text": "x" * (settings.max_text_chars + 1)}), "text_too_long"),
        ]
    ):
        at = 100 + position * 1000
        rows.insert(at, line)
        bad[at + 1] = code
    path = write_jsonl(tmp_path / "sms.jsonl", rows)
    start_worker(queues="specialist", concurrency=2)
    start_worker(queues="specialist", concurrency=1)

    job = submit(settings, path, sms_model, "--threshold", "0")
    wait_for(store, job, timeout=300)

    view = store.get(job)
    assert view.status is JobStatus.COMPLETED
    results = export(settings, "results", job, tmp_path)
    errors = export(settings, "errors", job, tmp_path)
    assert {e["line"]: e["code"] for e in errors} == bad
    result_ids = [r["custom_id"] for r in results]
    assert len(result_ids) == len(set(result_ids)) == len(rows) - len(bad)
    result_lines = [int(str(r["line"])) for r in results]
    assert sorted(result_lines + list(bad)) == list(range(1, len(rows) + 1))  # every line exactly once
    assert (view.counts.total, view.counts.completed, view.counts.failed) == (len(rows), len(results), len(bad))
    # each chunk ran once: a message delivered to more than one queue would run twice
    n_chunks = -(-(len(rows) - len(bad)) // settings.chunk_size)
    logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    assert logs.count("Task cascade.specialist_chunk[") == 2 * n_chunks  # 'received' and 'succeeded' lines
    assert logs.count("succeeded") == n_chunks
    accuracy = sum(r["correct"] is True for r in results) / len(results)
    assert accuracy > 0.95
    assert all(r["tier"] == "specialist" for r in results)


def test_file_with_no_valid_line_fails_at_validating(
    settings: Settings, store: RedisJobStore, sms_model: Path, tmp_path: Path
) -> None:
    path = tmp_path / "garbage.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary\nnot json\n")
    job = submit(settings, path, sms_model)
    view = store.get(job)
    assert view.status is JobStatus.FAILED
    assert view.counts.failed == view.counts.total == 4  # four lines, none valid


def test_worker_refuses_to_serve_llm_queue_without_a_working_server(settings: Settings) -> None:
    env = {**_env(settings), "CASCADE_LLM_URL": "http://127.0.0.1:9/v1", "CASCADE_LLM_MAX_RETRIES": "0"}
    proc = subprocess.run(
        [CASCADE, "worker", "--queues", "llm"], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 6  # infrastructure (README: exit codes)
    assert "does not answer" in proc.stderr


def test_calibration_refuses_labels_the_model_does_not_know(
    settings: Settings, banking_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "cal.csv"
    data.write_text("text,label\nwhere is my card,card_arrival\nwhat is the weather,weather_forecast\n")
    proc = subprocess.run(
        [CASCADE, "calibrate", "--model", str(banking_model), "--data", str(data), "--target-accuracy", "0.9"],
        check=False,
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3  # input
    assert "1 label(s) the model" in proc.stderr
    assert "weather_forecast" in proc.stderr
