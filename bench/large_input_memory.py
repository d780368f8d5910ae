"""Large inputs stream: peak memory of the API process and of the workers for 100k and 1M lines.

    python -m bench.large_input_memory [--sizes 100000,1000000]

A real `cascade api` process and one real `cascade worker` (specialist queue, 2 pool processes) on Redis db 14;
the official `openai` client uploads the file, creates a batch (threshold 0: no LLM) and waits for it. Peak
resident memory (VmHWM) is read from /proc for the API process and for every worker process. The 1M-line run
should not take ten times the memory of the 100k-line run.
"""

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import openai

from bench.common import CASCADE, DATASETS, OUT, bench_settings, fresh_store
from cascade.workers import specialist
from cascade.workers.data import read_labelled_csv


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(n: int, model_dir: Path) -> tuple[float, float, float]:
    settings = bench_settings()
    fresh_store(settings)
    texts = [r["text"] for r in csv.DictReader((DATASETS / "sms_spam" / "all.csv").open(newline=""))]
    path = OUT / f"large-{n}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"r{i}", "text": texts[i % len(texts)]}) + "\n")
    port = free_port()
    env = {
        **os.environ,
        "CASCADE_REDIS_URL": settings.redis_url,
        "CASCADE_API_TOKENS": "bench=bench",
        "CASCADE_MODEL_DIR": str(model_dir),
        "CASCADE_FILES_DIR": str(OUT / "files"),
        "CASCADE_METRICS_PORT": "0",
    }
    api = subprocess.Popen(
        [CASCADE, "api", "--port", str(port)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        [CASCADE, "worker", "--queues", "specialist", "--concurrency", "2", "--loglevel", "WARNING"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", timeout=600)
        start = time.perf_counter()
        with path.open("rb") as f:
            uploaded = client.files.create(file=f, purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"cascade_threshold": "0"},
        )
        worker_peak = 0.0
        while batch.status not in {"completed", "failed", "cancelled", "expired"}:
            time.sleep(1)
            worker_peak = max([worker_peak, *(peak_mib(p) for p in [worker.pid, *children(worker.pid)])])
            batch = client.batches.retrieve(batch.id)
        elapsed = time.perf_counter() - start
        counts = batch.request_counts
        if batch.status != "completed" or counts is None or counts.completed != n:
            raise SystemExit(f"batch did not complete every line: {batch}")
        return peak_mib(api.pid), worker_peak, elapsed
    finally:
        for proc in (api, worker):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    model_dir = OUT / "sms-model"
    if not (model_dir / specialist.MANIFEST_FILE).exists():
        data = read_labelled_csv(DATASETS / "sms_spam" / "train.csv")
        specialist.save(specialist.train(data.texts, data.labels), model_dir, data.sha256)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        api_mib, worker_mib, seconds = run(n, model_dir)
        rows.append((n, api_mib, worker_mib))
        print(
            f"{n:>9,} lines: API peak {api_mib:7.1f} MiB, worker process peak {worker_mib:7.1f} MiB, "
            f"{seconds:6.1f} s ({n / seconds:,.0f} lines/s)"
        )
    if len(rows) == 2:
        (n1, a1, w1), (n2, a2, w2) = rows
        print(f"{n2 // n1}x the lines: API peak x{a2 / a1:.2f}, worker peak x{w2 / w1:.2f} (goal: well under 10)")


if __name__ == "__main__":
    main()
