"""The job commands: submit, status, report, results, errors, cancel; and the wait (a progress bar on stderr)."""

import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import redis
import typer
from kombu.exceptions import OperationalError
from pydantic import BaseModel
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cascade.broker import doctor as checks
from cascade.broker.celery_app import QueueName, app, configure, send_specialist_chunk, send_sweep
from cascade.broker.cli.common import JsonFlag, emit, err, job_store, out, settings_from_env
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.summary import Summary, summarize
from cascade.broker.views import print_cost, print_summary
from cascade.workers.errors import InputError, JobError
from cascade.workers.jobs import JobSpec, JobStatus, OnLLMError

if TYPE_CHECKING:
    from cascade.broker.submit import Enqueue


class Exported(BaseModel):
    """``results``/``errors -o FILE --json``: what was written where."""

    job_id: str
    kind: Literal["results", "errors"]
    lines: int
    path: Path


def submit(
    input_file: Annotated[Path, typer.Argument(help="JSONL: one {custom_id, text[, label]} per line")],
    model: Annotated[Path, typer.Option(help="model folder written by `cascade train`")],
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="escalate below this confidence")] = 0.5,
    policy: Annotated[
        Path | None, typer.Option(help="policy file from `cascade calibrate`, instead of --threshold")
    ] = (None),
    top_k: Annotated[int | None, typer.Option(min=0, help="candidate labels for the LLM; 0 = all")] = None,
    max_escalation: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="budget: share to the LLM")] = None,
    max_llm_cost: Annotated[float | None, typer.Option(min=0.0, help="budget: USD of LLM tokens for the job")] = None,
    explore: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="share of confident items also sent")] = None,
    on_llm_error: Annotated[OnLLMError, typer.Option(help="keep the specialist's answer, or fail the item")] = (
        OnLLMError.KEEP
    ),
    answer_cache: Annotated[
        bool, typer.Option(help="take LLM answers from the answer cache, and add the job's own to it")
    ] = True,
    memory_similarity: Annotated[
        float | None,
        typer.Option(min=-1.0, max=1.0, help="answer memory (minilm): answer from near neighbours this similar"),
    ] = None,
    memory_k: Annotated[int, typer.Option(min=1, max=50, help="answer memory: neighbours that must agree")] = 3,
    prompt: Annotated[
        Path | None,
        typer.Option(help="prompt file (cascade-prompt/1) for the LLM; default: the model folder's prompt.json"),
    ] = None,
    wait: Annotated[bool, typer.Option(help="wait with a progress bar, then print the summary")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Submit a batch job and print its id. With --json: the job (its status once read in) as JSON, or with
    --wait its summary; the id is printed first on stderr."""
    settings = settings_from_env()
    from cascade.broker.submit import build_spec

    spec = build_spec(
        settings,
        model,
        threshold=threshold,
        top_k=top_k,
        on_llm_error=on_llm_error,
        policy_file=policy,
        max_escalation=max_escalation,
        max_llm_cost=max_llm_cost,
        explore=explore,
        answer_cache=answer_cache,
        memory_similarity=memory_similarity,
        memory_k=memory_k,
        prompt_file=prompt,
    )
    job_id = submit_input(settings, input_file, spec)
    if wait:
        emit_summary(as_json, finish(settings, job_id))
    else:
        emit(as_json, job_store(settings).get(job_id))


def enqueue_for(settings: Settings) -> "Enqueue":
    """Chunks go to the fair queue, which hands them to Celery in turn with other owners' (``broker/fair.py``)."""
    from cascade.broker.fair import FairEnqueue, FairQueue

    configure(app, settings)
    store = job_store(settings)
    fair = FairQueue(store.redis, settings.dispatch_depth)
    return FairEnqueue(fair, store, partial(send_specialist_chunk, app))


def submit_input(settings: Settings, input_file: Path, spec: JobSpec) -> str:
    """Create the job, print its id (flushed, alone on its line) before reading the input, then read it in: a user
    whose client dies during the intake knows the job. An intake that stops with an exception fails its job (what
    was stored goes to the errors, the unread lines are named in its error); a client killed outright leaves that
    to the reaper."""
    from cascade.broker.submit import create_job, submit_file
    from cascade.workers.lifecycle import fail_intake

    if not input_file.is_file():
        raise InputError(f"{input_file}: no such file")
    enqueue = enqueue_for(settings)
    store = job_store(settings)
    job_id = create_job(store, settings, spec)
    out.print(job_id)
    out.file.flush()
    try:
        submit_file(store, enqueue, settings, input_file, spec, job_id=job_id)
    except BaseException as e:  # Ctrl-C included: the job would otherwise stay validating
        try:
            fail_intake(store, lambda job: send_sweep(app, job), job_id, f"the intake stopped: {e!r}")
        except redis.RedisError as failed:  # Redis gone: the original exception says more
            err.print(f"{job_id} could not be marked failed: {escape(str(failed))}", highlight=False)
        raise
    return job_id


def finish(settings: Settings, job_id: str) -> Summary:
    """Wait for the job (a progress bar on stderr), then its summary."""
    store = job_store(settings)
    wait_for(store, job_id, settings)
    return summary_of(store, job_id)


def emit_summary(as_json: bool, summary: Summary) -> None:
    """A waited job's summary; exit 1 when it did not complete."""
    emit(as_json, summary, lambda: print_summary(out, summary))
    exit_unless_completed(summary)


def exit_unless_completed(summary: Summary) -> None:
    """Exit 1 (after the summary is out) when the job did not complete: its answer is no."""
    if summary.status != JobStatus.COMPLETED.value:
        raise typer.Exit(1)


def _warn_if_unserved(settings: Settings, timeout: float = 1.0) -> None:
    """One line on stderr when no worker consumes a queue (Celery's inspect): a wait would otherwise look hung."""
    try:
        found = checks.consumers(configure(app, settings), timeout)
    except (redis.RedisError, OperationalError):
        return  # the wait itself says that Redis is gone
    idle = [queue.value for queue in QueueName if not found[queue.value]]
    if not idle:
        return
    waits = "the job waits" if QueueName.SPECIALIST.value in idle else "its escalated items wait"
    err.print(
        f"warning: no worker consumes the {' and '.join(idle)} queue{'s' if len(idle) > 1 else ''} (none answered "
        f"within {timeout:g} s): {waits} until one starts (`cascade worker --queues {','.join(idle)}`)",
        highlight=False,
    )


def wait_for(store: RedisJobStore, job_id: str, settings: Settings | None = None, poll: float = 0.5) -> None:
    """A progress bar until the job ends; with ``settings``, first a warning when no worker would run it."""
    if settings is not None and not store.status(job_id).is_final:
        _warn_if_unserved(settings)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    start = time.monotonic()
    first: int | None = None
    with Progress(*columns, console=err, transient=False) as progress:
        bar = progress.add_task("validating", total=None, rate="")
        while True:
            job = store.get(job_id)
            done = job.counts.completed + job.counts.failed
            first = done if first is None else first
            rate = (done - first) / max(time.monotonic() - start, 1e-9)
            progress.update(
                bar, completed=done, total=job.counts.total, description=job.status.value, rate=f"{rate:,.0f} items/s"
            )
            if job.status.is_final:
                return
            time.sleep(poll)


def summary_of(store: RedisJobStore, job_id: str) -> Summary:
    return summarize(store.get(job_id), store.stats(job_id))


def report(job_id: str, as_json: JsonFlag = False) -> None:
    """Cost and accuracy of a job, from the job store (for a user without Grafana)."""
    summary = summary_of(job_store(settings_from_env()), job_id)

    def show() -> None:
        print_summary(out, summary)
        print_cost(out, summary)

    emit(as_json, summary, show)


def status(
    job_id: str,
    as_json: JsonFlag = False,
    watch: Annotated[bool, typer.Option(help="a live progress bar (rate, time left) until the job ends")] = False,
) -> None:
    """Show a job's status and counts."""
    settings = settings_from_env()
    store = job_store(settings)
    if watch:
        wait_for(store, job_id, settings)
    job = store.get(job_id)
    c = job.counts
    line = (
        f"{job.id} {job.status.value}: total {c.total if c.total is not None else '?'}, completed "
        f"{c.completed}, failed {c.failed}, escalated {c.escalated}" + (f"; {escape(job.error)}" if job.error else "")
    )
    emit(as_json, job, lambda: out.print(line, highlight=False))


def _export(rows: Iterator[BaseModel], output: Path | None) -> int:
    target = output.open("w") if output else sys.stdout
    n = 0
    try:
        for row in rows:
            target.write(row.model_dump_json() + "\n")
            n += 1
    finally:
        if output:
            target.close()
    return n


Output = Annotated[Path | None, typer.Option("-o", "--output", help="a file; default: stdout (JSONL)")]
ExportJson = Annotated[
    bool, typer.Option("--json", help="with -o: print what was written as one JSON document on stdout")
]


def _export_command(kind: Literal["results", "errors"], job_id: str, output: Path | None, as_json: bool) -> None:
    """The results or errors as JSONL, to ``output`` or streamed to stdout (which ``--json`` cannot share)."""
    if as_json and output is None:
        raise typer.BadParameter(
            f"only with -o FILE: without it the {kind} stream to stdout as JSONL", None, None, "--json"
        )
    store = job_store(settings_from_env())
    store.get(job_id)
    n = _export(store.iter_results(job_id) if kind == "results" else store.iter_errors(job_id), output)
    if output is not None:
        err.print(f"{n} {kind} written to {escape(str(output))}", highlight=False)
        emit(as_json, Exported(job_id=job_id, kind=kind, lines=n, path=output))


def results(job_id: str, output: Output = None, as_json: ExportJson = False) -> None:
    """Write the job's results as JSONL: one line per answered item."""
    _export_command("results", job_id, output, as_json)


def errors(job_id: str, output: Output = None, as_json: ExportJson = False) -> None:
    """Write the job's errors as JSONL: refused lines and failed items, each with its line number."""
    _export_command("errors", job_id, output, as_json)


def cancel(job_id: str, as_json: JsonFlag = False) -> None:
    """Cancel a job: no new chunk starts; what is finished is kept; the rest goes to the errors (batch_cancelled).
    A job that has ended (or is ending as expired) is a conflict: exit 5."""
    settings = settings_from_env()
    store = job_store(settings)
    configure(app, settings)
    from cascade.workers.lifecycle import cancel as request_cancel

    if not request_cancel(store, lambda job: send_sweep(app, job), job_id):
        raise JobError(f"{job_id} is {store.status(job_id).value}: only a running job can be cancelled")
    message = f"{job_id} cancelling: a worker writes what is not finished to the errors, then it is cancelled"
    emit(as_json, store.get(job_id), lambda: out.print(message))
