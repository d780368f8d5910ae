"""What `cascade` exits with, and how it says why: one line on stderr, never read as rich markup, with an exit code
per kind (the README's "Exit codes"): usage 2, input 3, not found 4, conflict 5, infrastructure 6; an invalid
CASCADE_* setting is one line naming the variable, exit 2, whatever the command. Real processes, real Redis."""

import subprocess
from pathlib import Path

import pytest

from cascade.broker.cli import ExitCode
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.jobs import JobSpec, JobStatus
from tests.broker.test_cli_help import COMMANDS
from tests.conftest import CASCADE, _env, free_port, write_jsonl

SPEC = JobSpec(model_path="m", model_sha256="s", threshold=0.5, top_k=3, llm_model="x")


def cascade(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CASCADE, *args], env={**_env(settings), **env}, capture_output=True, text=True, timeout=120, check=False
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_the_codes_are_distinct() -> None:
    assert [int(c) for c in ExitCode] == list(range(7))


@pytest.mark.parametrize(
    "args", [["status"], ["no-such-command"], ["submit", "x.jsonl"], ["worker", "--concurrency", "x"]]
)
def test_a_wrong_command_line_exits_2(settings: Settings, args: list[str]) -> None:
    done = cascade(settings, *args)
    assert done.returncode == ExitCode.USAGE == 2, done.stderr
    assert "Error:" in done.stderr
    assert "╭" not in done.stderr  # click's plain message, no rich box


def test_an_unusable_input_exits_3_and_its_text_is_not_read_as_markup(settings: Settings) -> None:
    done = cascade(settings, "worker", "--queues", "[bold]x")
    assert done.returncode == ExitCode.INPUT == 3
    assert one_line(done) == "error: --queues: unknown queue(s) ['[bold]x']; use specialist, llm"


def test_an_unusable_model_folder_exits_3(settings: Settings, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "a", "text": "hi"}])
    done = cascade(settings, "submit", str(data), "--model", str(tmp_path / "[red]no-model"))
    assert done.returncode == ExitCode.INPUT
    line = one_line(done)
    assert line.startswith("error: ")
    assert "[red]no-model: no manifest.json" in line


def test_an_unknown_job_exits_4(settings: Settings, redis_db: object) -> None:
    for command in ("status", "report", "results", "errors", "cancel"):
        done = cascade(settings, command, "batch_[b]nope")
        assert done.returncode == ExitCode.NOT_FOUND == 4, (command, done.stderr)
        assert one_line(done) == "error: no job 'batch_[b]nope'"


def test_cancelling_a_job_that_ended_is_a_conflict_exit_5(settings: Settings, store: RedisJobStore) -> None:
    running, ended = store.create(SPEC), store.create(SPEC)
    store.end(ended, JobStatus.COMPLETED)
    done = cascade(settings, "cancel", ended)
    assert done.returncode == ExitCode.CONFLICT == 5
    assert one_line(done) == f"error: {ended} is completed: only a running job can be cancelled"
    assert done.stdout == ""
    assert store.status(ended) is JobStatus.COMPLETED
    done = cascade(settings, "cancel", running)  # a running job still cancels: exit 0
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{running} cancelling")
    assert store.status(running) is JobStatus.CANCELLING


def test_redis_out_of_reach_exits_6(settings: Settings) -> None:
    done = cascade(settings, "status", "batch_x", CASCADE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == ExitCode.INFRASTRUCTURE == 6
    assert one_line(done).startswith("error: Redis does not answer at CASCADE_REDIS_URL (")


def test_an_llm_server_out_of_reach_exits_6(settings: Settings) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    done = cascade(settings, "worker", "--queues", "llm", CASCADE_LLM_URL=url, CASCADE_LLM_MAX_RETRIES="0")
    assert done.returncode == ExitCode.INFRASTRUCTURE
    line = one_line(done)
    assert line.startswith(f"error: the LLM server at {url}")
    assert "does not answer" in line


# Arguments that click accepts, so that each command reaches its settings. `train` reads none unless it encodes
# (minilm), `monitoring-files` none at all.
ARGS = {
    "api": [],
    "calibrate": ["--model", "m", "--data", "d.csv", "--target-accuracy", "0.9"],
    "cancel": ["batch_x"],
    "demo": ["data"],
    "doctor": [],
    "errors": ["batch_x"],
    "evaluate": ["--model", "m", "--data", "d.csv"],
    "learn": ["--model", "m", "--data", "d.csv", "--from-job", "batch_x", "--out", "o"],
    "promote": ["--model", "m", "--candidate", "c", "--holdout", "h.csv"],
    "report": ["batch_x"],
    "results": ["batch_x"],
    "status": ["batch_x"],
    "submit": ["in.jsonl", "--model", "m"],
    "worker": ["--queues", "specialist"],
}


def test_every_command_that_reads_settings_is_covered() -> None:
    assert set(ARGS) | {"train", "monitoring-files"} == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(ARGS))
def test_an_invalid_setting_is_one_line_naming_it_for_every_command(
    settings: Settings, tmp_path: Path, command: str
) -> None:
    done = subprocess.run(
        [CASCADE, command, *ARGS[command]],
        env={**_env(settings), "CASCADE_THRESHOLD": "abc"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == ExitCode.USAGE, done.stderr
    line = one_line(done)
    assert line.startswith("error: CASCADE_THRESHOLD: ")
    assert "valid number" in line
