"""A real Prometheus scrapes a real worker during a real job (vLLM CPU server): the numbers must match the job."""

import csv
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.jobs import JobStatus
from tests.conftest import CASCADE, WorkerFactory, _env, dataset, free_port, wait_for, write_jsonl
from tests.test_queue_integration import export, submit

pytestmark = pytest.mark.llm
RULES = Path(__file__).resolve().parents[2] / "monitoring" / "rules" / "cascade.rules.yml"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A Prometheus of the test's own, scraping the worker port it returns every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: install the Debian package prometheus (.ci/run does)")
    worker_port, port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{RULES}']\n"
        "scrape_configs:\n"
        f"  - job_name: cascade-workers\n    static_configs: [{{targets: ['127.0.0.1:{worker_port}']}}]\n"
    )
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx2.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            time.sleep(0.2)
        yield url, worker_port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(url: str, expr: str) -> float | None:
    data = httpx2.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()["data"]["result"]
    return float(data[0]["value"][1]) if data else None


def eventually(url: str, expr: str, expected: float, timeout: float = 30) -> float | None:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = query(url, expr)
        if value is not None and abs(value - expected) < 1e-9:
            return value
        time.sleep(0.5)
    return value


def test_prometheus_sees_what_the_job_did(
    settings: Settings,
    store: RedisJobStore,
    banking_model: Path,
    vllm_server: str,
    start_worker: WorkerFactory,
    prometheus: tuple[str, int],
    tmp_path: Path,
) -> None:
    url, worker_port = prometheus
    start_worker(
        queues="specialist,llm", CASCADE_METRICS_PORT=str(worker_port), CASCADE_METRICS_DIR=str(tmp_path / "multiproc")
    )
    with (dataset("banking77") / "test.csv").open(newline="") as f:
        rows: list[dict[str, object] | str] = [
            {"custom_id": f"m{i}", "text": r["text"], "label": r["label"]}
            for i, r in enumerate(list(csv.DictReader(f))[:400])
        ]
    rows[10:10] = ["not json", '{"custom_id": "m0", "text": "duplicate"}']
    job = submit(settings, write_jsonl(tmp_path / "in.jsonl", rows), banking_model, "--threshold", "0.6")
    wait_for(store, job, timeout=600)
    view = store.get(job)
    assert view.status is JobStatus.COMPLETED
    results = export(settings, "results", job, tmp_path)

    def count(tier: str, outcome: str) -> str:
        return f'sum(cascade_items_total{{tier="{tier}", outcome="{outcome}"}})'

    assert eventually(url, 'sum(cascade_items_total{tier=~"specialist|intake"})', len(rows)) == len(rows)
    assert eventually(url, count("intake", "failed"), 2) == 2
    llm = sum(r["tier"] == "llm" for r in results)
    assert llm > 0
    assert eventually(url, count("llm", "answered"), llm) == llm
    assert eventually(url, count("specialist", "escalated"), view.counts.escalated) == view.counts.escalated
    kept = sum(r["route"] != "escalate" for r in results)
    assert eventually(url, count("specialist", "answered"), kept) == kept
    tokens = sum(int(r["llm_prompt_tokens"] or 0) + int(r["llm_completion_tokens"] or 0) for r in results)  # type: ignore[call-overload]
    assert eventually(url, "sum(cascade_llm_tokens_total)", tokens) == tokens
    accuracy = sum(r["correct"] is True for r in results) / len(results)
    assert eventually(url, "cascade:accuracy_overall:ratio", accuracy) == pytest.approx(accuracy, abs=1e-12)
    assert (query(url, 'cascade_jobs{status="completed"}') or 0) >= 1

    # `cascade report` gives the same numbers from the job store, without Prometheus
    out = subprocess.run(
        [CASCADE, "report", job, "--json"], env=_env(settings), capture_output=True, text=True, check=True, timeout=60
    )
    report = json.loads(out.stdout)
    assert report["llm_tokens"] == tokens
    assert report["accuracy"] == pytest.approx(accuracy)
    assert report["cost_usd"]["llm"] == pytest.approx(tokens * 0.20 / 1e6)
    assert report["all_llm_cost_usd"] > report["cost_usd"]["llm"]
