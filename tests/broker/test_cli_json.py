"""`--json` on every command that prints a result: stdout is exactly one JSON document with the result's keys
(whatever else the command says goes to stderr), and an error keeps its exit code and one line on stderr. Real
processes, the tests' Redis database, real workers and, for the commands that ask it, the real vLLM server.

Small Banking77 subsets (Casanueva et al., 2020, CC BY 4.0), TF-IDF specialists: 6 intents.
"""

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cascade.broker.cli import ExitCode
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from tests.broker.test_cli_help import COMMANDS, GROUP
from tests.broker.test_learn import right_answers, root_model, split, write_csv, wrong_answers
from tests.conftest import CASCADE, WorkerFactory, _env, write_jsonl

STREAMING = {"results", "errors"}
"""Their output is the JSONL stream itself; --json only with -o FILE (what was written)."""
SERVERS = {"worker", "api"}
"""They serve until stopped: no result to print."""


@dataclass
class Setup:
    settings: Settings
    store: RedisJobStore
    tmp: Path
    start_worker: WorkerFactory

    def model(self) -> tuple[Path, Path]:
        """A specialist trained on 30 items per intent (a real folder of the test's own), and its training CSV."""
        return root_model(self.tmp, 30)

    def finished_job(self) -> str:
        model, _ = self.model()
        return right_answers(self.store, model, 30, 40)

    def labelled(self, name: str = "labelled.csv", per_label: int = 6) -> Path:
        return write_csv(self.tmp / name, *split("test", 0, per_label))

    def input_file(self, n: int = 12) -> Path:
        texts, labels = split("test", 0, n // 6)
        rows: list[dict[str, object] | str] = [
            {"custom_id": f"i{i}", "text": t, "label": lab}
            for i, (t, lab) in enumerate(zip(texts, labels, strict=True))
        ]
        return write_jsonl(self.tmp / "in.jsonl", rows)


def _submit(s: Setup) -> list[str]:
    model, _ = s.model()
    return ["submit", str(s.input_file()), "--model", str(model)]


def _submit_wait(s: Setup) -> list[str]:
    s.start_worker("specialist")
    return [*_submit(s), "--threshold", "0", "--wait"]


def _cancel(s: Setup) -> list[str]:
    job = _run(s, _submit(s))["id"]  # no worker: it stays in progress
    return ["cancel", job]


def _learn(s: Setup) -> list[str]:
    model, data = s.model()
    job = right_answers(s.store, model)
    return ["learn", "--model", str(model), "--data", str(data), "--from-job", job, "--out", str(s.tmp / "v2")]


def _promote(s: Setup) -> list[str]:
    model, data = s.model()
    job = right_answers(s.store, model)
    _run(s, ["learn", "--model", str(model), "--data", str(data), "--from-job", job, "--out", str(s.tmp / "v2")])
    holdout = write_csv(s.tmp / "held_out.csv", *split("test", 0, 40))
    return ["promote", "--model", str(model), "--candidate", str(s.tmp / "v2"), "--holdout", str(holdout)]


def _calibrate(s: Setup) -> list[str]:
    s.start_worker("specialist,llm")
    model, _ = s.model()
    return ["calibrate", "--model", str(model), "--data", str(s.labelled()), "--target-accuracy", "0.5"]


def _evaluate(s: Setup) -> list[str]:
    s.start_worker("specialist,llm")
    model, _ = s.model()
    data = s.labelled(per_label=10)
    out = str(s.tmp / "report")
    return ["evaluate", "--model", str(model), "--data", str(data), "--targets", "0.6", "--out", out]


def _demo(s: Setup) -> list[str]:
    s.start_worker("specialist,llm")
    folder = s.tmp / "banking"
    folder.mkdir()
    write_csv(folder / "train.csv", *split("train", 0, 30))
    write_csv(folder / "test.csv", *split("test", 0, 20))
    return ["demo", str(folder), "--model", str(s.tmp / "models" / "demo"), "--target-accuracy", "0.6"]


@dataclass(frozen=True)
class Case:
    args: Callable[[Setup], list[str]]
    keys: set[str]
    codes: frozenset[int] = frozenset({0})
    """Exit codes the command may end with: 1 is its answer "no" (a doctor check FAILed, no policy certified)."""


JOB = {"id", "status", "counts", "spec"}
SUMMARY = {"job_id", "status", "total", "completed", "accuracy", "escalation_share", "tiers", "cost_usd"}
CASES = {
    "train": Case(
        lambda s: ["train", str(write_csv(s.tmp / "t.csv", *split("train", 0, 20))), "--out", str(s.tmp / "m")],
        {"model_dir", "items", "labels", "seconds", "holdout_accuracy", "n_holdout"},
    ),
    "submit": Case(_submit, JOB),
    "submit --wait": Case(_submit_wait, SUMMARY),
    "status": Case(lambda s: ["status", s.finished_job()], JOB),
    "status --watch": Case(lambda s: ["status", s.finished_job(), "--watch"], JOB),
    "report": Case(lambda s: ["report", s.finished_job()], SUMMARY),
    "results -o": Case(lambda s: ["results", s.finished_job(), "-o", str(s.tmp / "r.jsonl")], {"job_id", "lines"}),
    "errors -o": Case(lambda s: ["errors", s.finished_job(), "-o", str(s.tmp / "e.jsonl")], {"job_id", "lines"}),
    "cancel": Case(_cancel, JOB),
    "monitoring-files": Case(lambda s: ["monitoring-files", "--out", str(s.tmp / "mon")], {"files"}),
    "doctor": Case(lambda s: ["doctor", "--timeout", "1"], {"checks", "failed"}, frozenset({0, 1})),
    "learn": Case(_learn, {"model_dir", "offered", "used", "dropped", "holdout_accuracy", "promotion"}),
    "promote": Case(_promote, {"promoted", "previous", "serving", "p_worse", "current_accuracy", "b", "c"}),
    "calibrate": Case(
        _calibrate, {"policy_file", "policy"}, frozenset({0, 1})
    ),  # a tiny calibration set may certify nothing
    "evaluate": Case(_evaluate, {"items", "specialist", "llm", "targets", "bands"}),
    "demo": Case(_demo, {"policy_file", "policy", "job"}, frozenset({0, 1})),
}
LLM = {"calibrate", "evaluate", "demo"}


def _cascade(s: Setup, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CASCADE, *args], env=_env(s.settings), cwd=s.tmp, capture_output=True, text=True, timeout=600, check=False
    )


def _run(s: Setup, args: list[str]) -> dict[str, object]:
    done = _cascade(s, [*args, "--json"])
    assert done.returncode == 0, done.stderr
    document: dict[str, object] = json.loads(done.stdout)
    return document


@pytest.fixture
def setup(settings: Settings, store: RedisJobStore, tmp_path: Path, start_worker: WorkerFactory) -> Setup:
    return Setup(settings, store, tmp_path, start_worker)


def test_every_command_that_prints_a_result_is_covered() -> None:
    covered = {name.split(" ")[0] for name in CASES}
    assert covered == set(COMMANDS) - SERVERS
    for command in COMMANDS:
        options = {o for p in GROUP.commands[command].params for o in p.opts}  # type: ignore[attr-defined]
        assert ("--json" in options) is (command not in SERVERS), command


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.llm) if n.split(" ")[0] in LLM else n for n in CASES]
)
def test_json_is_one_document_on_stdout_with_the_results_keys(setup: Setup, name: str) -> None:
    case = CASES[name]
    done = _cascade(setup, [*case.args(setup), "--json"])
    assert done.returncode in case.codes, done.stderr
    assert "Traceback" not in done.stderr
    document = json.loads(done.stdout)  # one document, nothing before or after it
    assert isinstance(document, dict)
    assert case.keys <= set(document), sorted(set(document))
    if name == "submit":
        assert done.stderr.splitlines()[0] == document["id"]  # the id, first and flushed, on stderr
    if name == "cancel":
        assert document["status"] == "cancelling"
    if name.startswith(("results", "errors")):
        assert Path(str(document["path"])).read_text().count("\n") == document["lines"]
    if name == "promote":
        assert document["promoted"] is True
        assert document["serving"] == str(setup.tmp / "v2")
    if name == "doctor":
        assert document["failed"] == (done.returncode == 1)
        assert {c["outcome"] for c in document["checks"]} <= {"ok", "WARN", "FAIL", "skip"}
    if name == "train":
        assert (document["items"], document["labels"]) == (120, 6)
    if name.startswith("status"):
        assert document["status"] == "completed"


def test_a_refused_candidate_exits_1_after_its_document(setup: Setup) -> None:
    """`learn --holdout --json`: the gate's outcome is in the document, and its refusal is still exit 1."""
    model, data = setup.model()
    job = wrong_answers(setup.store, model)
    holdout = write_csv(setup.tmp / "held_out.csv", *split("test", 0, 40))
    args = ["learn", "--model", str(model), "--data", str(data), "--from-job", job, "--out", str(setup.tmp / "v2")]
    done = _cascade(setup, [*args, "--holdout", str(holdout), "--json"])
    assert done.returncode == ExitCode.FAILED, done.stderr
    document = json.loads(done.stdout)
    assert document["promotion"]["promoted"] is False
    assert document["promotion"]["serving"] == document["promotion"]["previous"] == str(model)
    assert [line for line in done.stderr.splitlines() if line.startswith("refused:")]


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (["status", "batch_[b]nope"], ExitCode.NOT_FOUND, "error: no job 'batch_[b]nope'"),
        (["report", "batch_nope"], ExitCode.NOT_FOUND, "error: no job 'batch_nope'"),
        (["train", "missing.csv", "--out", "m"], ExitCode.INPUT, None),
        (["results", "batch_nope"], ExitCode.USAGE, None),  # --json without -o: the stream is stdout's
    ],
)
def test_an_error_with_json_keeps_its_exit_code_and_one_line_without_traceback(
    setup: Setup, redis_db: object, args: list[str], code: ExitCode, line: str | None
) -> None:
    done = _cascade(setup, [*args, "--json"])
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    if line is not None:
        assert done.stderr.splitlines() == [line]
    elif code is ExitCode.INPUT:
        assert len(done.stderr.strip().splitlines()) == 1
        assert done.stderr.startswith("error: ")


def test_cancelling_an_ended_job_with_json_is_still_a_conflict(setup: Setup) -> None:
    ended = setup.finished_job()
    done = _cascade(setup, ["cancel", ended, "--json"])
    assert done.returncode == ExitCode.CONFLICT, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"error: {ended} is completed: only a running job can be cancelled"]
