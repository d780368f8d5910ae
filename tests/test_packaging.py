"""The distribution: one top-level import package, the dashboards and rules inside it, and the installed
``cascade`` command working from a clean virtual environment outside the checkout."""

import os
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from pathlib import Path

import pytest

from cascade.broker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (path,) = out.glob("cascade-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtual environment with the wheel; its dependencies are read from the test environment's
    site-packages (a path entry, not a site directory: the checkout's editable install is not active there)."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env


def test_the_wheel_holds_one_top_level_package_with_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"cascade", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "cascade/monitoring/dashboards/cascade-overview.json" in names
    assert "cascade/monitoring/rules/cascade.rules.yml" in names
    assert not [n for n in names if n.startswith(("cascade/tests", "cascade/bench"))]


def test_the_installed_command_works_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    cascade = str(installed / "bin" / "cascade")
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import cascade; print(cascade.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(installed)), where
    assert "Usage" in subprocess.run([cascade, "--help"], check=True, capture_output=True, text=True).stdout
    listed = subprocess.run(
        [cascade, "monitoring-files", "--out", str(tmp_path / "m")], check=True, capture_output=True, text=True
    ).stdout
    assert "cascade-overview.json" in listed
    assert (tmp_path / "m" / "rules" / "cascade.rules.yml").read_text() == (
        ROOT / "monitoring" / "rules" / "cascade.rules.yml"
    ).read_text()


def test_the_installed_worker_starts(installed: Path, settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    env = {**os.environ, "CASCADE_REDIS_URL": settings.redis_url, "CASCADE_METRICS_PORT": "0"}
    with log.open("w") as f:
        worker = subprocess.Popen(
            [str(installed / "bin" / "cascade"), "worker", "--queues", "specialist", "--concurrency", "1"],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "ready." in log.read_text(), log.read_text()[-2000:]
        assert "cascade.specialist_chunk" in log.read_text()  # the tasks registered under their names
    finally:
        worker.terminate()
        worker.wait(timeout=30)
