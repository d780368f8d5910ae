"""`cascade submit`: the job id is printed (and flushed) before the input is read, so a client that dies during
intake still knows its job; an intake that raises in the client fails the job instead of leaving an orphan."""

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cascade.broker import keys
from cascade.broker import submit as submit_module
from cascade.broker.cli import cli, jobs
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.errors import InputError
from cascade.workers.jobs import JobSpec, JobStatus
from cascade.workers.lifecycle import sweep_job
from tests.conftest import CASCADE, WorkerFactory, _env, write_jsonl

SPEC = JobSpec(model_path="m", model_sha256="s", threshold=0.5, top_k=3, llm_model="x")


@pytest.fixture
def wired(store: RedisJobStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The CLI on the tests' Redis database, with no Celery and no model folder; returns the chunks enqueued."""
    sent: list[int] = []
    monkeypatch.setattr(jobs, "job_store", lambda _settings: store)
    monkeypatch.setattr(jobs, "enqueue_for", lambda _settings: lambda _job, index: sent.append(index))
    monkeypatch.setattr(submit_module, "build_spec", lambda *_a, **_k: SPEC)
    return sent


def run_submit(path: Path, wait: bool = False, as_json: bool = False) -> None:
    jobs.submit(
        input_file=path,
        model=Path("unused"),
        threshold=0.5,
        policy=None,
        top_k=None,
        max_escalation=None,
        max_llm_cost=None,
        explore=None,
        on_llm_error=SPEC.on_llm_error,
        wait=wait,
        as_json=as_json,
    )


def spy_intake(
    monkeypatch: pytest.MonkeyPatch, seen: Callable[[str | None], None], fail: BaseException | None = None
) -> None:
    real = submit_module.submit_file

    def spy(*args: object, **kwargs: object) -> str:
        seen(kwargs.get("job_id"))  # type: ignore[arg-type]
        if fail is not None:
            raise fail
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(submit_module, "submit_file", spy)


def test_the_job_id_is_printed_before_the_input_is_read(
    store: RedisJobStore,
    wired: list[int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "a", "text": "hi"}, "[" * 200_000])
    printed: list[str] = []

    def seen(job_id: str | None) -> None:
        printed.append(capsys.readouterr().out)
        assert job_id is not None
        assert store.status(job_id) is JobStatus.VALIDATING

    spy_intake(monkeypatch, seen)
    run_submit(path)
    assert len(printed) == 1
    job = printed[0].strip()
    assert printed[0] == job + "\n"
    assert job.startswith("batch_")
    assert capsys.readouterr().out == ""  # printed once, alone on its line
    assert store.status(job) is JobStatus.IN_PROGRESS
    assert wired == [0]
    assert [e.code for e in store.iter_errors(job)] == ["too_deep"]


def test_a_missing_input_file_creates_no_job(store: RedisJobStore, wired: list[int], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        run_submit(tmp_path / "missing.jsonl")
    assert store.redis.zcard(keys.JOBS) == 0


@pytest.mark.parametrize("fail", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_intake_that_dies_in_the_client_fails_its_job(
    store: RedisJobStore,
    wired: list[int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    fail: BaseException,
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "a", "text": "hi"}])
    spy_intake(monkeypatch, lambda _job: None, fail)
    with pytest.raises(type(fail)):
        run_submit(path)
    job = capsys.readouterr().out.strip()
    assert store.status(job) is JobStatus.FINALIZING  # its sweep is sent to a worker
    assert sweep_job(store, job) is JobStatus.FAILED  # what the worker does
    view = store.get(job)
    assert view.error is not None
    assert type(fail).__name__ in view.error
    assert "the input lines after line 0 were not read" in view.error


def test_wait_prints_the_id_then_the_summary(
    store: RedisJobStore, wired: list[int], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", ["{broken"])  # no valid line: the job fails at once
    with pytest.raises(typer.Exit):  # a job that does not complete exits 1
        run_submit(path, wait=True)
    job, *summary = capsys.readouterr().out.splitlines()
    assert store.status(job) is JobStatus.FAILED
    assert any("failed" in line for line in summary)


def test_wait_with_json_prints_the_id_on_stderr_and_only_the_summary_on_stdout(
    store: RedisJobStore, wired: list[int], tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", ["{broken"])
    done = CliRunner().invoke(cli, ["submit", str(path), "--model", "unused", "--wait", "--json"])
    assert done.exit_code == 1, done.output  # a job that does not complete exits 1, after its summary
    job = done.stderr.splitlines()[0]
    assert store.status(job) is JobStatus.FAILED
    summary = json.loads(done.stdout)
    assert (summary["job_id"], summary["status"]) == (job, "failed")


def test_wait_warns_once_when_no_worker_consumes_the_queues_then_keeps_waiting(
    settings: Settings, store: RedisJobStore, sms_model: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"custom_id": f"m{i}", "text": f"free entry {i}"} for i in range(5)])
    args = [CASCADE, "submit", str(path), "--model", str(sms_model), "--threshold", "0", "--wait"]
    stderr: list[str] = []
    with subprocess.Popen(args, env=_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or []), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 60
            while not any(line.startswith("warning:") for line in stderr):
                assert proc.poll() is None, stderr
                assert time.monotonic() < deadline, f"no warning: {stderr}"
                time.sleep(0.2)
            time.sleep(2)
            assert proc.poll() is None  # still waiting after the warning
            start_worker("specialist")
            assert proc.wait(timeout=300) == 0, stderr
        finally:
            if proc.poll() is None:
                proc.kill()
        reader.join(timeout=30)
        job = (proc.stdout.read() if proc.stdout else "").splitlines()[0]
    warnings = [line.rstrip("\n") for line in stderr if "warning" in line]
    assert warnings == [
        "warning: no worker consumes the specialist and llm queues (none answered within 1 s): the job waits until "
        "one starts (`cascade worker --queues specialist,llm`)"
    ]
    assert store.status(job) is JobStatus.COMPLETED
