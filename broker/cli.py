"""The ``cascade`` command: train, worker, submit, status, results, errors, cancel, demo."""

import asyncio
import csv
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from broker.celery_app import QueueName, app, configure, send_specialist_chunk
from broker.exceptions import CascadeError, InputError
from broker.jobs import JobSpec, JobStatus, OnLLMError
from broker.settings import Settings
from broker.store import JobStore
from broker.submit import submit_file
from broker.summary import Summary, summarize

cli = typer.Typer(
    help="Cascade: a cheap specialist on every item, an LLM (vLLM) on the unsure ones.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def _store(settings: Settings) -> JobStore:
    return JobStore.from_url(settings.redis_url, settings.job_ttl)


@cli.command()
def train(
    data: Annotated[Path, typer.Argument(help="CSV with text and label columns")],
    out_dir: Annotated[Path, typer.Option("--out", help="model folder to write")],
    holdout: Annotated[float, typer.Option(min=0.05, max=0.5, help="share held out for the accuracy")] = 0.2,
    seed: int = 0,
) -> None:
    """Train the specialist and save it with its manifest."""
    from workers import specialist
    from workers.data import read_labelled_csv

    labelled = read_labelled_csv(data)
    report = specialist.train(labelled.texts, labelled.labels, holdout=holdout, seed=seed)
    specialist.save(report, out_dir, labelled.sha256)
    out.print(
        f"trained on {len(labelled.texts)} items, {len(report.labels)} labels, {report.seconds:.1f} s; "
        f"held-out accuracy {report.holdout_accuracy:.3f} ({report.n_holdout} items); saved {out_dir}"
    )


@cli.command()
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated: specialist, llm")] = "specialist,llm",
    concurrency: Annotated[int, typer.Option(min=1)] = 2,
    loglevel: str = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name")] = None,
) -> None:
    """Start a Celery worker. Serving the llm queue first checks that the vLLM server constrains its output."""
    from workers.llm import LLMClient

    settings = Settings()
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = set(names) - {q.value for q in QueueName}
    if unknown or not names:
        raise InputError(f"--queues: unknown queue(s) {sorted(unknown)}; use specialist, llm")
    if QueueName.LLM.value in names:

        async def check() -> None:
            async with LLMClient(settings) as client:
                await client.check_constrained()

        asyncio.run(check())
        err.print(f"LLM server at {settings.llm_url} constrains its output: ok")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    configure(app, settings)
    argv = ["worker", "-Q", ",".join(names), "-c", str(concurrency), "--loglevel", loglevel]
    if hostname:
        argv += ["-n", hostname]
    app.worker_main(argv)


@cli.command()
def submit(
    input_file: Annotated[Path, typer.Argument(help="JSONL: one {custom_id, text[, label]} per line")],
    model: Annotated[Path, typer.Option(help="model folder written by `cascade train`")],
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="escalate below this confidence")] = 0.5,
    top_k: Annotated[int | None, typer.Option(min=0, help="candidate labels for the LLM; 0 = all")] = None,
    on_llm_error: Annotated[OnLLMError, typer.Option(help="keep the specialist's answer, or fail the item")] = (
        OnLLMError.KEEP
    ),
    wait: Annotated[bool, typer.Option(help="wait with a progress bar, then print the summary")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Submit a batch job and print its id."""
    settings = Settings()
    job_id = _submit(settings, input_file, model, threshold, top_k, on_llm_error)
    out.print(job_id)
    if wait:
        _finish(settings, job_id, as_json)


def _submit(
    settings: Settings, input_file: Path, model: Path, threshold: float, top_k: int | None, on_llm_error: OnLLMError
) -> str:
    from workers.specialist import read_manifest

    manifest = read_manifest(model)
    spec = JobSpec(
        model_path=str(model.resolve()),
        model_sha256=manifest["model_sha256"],
        threshold=threshold,
        top_k=settings.top_k if top_k is None else top_k,
        on_llm_error=on_llm_error,
        llm_model=settings.llm_model,
    )
    configure(app, settings)
    store = _store(settings)
    return submit_file(store, lambda job, index: send_specialist_chunk(app, job, index), settings, input_file, spec)


def _finish(settings: Settings, job_id: str, as_json: bool) -> None:
    store = _store(settings)
    _wait(store, job_id)
    summary = summarize(store.get(job_id), store.tier_stats(job_id), store.llm_errors(job_id))
    if as_json:
        out.print_json(summary.model_dump_json())
    else:
        _print_summary(summary)
    if summary.status != JobStatus.COMPLETED.value:
        raise typer.Exit(1)


def _wait(store: JobStore, job_id: str, poll: float = 0.5) -> None:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    start = time.monotonic()
    with Progress(*columns, console=err, transient=False) as progress:
        bar = progress.add_task("validating", total=None, rate="")
        while True:
            job = store.get(job_id)
            done = job.counts.completed + job.counts.failed
            rate = done / max(time.monotonic() - start, 1e-9)
            progress.update(
                bar, completed=done, total=job.counts.total, description=job.status.value, rate=f"{rate:,.0f} items/s"
            )
            if job.status.is_final:
                return
            time.sleep(poll)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _print_summary(s: Summary) -> None:
    table = Table(title=f"{s.job_id}: {s.status}")
    table.add_column("tier")
    for col in ("answered", "accuracy", "specialist alone", "task seconds"):
        table.add_column(col, justify="right")
    for name, t in s.tiers.items():
        table.add_row(name, str(t.answered), _pct(t.accuracy), _pct(t.specialist_accuracy), f"{t.task_seconds:.1f}")
    wall = f"{s.wall_seconds:.1f} wall" if s.wall_seconds is not None else "-"
    table.add_row("all", str(s.completed), _pct(s.accuracy), _pct(s.specialist_only_accuracy), wall)
    out.print(table)
    out.print(
        f"items {s.total}, completed {s.completed}, failed {s.failed}, escalated {s.escalated} "
        f"({_pct(s.escalation_share)}), LLM errors {s.llm_errors}\n"
        f"accuracy over {s.labelled} labelled items: cascade {_pct(s.accuracy)}, "
        f"specialist alone {_pct(s.specialist_only_accuracy)}"
    )


@cli.command()
def status(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a job's status and counts."""
    store = _store(Settings())
    job = store.get(job_id)
    if as_json:
        out.print_json(job.model_dump_json())
        return
    c = job.counts
    out.print(
        f"{job.id} {job.status.value}: total {c.total if c.total is not None else '?'}, completed "
        f"{c.completed}, failed {c.failed}, escalated {c.escalated}" + (f"; {job.error}" if job.error else "")
    )


def _export(rows: Iterator[dict[str, Any]], output: Path | None) -> int:
    target = output.open("w") if output else sys.stdout
    n = 0
    try:
        for row in rows:
            target.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    finally:
        if output:
            target.close()
    return n


@cli.command()
def results(job_id: str, output: Annotated[Path | None, typer.Option("-o", "--output")] = None) -> None:
    """Write the job's results as JSONL: one line per answered item."""
    store = _store(Settings())
    store.get(job_id)
    n = _export(store.iter_results(job_id), output)
    if output:
        err.print(f"{n} results written to {output}")


@cli.command()
def errors(job_id: str, output: Annotated[Path | None, typer.Option("-o", "--output")] = None) -> None:
    """Write the job's errors as JSONL: refused lines and failed items, each with its line number."""
    store = _store(Settings())
    store.get(job_id)
    n = _export(store.iter_errors(job_id), output)
    if output:
        err.print(f"{n} errors written to {output}")


@cli.command()
def cancel(job_id: str) -> None:
    """Cancel a job: no new chunk starts; what is finished is kept."""
    store = _store(Settings())
    if store.end(job_id, JobStatus.CANCELLED):
        out.print(f"{job_id} cancelled")
    else:
        out.print(f"{job_id} had already ended: {store.status(job_id).value}")


def _default_dataset() -> Path | None:
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "datasets" / "banking77"
        if candidate.is_dir():
            return candidate
    return None


@cli.command()
def demo(
    data: Annotated[Path | None, typer.Argument(help="folder with train.csv and test.csv")] = None,
    model: Annotated[Path, typer.Option(help="model folder (trained when missing)")] = Path("models/banking77"),
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.5,
    top_k: Annotated[int | None, typer.Option(min=0)] = None,
) -> None:
    """Train on DATA/train.csv, submit DATA/test.csv as a job, wait, and print accuracy and time per tier."""
    data = data or _default_dataset()
    if data is None:
        raise InputError("no dataset given and ../shared/datasets/banking77 does not exist; pass a folder")
    settings = Settings()
    if not (model / "manifest.json").exists():
        train(data / "train.csv", model)
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = Path(tmp) / "test.jsonl"
        n = _csv_to_jsonl(data / "test.csv", jsonl)
        out.print(f"submitting {n} items from {data / 'test.csv'} (threshold {threshold})")
        job_id = _submit(settings, jsonl, model, threshold, top_k, OnLLMError.KEEP)
    out.print(job_id)
    _finish(settings, job_id, as_json=False)


def _csv_to_jsonl(source: Path, target: Path) -> int:
    with source.open(newline="", encoding="utf-8") as f, target.open("w") as t:
        n = 0
        for n, row in enumerate(csv.DictReader(f), start=1):
            item = {"custom_id": row.get("id") or f"{source.stem}-{n}", "text": row["text"], "label": row["label"]}
            t.write(json.dumps(item) + "\n")
    return n


def main() -> None:
    try:
        cli()
    except CascadeError as e:
        err.print(f"[bold red]error:[/] {e}")
        sys.exit(2)
    except redis.ConnectionError as e:
        err.print(f"[bold red]error:[/] Redis does not answer at CASCADE_REDIS_URL ({e})")
        sys.exit(2)


__all__ = ["cli", "main"]
