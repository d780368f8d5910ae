"""The ``cascade`` command: train, worker, submit, status, results, errors, cancel, demo, learn, promote, doctor.

One module per group of commands: ``jobs`` (submit, status, report, results, errors, cancel), ``models`` (train,
calibrate, evaluate, learn, promote, demo), ``ops`` (worker, api, doctor, monitoring-files); what they share, with
the ``--json`` rule, in ``common``. Errors end here, in ``main``: one line on stderr (its text escaped: never read as
rich markup) and an exit code that says what kind (``ExitCode``, listed in the README's "Exit codes").

Light at import: the ``worker`` command must set up the metrics' multiprocess mode before anything imports
prometheus_client (cascade.monitoring.metrics, through the pipeline), and every command starts faster; what a
command needs beyond this is imported where used.
"""

import sys
from typing import Annotated

import redis
import typer
from kombu.exceptions import OperationalError
from rich.markup import escape

from cascade import __version__
from cascade.broker.cli import jobs, models, ops
from cascade.broker.cli.common import ExitCode, err, exit_code, out
from cascade.workers.errors import CascadeError

cli = typer.Typer(
    help="Cascade: a cheap specialist on every item, an LLM (vLLM) on the unsure ones.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # click's plain help and usage errors: typer's rich tables shrink every column to the terminal's width and cut
    # an option name that does not fit ("--target-accura…" at 80 columns); click's formatter never cuts one, and
    # never reads an error's text as markup.
    rich_markup_mode=None,
)


def _show_version(show: bool) -> None:
    if show:
        out.print(f"cascade {__version__}", highlight=False)
        raise typer.Exit


@cli.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    pass


for command in (
    models.train,
    ops.worker,
    ops.api,
    jobs.submit,
    jobs.report,
    jobs.status,
    jobs.results,
    jobs.errors,
    jobs.cancel,
    ops.monitoring_files,
    models.demo,
    models.calibrate,
    models.evaluate,
    models.learn,
    models.promote,
    ops.doctor,
):
    cli.command(command.__name__.replace("_", "-"))(command)


def _fail(message: str, code: ExitCode) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    sys.exit(code)


def main() -> None:
    """The ``cascade`` command: a Cascade error, or Redis out of reach, is one line on stderr and its exit code."""
    try:
        cli()
    except CascadeError as e:
        _fail(str(e), exit_code(e))
    except redis.AuthenticationError as e:  # its message names the Redis (password masked) and the settings
        _fail(str(e), ExitCode.INFRASTRUCTURE)
    except (redis.ConnectionError, redis.TimeoutError, OperationalError) as e:
        _fail(f"Redis does not answer at CASCADE_REDIS_URL ({e})", ExitCode.INFRASTRUCTURE)


__all__ = ["ExitCode", "cli", "exit_code", "main"]
