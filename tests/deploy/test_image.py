"""The image (deploy/Dockerfile): linted with hadolint, the entry point, subcommands and options it and the
manifests name exist in the code, and what it installs is locked with hashes (deploy/requirements.lock). The image
itself is built by .ci/run and run by test_image_run.py."""

import importlib
import importlib.metadata
import importlib.util
import json
import platform
import re
import subprocess
import tomllib
from pathlib import Path

import typer
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cascade.broker import cli
from tests.deploy.manifests import DEPLOY, ROOT, Obj, Rendered, containers, tool

DOCKERFILE = DEPLOY / "Dockerfile"
LOCK = DEPLOY / "requirements.lock"
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
    """The arguments of each `name` instruction of the Dockerfile, its continued lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith(name + " ")]


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


def check_celery_command(container: Obj) -> str:
    """`celery` run from the image (Flower: deploy/components/flower), on the Celery app configured from
    CASCADE_*, with a subcommand the image holds and only options it has. Returns the subcommand."""
    args = container["args"]
    assert args[:2] == ["-A", "cascade.broker.celery_cli"], "Celery's command line on Cascade's configured app"
    # found, not imported: importing it configures the one Celery app of this test process
    assert importlib.util.find_spec(args[1]), f"no module {args[1]}"
    assert args[2] == "flower", f"celery {args[2]}: only Flower runs from the image with `celery`"
    assert "flower" in locked(), "the image has no Flower: deploy/requirements.lock does not pin it"
    (command,) = [e for e in importlib.metadata.entry_points(group="celery.commands") if e.name == "flower"]
    assert command.dist is not None
    assert canonicalize_name(command.dist.name) == "flower"
    # Flower's options are tornado's, defined by flower.options; FLOWER_<NAME> in the environment sets one too
    importlib.import_module("flower.options")
    from tornado.options import options

    known = {name.replace("_", "-") for name in options}
    used = {a.removeprefix("--").split("=", 1)[0].replace("_", "-") for a in args[3:] if a.startswith("--")}
    assert used <= known, f"flower has no option {sorted(used - known)}"
    names = [e["name"] for e in container.get("env", []) if e["name"].startswith("FLOWER_")]
    from_env = {n.removeprefix("FLOWER_").lower().replace("_", "-") for n in names}
    assert from_env <= known, f"flower has no option {sorted(from_env - known)} (from FLOWER_*)"
    return "flower"


def test_the_manifests_run_cascade_commands_that_exist(rendered: Rendered) -> None:
    version = PYPROJECT["project"]["version"]
    ran = set()
    for workload in rendered.workloads():
        for c in containers(workload):
            if c["image"].rsplit(":", 1)[0].endswith("/cascade"):
                assert c["image"].endswith(f":{version}"), "the image's tag is the project's version"
                if c.get("command") == ["celery"]:
                    ran.add(check_celery_command(c))
                    continue
                assert "command" not in c, "the image's entry point is `cascade` (or `celery`, for Flower)"
                check_command(c["args"])
                ran.add(c["args"][0])
    flower = {"flower"} & {w["metadata"]["name"].removeprefix("cascade-") for w in rendered.workloads()}
    assert ran == {"api", "worker"} | flower


def test_the_image_copies_every_package() -> None:
    copied = {source for line in instructions("COPY") if not line.startswith("--from") for source in line.split()[:-1]}
    assert all((ROOT / source).exists() for source in copied)
    # the import package's folder, and every folder it links to (the wheel stores their files under cascade/)
    assert "cascade" in copied, "the image does not copy the package folder cascade/"
    for part in (ROOT / "cascade").iterdir():
        if part.is_symlink():
            folder = part.resolve().name
            assert folder in copied, f"the image does not copy {folder}/ (linked from cascade/{part.name})"


def locked() -> dict[str, tuple[str, list[str]]]:
    """Each requirement of deploy/requirements.lock: its name -> its pinned version and its hashes."""
    pins = {}
    text = re.sub(r"\\\n", " ", re.sub(r"#.*", "", LOCK.read_text()))
    for line in filter(None, map(str.strip, text.splitlines())):
        spec, *options = line.split()
        name, _, version = spec.partition("==")
        assert version, f"deploy/requirements.lock does not pin {spec!r} to one version"
        assert all(o.startswith("--hash=") for o in options), f"{spec}: {options}"
        pins[canonicalize_name(name)] = (version, [o.removeprefix("--hash=") for o in options])
    return pins


IMAGE_EXTRAS = ("embeddings", "ops")
"""The extras the image holds (deploy/local/common.sh lock_requirements): `cascade train --features minilm`, and
Flower (deploy/components/flower). Not `plots`, nor `dev`."""


def runtime_requirements() -> list[Requirement]:
    """What the image's environment needs: the project's dependencies and the extras it holds."""
    project = PYPROJECT["project"]
    extras = [r for extra in IMAGE_EXTRAS for r in project["optional-dependencies"][extra]]
    return [Requirement(r) for r in [*project["dependencies"], *extras]]


def test_the_lock_is_made_with_the_image_extras() -> None:
    """lock_requirements compiles the extras the lock test below checks, and the dev extra holds ops' (.ci/run and
    `pip install -e .[dev]` install Flower for tests/monitoring/test_flower.py)."""
    script = (DEPLOY / "local" / "common.sh").read_text()
    (compile_line,) = [line for line in script.splitlines() if "pip-compile" in line and "--extra" in line]
    assert re.findall(r"--extra (\S+)", compile_line) == list(IMAGE_EXTRAS)
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras["ops"]) <= set(extras["dev"]), "the dev extra misses a requirement of the ops extra"


def test_the_image_installs_only_the_lock_with_hashes() -> None:
    copied = [line for line in instructions("COPY") if "deploy/requirements.lock" in line]
    assert copied, "the image does not copy deploy/requirements.lock"
    installs = [line for line in instructions("RUN") if "pip install" in line]
    (lock_install,) = [line for line in installs if "-r requirements.lock" in line]
    assert "--require-hashes" in lock_install
    assert "--no-deps" in lock_install
    # then the project alone: nothing from outside the lock, and `pip check` proves the lock complete
    (project_install,) = [line for line in installs if line is not lock_install]
    assert "--no-deps" in project_install
    assert "pip check" in project_install
    assert "!deploy/requirements.lock" in (ROOT / ".dockerignore").read_text().splitlines()


def test_every_locked_requirement_is_pinned_with_hashes() -> None:
    pins = locked()
    assert pins
    for name, (_version, hashes) in pins.items():
        assert hashes, f"{name} has no hash in deploy/requirements.lock"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    # torch's CPU build: PyPI's torch is the CUDA build (gigabytes of libraries no CPU worker uses)
    assert pins["torch"][0].endswith("+cpu")


def test_the_lock_covers_the_runtime_dependencies() -> None:
    """Every requirement of the project (and of the extras the image holds) is locked at a version it allows, and so
    are the requirements of those, as far as this environment has the locked versions installed to read them from, on
    both Python 3.11 releases the image is built on (Debian bookworm's 3.11.2 and the one running here)."""
    pins = locked()
    environments = [{"python_full_version": "3.11.2"}, {"python_full_version": platform.python_version()}]
    todo = [(r, "", "cascade") for r in runtime_requirements()]  # a requirement, the extra it comes with, by whom
    seen = set()
    while todo:
        requirement, extra, parent = todo.pop()
        marker = requirement.marker
        applies = not marker or any(marker.evaluate(env | {"extra": extra}) for env in environments)
        name = canonicalize_name(requirement.name)
        if not applies or (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        assert name in pins, f"deploy/requirements.lock misses {requirement} (required by {parent})"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), f"{name}=={version} is not {requirement}"
        try:
            installed = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed.version != version:
            continue  # this environment holds another release: its requirements may differ
        for extra_name in ["", *requirement.extras]:
            todo += [(Requirement(r), extra_name, name) for r in installed.requires or []]
