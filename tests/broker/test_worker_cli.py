"""`cascade worker` on a machine where its /metrics port is taken (a second worker): one clear line naming the port
and the setting, exit 2, and the first worker's metrics folder left alone."""

import socket
import subprocess
from pathlib import Path

from cascade.broker.settings import Settings
from tests.conftest import CASCADE, _env


def test_a_second_worker_on_a_taken_metrics_port_says_which_setting_to_change(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    marker = folder / "counter_123.db"  # what the first worker's processes write there
    marker.write_bytes(b"kept")
    with socket.socket() as first:  # the first worker's /metrics
        first.bind(("0.0.0.0", 0))
        first.listen()
        port = first.getsockname()[1]
        done = subprocess.run(
            [CASCADE, "worker", "--queues", "specialist", "--metrics-port", str(port)],
            env={**_env(settings), "CASCADE_METRICS_DIR": str(folder)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert f"port {port} is in use" in lines[0]
    assert "CASCADE_METRICS_PORT" in lines[0]
    assert marker.read_bytes() == b"kept"
