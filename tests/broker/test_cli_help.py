"""`cascade --version`, and every command's help readable in an 80-column terminal: no option name cut."""

import os
import re
import subprocess

import pytest
import typer

from cascade import __version__
from cascade.broker.cli import cli
from tests.conftest import CASCADE

GROUP = typer.main.get_command(cli)  # typer's own click (vendored): a group with .commands
COMMANDS = sorted(GROUP.commands)  # type: ignore[attr-defined]


def run(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([CASCADE, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_version_prints_the_installed_package_version() -> None:
    done = run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"cascade {__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", __version__)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_at_80_columns_shows_every_option_name_whole(command: str) -> None:
    done = run(*([command] if command else []), "--help")
    assert done.returncode == 0, done.stderr
    params = GROUP.commands[command].params if command else GROUP.params  # type: ignore[attr-defined]
    names = {"--help"} | {name for param in params for name in (*param.opts, *param.secondary_opts) if "--" in name}
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", done.stdout), f"{name} cut or missing"
    assert "…" not in done.stdout
    too_wide = [line for line in done.stdout.splitlines() if len(line) > 80]
    assert not too_wide, too_wide
