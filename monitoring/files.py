"""Where the monitoring files are: shipped inside the installed package (read), and in the checkout (written).

The dashboards and rules are package data of ``cascade.monitoring``, so an installed Cascade finds them without a
checkout (``cascade monitoring-files`` copies them out). Their generators write into the repository's checkout,
never into an installed package: run them from the repository root.
"""

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

DASHBOARDS = "dashboards"
RULES = "rules"


def packaged(folder: str) -> Traversable:
    """A folder of this package's data (``dashboards``, ``rules``), wherever the package is installed."""
    return files(__package__ or "cascade.monitoring") / folder


def checkout(folder: str, root: Path | None = None) -> Path:
    """The checkout's ``monitoring/<folder>``, under ``root`` (default: the current directory)."""
    path = (root or Path.cwd()) / "monitoring" / folder
    if not path.is_dir():
        raise SystemExit(f"{path} does not exist: run the generator from the repository's root folder")
    return path


def copy_out(target: Path) -> list[Path]:
    """Copy the packaged dashboards and rules into ``target``/dashboards and ``target``/rules."""
    written = []
    for folder in (DASHBOARDS, RULES):
        (target / folder).mkdir(parents=True, exist_ok=True)
        for entry in packaged(folder).iterdir():
            if entry.is_file() and entry.name.endswith((".json", ".yml", ".yaml")):
                path = target / folder / entry.name
                path.write_bytes(entry.read_bytes())
                written.append(path)
    return written
