"""The CLI module imports neither the metrics nor the models: `cascade worker` must set up the metrics'
multiprocess mode before anything imports prometheus_client, and every command starts fast."""

import subprocess
import sys


def test_importing_the_cli_leaves_metrics_and_models_unimported() -> None:
    code = (
        "import sys, cascade.broker.cli; "
        "print(sorted(m for m in ('prometheus_client', 'sklearn', 'skops', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
