"""The operations commands: worker, api, doctor, monitoring-files."""

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.markup import escape

from cascade.broker import doctor as checks
from cascade.broker.celery_app import QueueName, app, configure
from cascade.broker.cli.common import ExitCode, JsonFlag, emit, err, job_store, out, settings_from_env
from cascade.broker.settings import Settings
from cascade.workers.errors import InputError, SettingsError


class Diagnosis(BaseModel):
    """``doctor --json``: every check, in order, and whether one failed (exit 1)."""

    checks: list[checks.Check]
    failed: bool


class MonitoringFiles(BaseModel):
    """``monitoring-files --json``: the files written."""

    files: list[Path]


def worker(
    queues: Annotated[str, typer.Option(help="comma-separated: specialist, llm")] = "specialist,llm",
    concurrency: Annotated[int, typer.Option(min=1)] = 2,
    loglevel: str = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="/metrics port (CASCADE_METRICS_PORT); 0: none")] = None,
) -> None:
    """Start a Celery worker. Serving the llm queue first checks that the vLLM server constrains its output."""
    settings = settings_from_env()
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = set(names) - {q.value for q in QueueName}
    if unknown or not names:
        raise InputError(f"--queues: unknown queue(s) {sorted(unknown)}; use specialist, llm")
    port = settings.metrics_port if metrics_port is None else metrics_port
    if port:
        _check_port_free(port)  # before the folder is wiped: it may be the metrics of a worker serving that port
        # Multiprocess mode must be set up before prometheus_client is imported, here and in the pool's children.
        folder = Path(settings.metrics_dir or Path(tempfile.gettempdir()) / f"cascade-metrics-{port}")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    if QueueName.LLM.value in names:
        _check_llm(settings)
    if port:
        from cascade.broker.collector import serve

        serve(port, job_store(settings))
        err.print(f"metrics on :{port}/metrics")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    configure(app, settings)
    from celery import signals

    from cascade.broker.reaper import Reaper

    # Started once the pool's processes are forked: a thread running while a process forks can leave a lock it
    # held (Redis', logging's, Celery's producer pool's) locked forever in the child.
    reaper = Reaper(job_store(settings), app, settings)
    signals.worker_ready.connect(lambda **_: reaper.start(), weak=False)
    argv = ["worker", "-Q", ",".join(names), "-c", str(concurrency), "--loglevel", loglevel]
    if hostname:
        argv += ["-n", hostname]
    app.worker_main(argv)


def _check_port_free(port: int) -> None:
    """Refuse, in one line, a /metrics port already taken (another worker on this machine), naming the setting."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))  # noqa: S104 - where the worker's /metrics listens
        except OSError as e:
            raise SettingsError(
                f"the /metrics port {port} is in use ({e.strerror}; another worker on this machine?): set "
                "CASCADE_METRICS_PORT or --metrics-port to a free port, or 0 for no /metrics"
            ) from e


def _check_llm(settings: Settings) -> None:
    checks.llm_constrained(settings.llm_config())  # with the settings' retries: a server still starting may answer
    err.print(f"LLM server at {escape(settings.llm_url)} constrains its output: ok", highlight=False)


def api(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
) -> None:
    """Serve the HTTP API (OpenAI's Files and Batch API) with uvicorn."""
    settings = settings_from_env()
    import uvicorn

    from cascade.broker.api import create_app

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


def monitoring_files(
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write dashboards/ and rules/ into")],
    as_json: JsonFlag = False,
) -> None:
    """Copy the Grafana dashboards and the Prometheus rules shipped with this installation into a folder."""
    from cascade.monitoring.files import copy_out

    written = copy_out(out_dir)

    def show() -> None:
        for path in written:
            out.print(str(path))

    emit(as_json, MonitoringFiles(files=written), show)


_STYLES = {
    checks.Outcome.OK: "green",
    checks.Outcome.WARN: "yellow",
    checks.Outcome.FAIL: "bold red",
    checks.Outcome.SKIP: "dim",
}


def doctor(
    model: Annotated[Path | None, typer.Option(help="a model folder to load (default: CASCADE_MODEL_DIR)")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds for Redis and the workers to answer")] = 2.0,
    as_json: JsonFlag = False,
) -> None:
    """Check the deployment, a line each: Redis, the LLM, the model, the files, the timeouts, the workers. Exits 1
    when a check fails."""
    settings = settings_from_env()
    folder = model or (Path(settings.model_dir) if settings.model_dir else None)
    done = []
    for check in checks.run(settings, configure(app, settings), folder, timeout):
        style = _STYLES[check.outcome]
        # A line as each check ends (on stderr under --json: progress), then the document.
        out.print(f"[{style}]{check.outcome.value:<4}[/] {check.name}: {escape(check.detail)}", highlight=False)
        done.append(check)
    diagnosis = Diagnosis(checks=done, failed=any(c.outcome is checks.Outcome.FAIL for c in done))
    emit(as_json, diagnosis)
    if diagnosis.failed:
        raise typer.Exit(ExitCode.FAILED)
