"""matplotlib is the `plots` extra, not a dependency of the API's and the workers' image (issue 16's monitoring
item): nothing they import needs it, and a plot without it says in one line what to install."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_matplotlib_is_in_the_plots_extra_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("matplotlib")]
    assert [d for d in project["optional-dependencies"]["plots"] if d.startswith("matplotlib")]


def test_the_api_and_the_worker_tasks_import_no_matplotlib() -> None:
    code = "import sys, cascade.broker.api, cascade.workers.tasks; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_without_matplotlib_the_plot_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # as if it were not installed
        "from cascade.workers.errors import CascadeError\n"
        "from cascade.workers.evaluation import plot\n"
        "try:\n"
        "    plot(None, None)\n"
        "except CascadeError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout == "the cost-accuracy plot needs matplotlib: pip install 'cascade[plots]'\n"
