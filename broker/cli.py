"""The ``cascade`` command: train, worker, submit, status, results, errors, cancel, demo."""

import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import redis
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cascade.broker.celery_app import QueueName, app, configure, send_specialist_chunk, send_sweep
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.summary import Summary, summarize
from cascade.broker.views import print_bands, print_cost, print_evaluation, print_summary
from cascade.workers.errors import CascadeError, InputError
from cascade.workers.jobs import JobSpec, JobStatus, OnLLMError
from cascade.workers.manifest import Features

# Imported where used: the `worker` command must set up the metrics' multiprocess mode before anything imports
# prometheus_client (cascade.monitoring.metrics, through the pipeline), and the CLI starts faster.
if TYPE_CHECKING:
    from cascade.broker.labelled import LabelledJob
    from cascade.broker.submit import Enqueue

cli = typer.Typer(
    help="Cascade: a cheap specialist on every item, an LLM (vLLM) on the unsure ones.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _store(settings: Settings) -> RedisJobStore:
    return RedisJobStore.from_url(settings.redis_url, settings.job_ttl)


@cli.command()
def train(
    data: Annotated[Path, typer.Argument(help="CSV with text and label columns")],
    out_dir: Annotated[Path, typer.Option("--out", help="model folder to write")],
    holdout: Annotated[float, typer.Option(min=0.05, max=0.5, help="share held out for the accuracy")] = 0.2,
    seed: int = 0,
    features: Annotated[
        Features, typer.Option(help="tfidf: word n-grams; minilm: sentence embeddings (the embeddings extra)")
    ] = Features.TFIDF,
    encoder: Annotated[
        Path | None,
        typer.Option(help="minilm: a local sentence-transformers folder instead of the bundled all-MiniLM-L6-v2"),
    ] = None,
) -> None:
    """Train the specialist and save it with its manifest."""
    from cascade.workers import specialist
    from cascade.workers.data import read_labelled_csv
    from cascade.workers.embedding import Encoder
    from cascade.workers.errors import ModelError

    if encoder is not None and features is not Features.MINILM:
        raise InputError("--encoder: only with --features minilm")
    labelled = read_labelled_csv(data)
    try:
        opened = Encoder.open(encoder, threads=Settings().encoder_threads) if features is Features.MINILM else None
    except ModelError as e:  # printed here, escaped: main()'s markup would eat "[embeddings]" in the install hint
        err.print(f"[bold red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from e
    if opened is not None:
        where = escape(str(opened.path))
        err.print(f"encoding {len(labelled.texts)} texts with {where} ({opened.threads} torch thread(s))")
    report = specialist.train(labelled.texts, labelled.labels, holdout=holdout, seed=seed, encoder=opened)
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
    metrics_port: Annotated[int | None, typer.Option(help="/metrics port (CASCADE_METRICS_PORT); 0: none")] = None,
) -> None:
    """Start a Celery worker. Serving the llm queue first checks that the vLLM server constrains its output."""
    settings = Settings()
    port = settings.metrics_port if metrics_port is None else metrics_port
    if port:
        # Multiprocess mode must be set up before prometheus_client is imported, here and in the pool's children.
        folder = Path(settings.metrics_dir or Path(tempfile.gettempdir()) / f"cascade-metrics-{port}")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = set(names) - {q.value for q in QueueName}
    if unknown or not names:
        raise InputError(f"--queues: unknown queue(s) {sorted(unknown)}; use specialist, llm")
    if QueueName.LLM.value in names:
        _check_llm(settings)
    if port:
        from cascade.broker.collector import serve

        serve(port, _store(settings))
        err.print(f"metrics on :{port}/metrics")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    configure(app, settings)
    from cascade.broker.reaper import Reaper

    Reaper(_store(settings), app, settings).start()
    argv = ["worker", "-Q", ",".join(names), "-c", str(concurrency), "--loglevel", loglevel]
    if hostname:
        argv += ["-n", hostname]
    app.worker_main(argv)


def _check_llm(settings: Settings) -> None:
    from cascade.workers.llm import LLMClient

    async def check() -> None:
        async with LLMClient(settings.llm_config()) as client:
            await client.check_constrained()

    asyncio.run(check())
    err.print(f"LLM server at {settings.llm_url} constrains its output: ok")


@cli.command()
def api(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
) -> None:
    """Serve the HTTP API (OpenAI's Files and Batch API) with uvicorn."""
    import uvicorn

    from cascade.broker.api import create_app

    uvicorn.run(create_app(Settings()), host=host, port=port, log_level="info")


@cli.command()
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
    wait: Annotated[bool, typer.Option(help="wait with a progress bar, then print the summary")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Submit a batch job and print its id."""
    settings = Settings()
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
    )
    job_id = _submit(settings, input_file, spec)
    if wait:
        _finish(settings, job_id, as_json)


def _enqueue(settings: Settings) -> "Enqueue":
    configure(app, settings)
    return partial(send_specialist_chunk, app)


def _submit(settings: Settings, input_file: Path, spec: JobSpec) -> str:
    """Create the job, print its id (flushed, alone on its line) before reading the input, then read it in: a user
    whose client dies during the intake knows the job. An intake that stops with an exception fails its job (what
    was stored goes to the errors, the unread lines are named in its error); a client killed outright leaves that
    to the reaper."""
    from cascade.broker.submit import create_job, submit_file
    from cascade.workers.lifecycle import fail_intake

    if not input_file.is_file():
        raise InputError(f"{input_file}: no such file")
    enqueue = _enqueue(settings)
    store = _store(settings)
    job_id = create_job(store, settings, spec)
    out.print(job_id)
    out.file.flush()
    try:
        submit_file(store, enqueue, settings, input_file, spec, job_id=job_id)
    except BaseException as e:  # Ctrl-C included: the job would otherwise stay validating
        try:
            fail_intake(store, lambda job: send_sweep(app, job), job_id, f"the intake stopped: {e!r}")
        except redis.RedisError as failed:  # Redis gone: the original exception says more
            err.print(f"{job_id} could not be marked failed: {failed}")
        raise
    return job_id


def _finish(settings: Settings, job_id: str, as_json: bool) -> None:
    store = _store(settings)
    _wait(store, job_id)
    summary = _summary(store, job_id)
    if as_json:
        out.print_json(summary.model_dump_json())
    else:
        print_summary(out, summary)
    if summary.status != JobStatus.COMPLETED.value:
        raise typer.Exit(1)


def _wait(store: RedisJobStore, job_id: str, poll: float = 0.5) -> None:
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


def _summary(store: RedisJobStore, job_id: str) -> Summary:
    return summarize(store.get(job_id), store.stats(job_id))


@cli.command()
def report(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Cost and accuracy of a job, from the job store (for a user without Grafana)."""
    summary = _summary(_store(Settings()), job_id)
    if as_json:
        out.print_json(summary.model_dump_json())
    else:
        print_summary(out, summary)
        print_cost(out, summary)


@cli.command()
def status(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    watch: Annotated[bool, typer.Option(help="a live progress bar (rate, time left) until the job ends")] = False,
) -> None:
    """Show a job's status and counts."""
    store = _store(Settings())
    if watch:
        _wait(store, job_id)
    job = store.get(job_id)
    if as_json:
        out.print_json(job.model_dump_json())
        return
    c = job.counts
    out.print(
        f"{job.id} {job.status.value}: total {c.total if c.total is not None else '?'}, completed "
        f"{c.completed}, failed {c.failed}, escalated {c.escalated}" + (f"; {job.error}" if job.error else "")
    )


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
    """Cancel a job: no new chunk starts; what is finished is kept; the rest goes to the errors (batch_cancelled)."""
    settings = Settings()
    store = _store(settings)
    configure(app, settings)
    from cascade.workers.lifecycle import cancel as request_cancel

    if request_cancel(store, lambda job: send_sweep(app, job), job_id):
        out.print(f"{job_id} cancelling: a worker writes what is not finished to the errors, then it is cancelled")
    else:
        out.print(f"{job_id} is not running: {store.status(job_id).value}")


@cli.command("monitoring-files")
def monitoring_files(
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write dashboards/ and rules/ into")],
) -> None:
    """Copy the Grafana dashboards and the Prometheus rules shipped with this installation into a folder."""
    from cascade.monitoring.files import copy_out

    for path in copy_out(out_dir):
        out.print(str(path))


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
    target_accuracy: Annotated[float, typer.Option(min=0.0, max=1.0, help="the policy's accuracy target")] = 0.85,
    delta: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.05,
    top_k: Annotated[int | None, typer.Option(min=0)] = None,
) -> None:
    """Train on DATA/train.csv; calibrate a policy against the served LLM on half of DATA/test.csv; run the other
    half under it; print what the cascade did, and why."""
    from cascade.broker import labelled
    from cascade.workers.calibration import FitOptions

    data = data or _default_dataset()
    if data is None:
        raise InputError("no dataset given and ../shared/datasets/banking77 does not exist; pass a folder")
    settings = Settings()
    if not (model / "manifest.json").exists():
        train(data / "train.csv", model)
    with tempfile.TemporaryDirectory() as tmp:
        calibration, evaluation = labelled.split_csv(data / "test.csv", Path(tmp))
        out.print(
            f"1. calibrating against the LLM {settings.llm_model} on half of {data / 'test.csv'}: it is asked about "
            "the 30% least confident items, and a policy must reach "
            f"{target_accuracy:.0%} accuracy with probability {1 - delta:.0%}"
        )
        cap = labelled.escalation_cap(model, calibration, 0.3)
        job = _labelled_job(settings, calibration, model, cap, top_k)
        opts = FitOptions(target=target_accuracy, delta=delta, max_escalation=0.3)
        policy = labelled.calibrate(settings, _store(settings), job, opts)
        print_bands(out, policy)
        out.print(policy.message)
        if not any(policy.escalate.values()):
            out.print(
                f"[bold]{settings.llm_model} is no better than the specialist in any confidence band: the policy "
                "sends nothing to it[/] (a fixed threshold would have, and lost accuracy)."
            )
        path = labelled.save_policy(policy, model) if policy.reachable else None
        out.print(
            f"2. the other half of {data / 'test.csv'} as a job, "
            + (f"under policy {policy.version}" if path else "on the specialist alone (no policy certified)")
        )
        store = _store(settings)
        run = labelled.submit_labelled(
            settings, store, _enqueue(settings), evaluation, model, 0.0, top_k, policy_file=path
        )
    out.print(run.job_id)
    _finish(settings, run.job_id, as_json=False)


def _labelled_job(
    settings: Settings, data: Path, model: Path, threshold: float, top_k: int | None, limit: int | None = None
) -> "LabelledJob":
    from cascade.broker import labelled

    store = _store(settings)
    job = labelled.submit_labelled(settings, store, _enqueue(settings), data, model, threshold, top_k, limit)
    err.print(f"{job.job_id}: {job.items} labelled items, LLM asked below confidence {threshold:.3f}")
    _wait(store, job.job_id)
    return job


@cli.command()
def calibrate(
    model: Annotated[Path, typer.Option(help="model folder written by `cascade train`")],
    data: Annotated[Path, typer.Option(help="labelled CSV (text, label) from the distribution of future jobs")],
    target_accuracy: Annotated[float, typer.Option(min=0.0, max=1.0)],
    delta: Annotated[float, typer.Option(min=0.0, max=1.0, help="allowed probability of missing the target")] = 0.05,
    max_escalation: Annotated[float, typer.Option(min=0.0, max=1.0, help="most items the policy may escalate")] = 0.3,
    per_class: Annotated[bool, typer.Option(help="escalated bands per predicted class")] = False,
    abstain_below: Annotated[float | None, typer.Option(help="abstain where both tiers are below this")] = None,
    explore: Annotated[float, typer.Option(min=0.0, max=1.0, help="exploration share recorded in the policy")] = 0.0,
    top_k: Annotated[int | None, typer.Option(min=0)] = None,
    seed: int = 0,
) -> None:
    """Choose an escalation policy that meets an accuracy target with probability 1 - delta."""
    from cascade.broker import labelled
    from cascade.workers.calibration import FitOptions

    settings = Settings()
    cap = labelled.escalation_cap(model, data, max_escalation)
    job = _labelled_job(settings, data, model, cap, top_k)
    opts = FitOptions(
        target=target_accuracy,
        delta=delta,
        max_escalation=max_escalation,
        per_class=per_class,
        abstain_below=abstain_below,
        explore_rate=explore,
        seed=seed,
    )
    fitted = labelled.calibrate(settings, _store(settings), job, opts)
    print_bands(out, fitted)
    out.print(fitted.message)
    if not fitted.reachable:
        share = fitted.certificate.escalation_share if fitted.certificate else 0.0
        usd = settings.prices().llm_usd_per_1000_items(fitted.mean_llm_tokens, share)
        out.print(
            f"its cost: about {fitted.mean_llm_tokens * share * 1000:,.0f} LLM tokens, ${usd:.4f}, per 1,000 "
            "items; no policy file written"
        )
        raise typer.Exit(1)
    out.print(f"policy {fitted.version} written to {labelled.save_policy(fitted, model)}")


@cli.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="model folder written by `cascade train`")],
    data: Annotated[Path, typer.Option(help="labelled CSV (text, label)")],
    policy: Annotated[Path | None, typer.Option(help="a policy file to place on the curve")] = None,
    targets: Annotated[str, typer.Option(help="comma-separated accuracy targets")] = "0.85,0.88,0.9,0.92",
    delta: float = 0.05,
    limit: Annotated[int | None, typer.Option(min=1, help="evaluate only the first N items")] = None,
    top_k: Annotated[int | None, typer.Option(min=0)] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for report.json and report.png")] = Path("reports"),
) -> None:
    """Report all-specialist, all-LLM and the cascade at several targets: accuracy, share escalated, cost."""
    from cascade.broker import labelled
    from cascade.workers.evaluation import plot
    from cascade.workers.policy import load_policy

    settings = Settings()
    chosen = load_policy(policy) if policy else None
    job = _labelled_job(settings, data, model, 1.0, top_k, limit)
    levels = [float(t) for t in targets.split(",") if t.strip()]
    report = labelled.evaluation(settings, _store(settings), job, levels, delta, chosen)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(report.model_dump_json(indent=2) + "\n")
    plot(report, out_dir / "report.png")
    print_evaluation(out, report)
    out.print(f"report written to {out_dir / 'report.json'} and {out_dir / 'report.png'}")


def main() -> None:
    try:
        cli()
    except CascadeError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(2)
    except redis.ConnectionError as e:
        err.print(f"[bold red]error:[/] Redis does not answer at CASCADE_REDIS_URL ({escape(str(e))})")
        sys.exit(2)
    except ValidationError as e:
        if e.title != Settings.__name__:
            raise
        first = e.errors()[0]
        where = f"CASCADE_{str(first['loc'][0]).upper()}: " if first["loc"] else ""
        err.print(f"[bold red]error:[/] {where}{escape(first['msg'].removeprefix('Value error, '))}", highlight=False)
        sys.exit(2)


__all__ = ["cli", "main"]
