"""What every ``cascade`` command shares: the exit codes, the two consoles, the settings and the job store, and the
``--json`` rule.

``--json`` (``JsonFlag``): stdout carries exactly one JSON document, a pydantic model's dump (``emit``), and
nothing else; whatever the command says besides (a job id printed early, narration, progress, warnings) goes to
stderr, because the flag's callback points ``out`` there before the command runs. Errors are unchanged: one line on
stderr and their exit code (``main``), no document. A command whose answer is no (exit 1) emits its document first.
"""

import sys
from collections.abc import Callable
from enum import IntEnum
from typing import Annotated

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

from cascade.broker.files import StorageFullError
from cascade.broker.results import open_parts
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.errors import (
    CascadeError,
    InputError,
    JobError,
    LLMError,
    ModelError,
    NotFoundError,
    SettingsError,
    StorageError,
)

out = Console(soft_wrap=True)
"""What a command prints for a person: stdout, or stderr under ``--json``."""
err = Console(stderr=True, soft_wrap=True)


class ExitCode(IntEnum):
    """What ``cascade`` exits with (the README's "Exit codes")."""

    OK = 0
    FAILED = 1
    """The command ran and its answer is no: a job that did not complete, no policy certified, a candidate refused,
    a doctor check that failed."""
    USAGE = 2
    """click's for a wrong command line; also an invalid ``CASCADE_*`` setting (the environment is part of the
    invocation: ``--metrics-port`` and ``CASCADE_METRICS_PORT`` are one setting)."""
    INPUT = 3
    """A file, folder, model or value given is unusable (``InputError``, ``ModelError``)."""
    NOT_FOUND = 4
    """No such job or file (``NotFoundError``)."""
    CONFLICT = 5
    """The job's state does not allow it: cancelling a job that has ended (``JobError``)."""
    INFRASTRUCTURE = 6
    """Redis, the LLM server or the file or result store does not answer, refuses, or is full."""


_EXIT_CODES: tuple[tuple[type[Exception], ExitCode], ...] = (
    (NotFoundError, ExitCode.NOT_FOUND),  # before JobError, its parent
    (JobError, ExitCode.CONFLICT),
    (SettingsError, ExitCode.USAGE),
    (InputError, ExitCode.INPUT),
    (ModelError, ExitCode.INPUT),
    (LLMError, ExitCode.INFRASTRUCTURE),
    (StorageError, ExitCode.INFRASTRUCTURE),
    (StorageFullError, ExitCode.INFRASTRUCTURE),
)


def exit_code(error: CascadeError) -> ExitCode:
    return next((code for kind, code in _EXIT_CODES if isinstance(error, kind)), ExitCode.FAILED)


def _json_output(ctx: typer.Context, as_json: bool) -> bool:
    """``--json``'s callback, run while the command line is parsed (before the command): with it, stdout is kept
    for the document, and ``out`` prints to stderr until the command ends."""
    if as_json:
        out.stderr = True
        ctx.call_on_close(lambda: setattr(out, "stderr", False))
    return as_json


JsonFlag = Annotated[
    bool,
    typer.Option("--json", callback=_json_output, help="print the result as one JSON document (the rest: stderr)"),
]


def emit(as_json: bool, result: BaseModel, show: Callable[[], None] | None = None) -> None:
    """A command's result: under ``--json`` the model's JSON on stdout, alone; else ``show`` prints it for a
    person (None: what the command printed on the way says it all)."""
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        sys.stdout.flush()
    elif show is not None:
        show()


def settings_from_env() -> Settings:
    """The settings from the environment; an invalid ``CASCADE_*`` variable is a one-line ``SettingsError`` naming
    it. Every command builds its settings here."""
    try:
        return Settings()
    except ValidationError as e:
        problems = []
        for error in e.errors():
            where = f"CASCADE_{str(error['loc'][0]).upper()}: " if error["loc"] else ""  # else: named in the message
            problems.append(where + error["msg"].removeprefix("Value error, "))
        raise SettingsError("; ".join(problems)) from e


def job_store(settings: Settings) -> RedisJobStore:
    return RedisJobStore.from_url(settings.redis_url, settings.job_ttl, open_parts(settings))
