"""The image (deploy/Dockerfile): linted with hadolint, and the entry point, subcommands and options it and the
manifests name exist in the code. No Docker engine runs here, so the image is not built."""

import importlib
import json
import subprocess
import tomllib
from pathlib import Path

import typer

from cascade.broker import cli
from tests.deploy.manifests import DEPLOY, ROOT, Rendered, containers, tool

DOCKERFILE = DEPLOY / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMMANDS = typer.main.get_command(cli.cli).commands


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # every rule, down to style, fails the lint
    return subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.read_text().splitlines() if line.startswith(name + " ")]


def test_dockerfile_passes_hadolint() -> None:
    done = hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_finds_faults(tmp_path: Path) -> None:
    """The lint above can fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    done = hadolint(bad)
    assert done.returncode != 0
    assert "DL3007" in done.stdout


def test_the_entry_point_is_the_cascade_script() -> None:
    (entrypoint,) = instructions("ENTRYPOINT")
    (script,) = json.loads(entrypoint)
    module, function = PYPROJECT["project"]["scripts"][script].split(":")
    assert callable(getattr(importlib.import_module(module), function))
    (cmd,) = instructions("CMD")
    check_command(json.loads(cmd))


def check_command(args: list[str]) -> None:
    """A `cascade` command line: a subcommand of cascade.broker.cli and only options it has."""
    assert args[0] in COMMANDS, f"cascade has no command {args[0]}"
    options = {o for param in COMMANDS[args[0]].params for o in param.opts}
    used = {a for a in args[1:] if a.startswith("--")}
    assert used <= options, f"cascade {args[0]} has no option {sorted(used - options)}"


def test_the_manifests_run_cascade_commands_that_exist(rendered: Rendered) -> None:
    version = PYPROJECT["project"]["version"]
    ran = set()
    for workload in rendered.workloads():
        for c in containers(workload):
            if c["image"].rsplit(":", 1)[0].endswith("/cascade"):
                assert c["image"].endswith(f":{version}"), "the image's tag is the project's version"
                check_command(c["args"])
                ran.add(c["args"][0])
    assert ran == {"api", "worker"}


def test_the_image_copies_every_package() -> None:
    copied = {source for line in instructions("COPY") if not line.startswith("--from") for source in line.split()[:-1]}
    assert all((ROOT / source).exists() for source in copied)
    # the import package's folder, and every folder it links to (the wheel stores their files under cascade/)
    assert "cascade" in copied, "the image does not copy the package folder cascade/"
    for part in (ROOT / "cascade").iterdir():
        if part.is_symlink():
            folder = part.resolve().name
            assert folder in copied, f"the image does not copy {folder}/ (linked from cascade/{part.name})"
